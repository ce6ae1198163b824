"""DDP on CPU (gloo, 2 processes): gathered evaluation equals one process; training keeps ranks in sync."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ShapesDataset, TinyFCOS, state_equal

from detlab.config import resolve
from detlab.engine import checkpoint as ckpt_io
from detlab.engine import distributed as ddp

TOL = 1e-6  # detections are gathered, so metrics match exactly; val losses are sums in another order
PROTOCOLS = ["coco", "voc07"]


def _fixed_model() -> TinyFCOS:
    torch.manual_seed(0)
    model = TinyFCOS()
    model.score_thresh = 0.0  # an untrained model's scores sit below the usual 0.05
    return model.eval()


def _cfg(out):
    return resolve(
        {
            "batch_size": 2,
            "num_workers": 0,
            "quiet": True,
            "plots": False,
            "report": False,
            "epochs": 1,
            "base_lr": 0.01,
            "base_batch": 2,
            "warmup_iters": 0,
            "eval_batch_size": 1,
            "device": "cpu",
            "protocols": PROTOCOLS,
            "out": str(out),
        },
        family="fcos",
    )


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from detlab.engine.train import Trainer, fit

    finish = Trainer._finish
    trained = {}

    def capture(self, stopped):  # the trained weights, before _finish loads best.pt on every rank
        trained["states"] = ddp.gather_objects({k: v.clone() for k, v in self.model.state_dict().items()})
        return finish(self, stopped)

    Trainer._finish = capture
    ctx = ddp.setup("cpu")
    try:
        result = ddp.evaluate_sharded(_fixed_model(), ShapesDataset(6, seed=1), PROTOCOLS, 1, ctx)
        torch.manual_seed(0)
        fit(TinyFCOS(), ShapesDataset(8), ShapesDataset(4, seed=1), _cfg(f"{out}/run"), ctx=ctx)
        states = trained["states"]
        if rank == 0:
            torch.save(
                {"result": result, "in_sync": all(state_equal(states[0], s) for s in states[1:])},
                f"{out}/rank0.pt",
            )
    finally:
        ddp.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _flat_close(a[k], b[k])
        else:
            assert a[k] == pytest.approx(b[k], abs=TOL, nan_ok=True), k


def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt", weights_only=False)
    one = ddp.evaluate_sharded(_fixed_model(), ShapesDataset(6, seed=1), PROTOCOLS, 1, ddp.DistContext())
    _flat_close(got["result"], one)
    assert one["val_loss"]["loss"] > 0
    assert got["in_sync"]  # DDP kept both ranks' weights identical

    # The eval line the 2-rank run logged equals a 1-process evaluation of the weights it saved.
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if x["type"] == "eval"][-1]
    best = ckpt_io.load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["iteration"] == 2  # 8 images / (2 ranks · 2 per batch)
    model = TinyFCOS()
    model.load_state_dict(best["model"])
    again = ddp.evaluate_sharded(model.eval(), ShapesDataset(4, seed=1), PROTOCOLS, 1, ddp.DistContext())
    from detlab.evaluation.evaluator import flatten_metrics

    for k, v in flatten_metrics({k: v for k, v in again.items() if k != "val_loss"}).items():
        if isinstance(v, (int, float)):
            assert logged[k] == pytest.approx(v, abs=TOL, nan_ok=True), k
    assert logged["val/loss"] == pytest.approx(again["val_loss"]["loss"], abs=1e-5)


def _locked_worker(rank: int, world: int, port: int, out: str) -> None:
    import datetime
    import os

    import torch.distributed as dist

    from detlab.engine.train import locked_run
    from detlab.errors import OutputError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    # A short group timeout: if rank 1 were left waiting, it fails here instead of hanging the suite.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    ctx = ddp.setup("cpu")
    try:
        with locked_run(f"{out}/run", ctx):
            outcome = "ran"
    except OutputError as e:
        outcome = str(e)
    finally:
        ddp.cleanup()
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(outcome)


def test_a_locked_run_folder_stops_every_rank(tmp_path):
    """Rank 0 is refused the run folder another training holds: every rank stops with its line."""
    from detlab.engine.runlog import run_lock

    (tmp_path / "run").mkdir()
    with run_lock(tmp_path / "run"):  # this process holds it; the spawned ranks are other processes
        mp.spawn(_locked_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    lines = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert lines[0] == lines[1] and "run folder is in use by a training run (pid" in lines[0], lines
