import sys; sys.path.insert(0, "/work/main/tests")
from test_engine import *
import detlab.engine.checkpoint as c
def test_neg(tmp_path, monkeypatch):
    monkeypatch.setattr(c, "set_rng_state", lambda s: None)
    test_mid_epoch_resume_is_bitwise_identical_with_workers(tmp_path, monkeypatch, 0)
