"""The run folder module: runs trained through the Python API are as complete as CLI runs,
and every command finds a run's data through one rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import ShapesDataset, TinyFCOS

import detlab
from detlab.cli import main
from detlab.data.synthetic import write_shapes_dataset
from detlab.errors import DataError
from detlab.models.catalogue import build_model
from detlab.runfolder import dataset_spec, find_checkpoint, validation_spec

TINY = dict(
    batch_size=2,
    num_workers=0,
    warmup_iters=1,
    base_batch=2,
    eval_batch_size=2,
    device="cpu",
    protocols=["coco"],
    plots=False,
    report=False,
    quiet=True,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("data"), num_train=6, num_val=2, size=64, seed=0)


def test_api_run_records_its_data_and_weights_and_reopens_like_a_cli_run(tmp_path, shapes, capsys):
    """detlab.train(build_model(..., weights=FILE), train, val): config.yaml names what was used, the
    evaluation before training runs, and `eval RUN`, `report RUN`, `--resume` need nothing more."""
    torch.manual_seed(0)
    start = tmp_path / "start.pt"
    knobs = {"min_size": 64, "max_size": 64}
    train_ds = detlab.load_dataset(f"{shapes}:train")
    val_ds = detlab.load_dataset(f"{shapes}:val", classes=list(train_ds.class_names))
    n = train_ds.num_classes
    torch.save(build_model("fcos_r18_fpn", num_classes=n, **knobs).state_dict(), start)
    model = build_model("fcos_r18_fpn", num_classes=n, weights=str(start), **knobs)
    out = tmp_path / "run"
    detlab.train(model, train_ds, val_ds, out=out, epochs=1, **TINY)

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["data"], config["val"], config["weights"]) == (
        f"{shapes}:train",
        f"{shapes}:val",
        str(start),
    )
    assert (
        out / "eval" / "before.json"
    ).is_file()  # fine-tuning from weights: evaluated before the first step
    assert validation_spec(config) == f"{shapes}:val"
    capsys.readouterr()
    assert main(["eval", str(out), "--no-analysis"]) == 0
    assert f"{shapes}" in capsys.readouterr().out  # scored on the run's own validation split
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()
    assert main(["train", "--resume", str(out), "--set", "epochs=2"]) == 0
    assert torch.load(find_checkpoint(out, "last"), weights_only=True)["epoch"] == 2


def test_resume_of_a_run_trained_on_memory_data_names_what_to_pass(tmp_path, capsys):
    torch.manual_seed(0)
    out = tmp_path / "run"
    detlab.train(TinyFCOS(), ShapesDataset(4), None, out=out, epochs=1, **TINY)
    assert yaml.safe_load((out / "config.yaml").read_text())["data"] is None
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"detlab: --resume {out}: the run's config names no training data (it was trained on an in-memory "
        "dataset); pass --data DATA with the data it was trained on"
    )


def test_validation_spec_order(shapes, tmp_path):
    assert validation_spec({"val": "given"}, "cli") == "cli"
    assert validation_spec({"val": "saved", "data": f"{shapes}:train"}) == "saved"
    assert validation_spec({"data": f"{shapes}:train"}) == f"{shapes}:val"  # the training source's split
    with pytest.raises(DataError, match="neither `val` nor `data` is set — pass --data DATA"):
        validation_spec({})
    assert dataset_spec(ShapesDataset(2)) is None  # in memory: nothing to record


def test_a_run_saves_its_data_with_absolute_paths_so_any_working_directory_finds_it(tmp_path, monkeypatch):
    from detlab.data.formats import absolute_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    assert absolute_spec("a:train+../b") == f"{tmp_path / 'a'}:train+{tmp_path.parent / 'b'}"
    assert absolute_spec(str(tmp_path / "a")) == str(tmp_path / "a")
