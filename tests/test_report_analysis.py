"""What the report's analysis counts at its operating point, and what the end of training writes for it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_report_browser import bccd_val, synthetic_predictions
from test_report_runfolder import build_tiny, one_thread  # noqa: F401  (autouse fixture)


def _flat(records):
    from detlab.evaluation import matching
    from detlab.report.browser import _flat

    flat = _flat(records, synthetic_predictions(records, seed=3))
    return matching.GroundTruth.from_records(records), flat


def test_operating_point_is_the_best_f1_of_every_threshold(bccd):
    """Re-derived by brute force: match the detections kept at each candidate threshold afresh."""
    from detlab.evaluation import analysis, matching

    gt, f = _flat(bccd_val(bccd))
    point = analysis.operating_point(gt, f["image"], f["boxes"], f["scores"], f["labels"])
    num_gt = int((~gt.ignore).sum())
    best = (-1.0, None)
    for t in np.unique(f["scores"])[::-1]:
        keep = f["scores"] >= t
        m = matching.match_detections(
            gt, f["image"][keep], f["boxes"][keep], f["scores"][keep], f["labels"][keep]
        )
        tp, fp = int(m["tp"].sum()), int(m["fp"].sum())
        f1 = 2 * tp / (tp + fp + num_gt)
        if f1 > best[0] + 1e-12:
            best = (f1, t)
    assert point["rule"] == "F1-max" and point["num_gt"] == num_gt
    assert point["score"] == pytest.approx(best[1]) and point["f1"] == pytest.approx(best[0])
    assert 0.05 < point["score"] < 1


def test_operating_point_without_a_true_positive_is_the_default(bccd):
    from detlab.evaluation import analysis

    gt, f = _flat(bccd_val(bccd))
    far = f["boxes"] + 5000.0  # nothing overlaps any GT box
    point = analysis.operating_point(gt, f["image"], far, f["scores"], f["labels"])
    assert point["rule"] == "default" and point["score"] == analysis.DEFAULT_SCORE


def test_errors_and_confusion_are_counted_at_the_operating_point(bccd):
    from detlab.evaluation import analysis

    gt, f = _flat(bccd_val(bccd))
    found = analysis.analyse(gt, f["image"], f["boxes"], f["scores"], f["labels"])
    t = found["operating_point"]["chosen"]
    assert found["operating_point"]["chosen_by"] == "F1-max" and found["confusion"]["score_threshold"] == t
    keep = f["scores"] >= t
    again = analysis.classify_errors(
        gt, f["image"][keep], f["boxes"][keep], f["scores"][keep], f["labels"][keep]
    )
    counts = found["errors"]["counts"]
    for name in analysis.ERROR_TYPES[:-1]:
        assert counts[name] == int((again["type"] == name).sum())
    assert counts["missed"] == int(again["missed"].sum())
    everything = analysis.error_breakdown(gt, f["image"], f["boxes"], f["scores"], f["labels"])
    assert sum(everything["counts"].values()) > sum(counts.values())  # the low-score tail is left out
    assert everything["dAP"] == pytest.approx(found["errors"]["dAP"])  # dAP still integrates every score
    # the confusion matrix holds exactly the detections above t, matched or not
    matrix = found["confusion"]["matrix"]
    assert matrix[:, :-1].sum() <= keep.sum() and matrix[:-1].sum() == int((~gt.ignore).sum())
    for curve in found["pr_curves"]:
        kept = int((np.asarray(curve["scores"]) >= t).sum())
        assert curve["at_operating_point"]["recall"] == pytest.approx(curve["recall"][kept - 1])


def test_final_evaluation_writes_what_eval_writes(tmp_path, bccd):
    """The end of training: analysis.json, metrics.json, the four pictures and predictions.json."""
    from detlab.config import TrainConfig
    from detlab.data.dataset import load_dataset
    from detlab.evaluation.final import final_evaluation
    from detlab.report.browser import read_predictions

    dataset = load_dataset(f"{bccd}:val")
    dataset.records.images = dataset.records.images[:6]  # six images keep a tiny model's pass in seconds
    model = build_tiny("fcos_r18_fpn", 3)
    cfg = TrainConfig(protocols=["coco", "voc07"], eval_batch_size=2, quiet=True)
    final_evaluation(tmp_path, model, dataset, cfg, "cpu")
    names = {p.name for p in (tmp_path / "eval").iterdir()}
    assert {
        "metrics.json",
        "analysis.json",
        "predictions.json",
        "pr_curves.png",
        "confusion_matrix.png",
        "errors.png",
    } <= names
    found = json.loads((tmp_path / "eval" / "analysis.json").read_text())
    assert found["operating_point"]["chosen"] == found["confusion"]["score_threshold"]
    assert found["errors"]["score_threshold"] == found["confusion"]["score_threshold"]
    predictions = read_predictions(tmp_path / "eval" / "predictions.json", dataset.records)
    assert set(predictions) == {r.image_id for r in dataset.records.images}
    n = sum(len(p["scores"]) for p in predictions.values())
    assert n == json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_detections"] > 0
