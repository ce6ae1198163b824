"""`detlab demo --quick`: the embedded default end to end (synthetic data → train → eval → files)."""

from __future__ import annotations

import json

import torch

from detlab.cli import main


def test_demo_quick_writes_a_complete_run(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    run = out / "run"
    assert "detlab demo finished" in printed and "AP50" in printed and str(run) in printed
    assert (out / "data" / "shapes" / "ImageSets" / "Main" / "train.txt").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["type"] for x in lines][-1] == "eval" and any(x["type"] == "train" for x in lines)
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["class_names"] == ["circle", "square", "triangle"] and ckpt["num_classes"] == 3
    assert ckpt["config"]["val"].endswith(":val")
    assert 0.0 <= ckpt["metrics"]["coco/AP50"] <= 1.0
    assert (run / "config.yaml").is_file() and (run / "eval" / "best.json").is_file()
    assert any((run / "plots").glob("*.png")), "training curves were not drawn"
    assert (run / "report.html").is_file()
