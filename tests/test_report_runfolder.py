"""Tiny run folders in the engine's layout, shared by the predict/report/compare tests, and
tests of how the report reads a run (evaluation files, metrics lines, training time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

TINY = dict(min_size=64, max_size=96, score_thresh=0.05, detections_per_img=20)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny images gain nothing from a second thread, and on busy shared cores OpenMP's spinning
    threads make each forward pass several times slower; restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_tiny(name: str = "fcos_r18_fpn", num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """A catalogue model at a tiny input size (random init, no download)."""
    from detlab.models.catalogue import build_model

    torch.manual_seed(seed)
    return build_model(name, num_classes, **TINY).eval()


def coco_result(ap: float, names=("RBC", "WBC", "Platelets")) -> dict:
    """A nested evaluation result with every number derived from ``ap`` (so tests can check them)."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    coco = {k: round(ap + 0.01 * i, 4) for i, k in enumerate(keys)}
    coco["per_class"] = {n: round(ap + 0.05 * j, 4) for j, n in enumerate(names)}
    return {"coco": coco, "voc07": {"mAP": round(ap + 0.2, 4), "per_class": dict.fromkeys(names, ap + 0.2)}}


def make_run(
    root: Path,
    name: str = "run",
    model_name: str = "fcos_r18_fpn",
    ap: float = 0.3,
    before_ap: float | None = 0.1,
    val: str | None = None,
    seed: int = 0,
    class_names=("RBC", "WBC", "Platelets"),
    source_ids=("RBC", "WBC", "Platelets"),
    sec_per_iter: float = 0.5,
    checkpoint: str = "best",
) -> Path:
    """Write a run folder: config.yaml, checkpoints/<checkpoint>.pt, metrics.jsonl, eval/*.json."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "eval").mkdir()
    model = build_tiny(model_name, len(class_names), seed)
    config = {
        "data": val.replace(":val", ":train") if val else None,
        "val": val,
        "model": model_name,
        "weights": "imagenet",
        "epochs": 2,
        "batch_size": 2,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    final = coco_result(ap, class_names)
    torch.save(
        {
            "model": model.state_dict(),
            "model_name": model_name,
            "num_classes": len(class_names),
            "build_kwargs": dict(model.build_kwargs),
            "class_names": list(class_names),
            "source_ids": list(source_ids),
            "config": config,
            "epoch": 2,
            "iteration": 40,
            "metrics": {"coco/AP": ap},
        },
        run / "checkpoints" / f"{checkpoint}.pt",
    )
    lines = [
        {
            "type": "train",
            "iter": it,
            "epoch": 1 + it // 21,
            "lr": 0.01,
            "loss": 2.0 - it / 40,
            "loss_classification": 1.0,
            "sec_per_iter": sec_per_iter,
            "data_sec": 0.01,
        }
        for it in (10, 20, 30, 40)
    ]
    evals = [
        {"type": "eval", "epoch": e, "iter": 20 * e, "coco/AP": a, "coco/AP50": a + 0.01, "val/loss": 1.5}
        for e, a in ((1, ap / 2), (2, ap))
    ]
    if before_ap is not None:
        evals.insert(0, {"type": "eval", "epoch": 0, "iter": 0, "coco/AP": before_ap})
        (run / "eval" / "before.json").write_text(json.dumps(coco_result(before_ap, class_names)))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines + evals) + "\n")
    (run / "eval" / "final.json").write_text(json.dumps(final))
    return run


# --- how the report reads runs ------------------------------------------------------------


def test_load_run_reads_final_before_and_meta(tmp_path):
    from detlab.runfolder import load_run

    run = make_run(tmp_path, ap=0.42, before_ap=0.05)
    info = load_run(run)
    assert info.final["coco"]["AP"] == pytest.approx(0.42)
    assert info.final_source == "eval/final.json"
    assert info.before["coco"]["AP"] == pytest.approx(0.05)
    assert info.model_name == "fcos_r18_fpn" and info.class_names == ["RBC", "WBC", "Platelets"]
    assert "model" not in info.meta  # the weights are not kept around
    assert len(info.lines) == 4 + 3


def test_final_eval_falls_back_to_metrics_lines(tmp_path):
    from detlab.runfolder import load_run

    run = make_run(tmp_path, ap=0.3)
    (run / "eval" / "final.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "eval", "epoch": 3, "coco/AP": 0.5, "coco/per_class/RBC": 0.6, "voc07/mAP": 0.7}\n')
        f.write('{"type": "train", "iter": 50, "loss": 1.0, "sec_per_iter"\n')  # killed mid-write
    info = load_run(run)
    assert info.final == {"coco": {"AP": 0.5, "per_class": {"RBC": 0.6}}, "voc07": {"mAP": 0.7}}
    assert "epoch 3" in info.final_source


def test_train_time_from_sec_per_iter(tmp_path):
    from detlab.report.compare import train_seconds
    from detlab.runfolder import load_run

    info = load_run(make_run(tmp_path, sec_per_iter=0.5))
    assert train_seconds(info) == pytest.approx(40 * 0.5)  # 4 lines × 10 iterations × 0.5 s
    info.lines.append({"type": "end", "train_time": 123.0})
    assert train_seconds(info) == 123.0


def test_not_a_run_folder_is_one_line_error(tmp_path):
    from detlab.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1


def test_best_json_is_the_final_evaluation(tmp_path):
    from detlab.runfolder import load_run

    run = make_run(tmp_path, ap=0.3)
    (run / "eval" / "best.json").write_text(json.dumps({"epoch": 1, "iteration": 20, **coco_result(0.25)}))
    info = load_run(run)
    assert info.final_source == "eval/best.json" and info.final["coco"]["AP"] == pytest.approx(0.25)
