"""Ground truth without boxes is data, not an error: a negatives-only split, or a validation split that
shares no class with training, gives the reference's undefined numbers (NaN / null), never a crash."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from conftest import ShapesDataset, TinyFCOS

from detlab.config import resolve
from detlab.data.records import empty_boxes
from detlab.engine.train import fit


def negatives(n: int, seed: int) -> ShapesDataset:
    """Shapes images whose annotations hold no box (what a negatives-only validation split reads as)."""
    ds = ShapesDataset(n, seed=seed)
    for rec in ds.records.images:
        rec.boxes, rec.labels, rec.difficult, rec.iscrowd = empty_boxes()
    return ds


def test_training_with_a_validation_split_without_boxes_finishes(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = resolve(
        {
            "batch_size": 2,
            "num_workers": 0,
            "quiet": True,
            "plots": False,
            "report": False,
            "log_every": 2,
            "warmup_iters": 2,
            "epochs": 2,
            "base_lr": 0.01,
            "base_batch": 2,
            "eval_batch_size": 4,
            "device": "cpu",
            "protocols": ["coco", "voc07", "voc12"],
            "patience": 1,
            "out": str(tmp_path / "run"),
        },
        family="fcos",
    )
    run = fit(TinyFCOS(), ShapesDataset(4), negatives(3, seed=1), cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x["type"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]  # patience=1 did not stop the run on undefined metrics
    assert all(e["coco/AP50"] is None or math.isnan(e["coco/AP50"]) for e in evals)
    assert all(e["voc07/mAP"] is None or math.isnan(e["voc07/mAP"]) for e in evals)
    assert all(np.isfinite(e["val/loss"]) for e in evals)  # losses of negatives are defined
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 2  # the newest weights stand in while the metric is undefined
    assert "is undefined on the validation data" in capsys.readouterr().err
    assert run.model is not None


def test_long_evaluations_report_progress_without_a_terminal(capsys):
    from detlab.evaluation.evaluator import Progress

    bar = Progress(3, "eval before training", enabled=True, every=0.0)  # capsys' stderr is not a TTY
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("eval before training: 1/3 images, about ")
    assert lines[1].startswith("eval before training: 2/3 images") and lines[1].endswith(" s left")
