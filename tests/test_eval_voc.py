"""VOC07 / VOC12 protocols: hand-computed cases and a devkit-style reference loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from detlab.data.records import ImageRecord, Records
from detlab.evaluation import matching, voc
from detlab.evaluation.evaluator import evaluate_detections


def make_records(images: list[dict], class_names: list[str], fmt: str = "voc") -> Records:
    """``images``: ``[{"id", "boxes": [[x1, y1, x2, y2], …], "labels": [...], "difficult": [...]}]``."""
    out = []
    for im in images:
        n = len(im.get("labels", []))
        out.append(
            ImageRecord(
                image_id=im["id"],
                file=Path(f"{im['id']}.jpg"),
                width=im.get("width", 200),
                height=im.get("height", 200),
                boxes=np.asarray(im.get("boxes", []), np.float32).reshape(n, 4),
                labels=np.asarray(im.get("labels", []), np.int64),
                difficult=np.asarray(im.get("difficult", [False] * n), bool),
                iscrowd=np.asarray(im.get("iscrowd", [False] * n), bool),
            )
        )
    ids = class_names if fmt == "voc" else list(range(1, len(class_names) + 1))
    return Records(out, list(class_names), ids, fmt, Path("mem"), "test")


def dets(rows: list[tuple]) -> dict:
    """``[(image_id, label, score, x1, y1, x2, y2), …]`` → ``{image_id: {"boxes", "scores", "labels"}}``."""
    out: dict = {}
    for image_id, label, score, *box in rows:
        d = out.setdefault(image_id, {"boxes": [], "scores": [], "labels": []})
        d["boxes"].append(box)
        d["scores"].append(score)
        d["labels"].append(label)
    return {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in out.items()}


# Three classes: cat (difficult box, duplicate, image without detections), dog (no GT, one
# detection), bird (GT, no detections).
CASE_GT = [
    {"id": 1, "boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "labels": [0, 0], "difficult": [False, True]},
    {"id": 2, "boxes": [[0, 0, 10, 10], [0, 0, 20, 20]], "labels": [0, 2]},
    {"id": 3, "boxes": [[50, 50, 60, 60]], "labels": [0]},  # no detections at all in this image
]
CASE_DETS = [
    (1, 0, 0.9, 0, 0, 10, 10),  # TP (cat box of image 1)
    (1, 0, 0.8, 0, 0, 10, 10),  # duplicate → FP
    (1, 0, 0.7, 20, 0, 30, 10),  # on the difficult box → ignored (neither TP nor FP)
    (2, 0, 0.6, 0, 0, 10, 10),  # TP
    (2, 0, 0.5, 100, 100, 110, 110),  # FP (no overlap)
    (1, 1, 0.95, 0, 0, 5, 5),  # dog: a class without GT
]


def test_hand_computed_case():
    # cat: npos = 3 (the difficult box does not count). Ranked (ignored one dropped):
    #   TP, FP, TP, FP → recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2.
    # VOC12 all-point: envelope over recall steps 0→1/3 (p=1), 1/3→2/3 (p=2/3), 2/3→1 (p=0)
    #   AP = 1/3·1 + 1/3·2/3 = 5/9.
    # VOC07 11-point: t = 0, .1, .2, .3 → 1 (4 points); t = .4, .5, .6 → 2/3 (3 points);
    #   t = .7 … 1 → 0 (4 points). AP = (4 + 3·2/3) / 11 = 6/11.
    # dog: no GT → NaN, left out of mAP. bird: GT but no detection → 0.
    records = make_records(CASE_GT, ["cat", "dog", "bird"])
    result = evaluate_detections(records, dets(CASE_DETS), protocols=("voc07", "voc12"))
    v12, v07 = result["voc12"], result["voc07"]
    assert v12["per_class"]["cat"] == pytest.approx(5 / 9, abs=1e-12)
    assert v07["per_class"]["cat"] == pytest.approx(6 / 11, abs=1e-12)
    assert math.isnan(v12["per_class"]["dog"]) and math.isnan(v07["per_class"]["dog"])
    assert v12["per_class"]["bird"] == 0.0 and v07["per_class"]["bird"] == 0.0
    assert v12["mAP"] == pytest.approx((5 / 9 + 0) / 2, abs=1e-12)
    assert v07["mAP"] == pytest.approx((6 / 11 + 0) / 2, abs=1e-12)
    assert v12["num_classes_with_gt"] == 2


def test_match_flags_and_no_fallback_to_second_box():
    # Two cat boxes; d2's best box (IoU .905 with A) is already taken by d1, so it is a
    # duplicate FP even though box B (IoU .739) is free: the devkit never falls back.
    records = make_records([{"id": 1, "boxes": [[0, 0, 10, 10], [2, 0, 12, 10]], "labels": [0, 0]}], ["cat"])
    gt = matching.GroundTruth.from_records(records)
    boxes = np.array([[0, 0, 10, 10], [0.5, 0, 10.5, 10]], np.float64)
    m = matching.match_detections(gt, np.array([0, 0]), boxes, np.array([0.9, 0.8]), np.array([0, 0]))
    assert m["tp"].tolist() == [True, False] and m["fp"].tolist() == [False, True]
    assert m["iou"][1] == pytest.approx(95 / 105)
    assert m["gt"].tolist() == [0, 0]


def test_iou_threshold_is_strict_and_configurable():
    # det [0,0,10,5] on GT [0,0,10,10]: IoU exactly 0.5 → no match at 0.5 (devkit: ov > 0.5),
    # a match at 0.4.
    records = make_records([{"id": 1, "boxes": [[0, 0, 10, 10]], "labels": [0]}], ["cat"])
    d = dets([(1, 0, 0.9, 0, 0, 10, 5)])
    assert evaluate_detections(records, d, "voc12", iou=0.5)["voc12"]["mAP"] == 0.0
    assert evaluate_detections(records, d, "voc12", iou=0.4)["voc12"]["mAP"] == 1.0


def test_11_point_vs_all_point_same_curve():
    # recall .5, .5, 1 with precision 1, .5, 2/3 (npos 2: TP, FP, TP).
    # all-point: .5·1 + .5·(2/3) = 5/6.  11-point: t=0..0.5 → 1 (6 points), t=.6..1 → 2/3 (5 points)
    #   → (6 + 10/3) / 11 = 28/33.
    p, r = np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])
    assert voc.average_precision(p, r, eleven_point=False) == pytest.approx(5 / 6, abs=1e-12)
    assert voc.average_precision(p, r, eleven_point=True) == pytest.approx(28 / 33, abs=1e-12)


def test_crowd_boxes_are_ignored_like_difficult():
    records = make_records(
        [{"id": 1, "boxes": [[0, 0, 10, 10], [50, 50, 90, 90]], "labels": [0, 0], "iscrowd": [False, True]}],
        ["cat"],
    )
    d = dets([(1, 0, 0.9, 50, 50, 90, 90), (1, 0, 0.8, 0, 0, 10, 10)])
    assert evaluate_detections(records, d, "voc12")["voc12"]["mAP"] == 1.0


def devkit_reference(records: Records, detections: dict, iou: float, eleven: bool) -> list[float]:
    """Straight port of the VOC devkit loop (per class, sorted detections, one at a time)."""
    aps = []
    for c in range(records.num_classes):
        gts = {
            r.image_id: (
                r.boxes[r.labels == c].astype(np.float64),
                r.difficult[r.labels == c] | r.iscrowd[r.labels == c],
            )
            for r in records.images
        }
        used = {k: np.zeros(len(v[0]), bool) for k, v in gts.items()}
        npos = sum(int((~v[1]).sum()) for v in gts.values())
        rows = [
            (s, k, b)
            for k, d in detections.items()
            for b, s, lab in zip(d["boxes"], d["scores"], d["labels"])
            if lab == c
        ]
        rows.sort(key=lambda t: -t[0])
        tp, fp = [], []
        for _, k, b in rows:
            g, diff = gts[k]
            ov = (
                matching.box_iou_pairs(np.repeat(np.asarray(b, np.float64)[None], len(g), 0), g)
                if len(g)
                else np.zeros(0)
            )
            j = int(np.argmax(ov)) if len(g) else -1
            if len(g) and ov[j] > iou:
                if diff[j]:
                    continue
                tp.append(not used[k][j])
                fp.append(bool(used[k][j]))
                used[k][j] = True
            else:
                tp.append(False)
                fp.append(True)
        if npos == 0:
            aps.append(float("nan"))
            continue
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = ctp / npos, ctp / np.maximum(ctp + cfp, 1e-12)
        aps.append(voc.average_precision(prec, rec, eleven))
    return aps


def test_vectorised_matches_devkit_loop_on_random_data():
    rng = np.random.default_rng(3)
    images, detections = [], {}
    for i in range(60):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 60, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1)
        images.append(
            {
                "id": 100 + i,
                "boxes": boxes,
                "labels": rng.integers(0, 4, n),
                "difficult": rng.random(n) < 0.15,
            }
        )
        k = int(rng.integers(0, 8))
        src = boxes[rng.integers(0, n, k)] if n else rng.uniform(0, 60, (k, 4))
        jitter = src + rng.normal(0, 3, (k, 4))
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        detections[100 + i] = {"boxes": jitter, "scores": rng.random(k), "labels": rng.integers(0, 4, k)}
    records = make_records(images, ["a", "b", "c", "d"])
    result = evaluate_detections(records, detections, ("voc07", "voc12"))
    for name, eleven in (("voc07", True), ("voc12", False)):
        ref = devkit_reference(records, detections, 0.5, eleven)
        got = list(result[name]["per_class"].values())
        np.testing.assert_allclose(got, ref, atol=1e-12, equal_nan=True)


def test_unknown_images_and_bad_labels_are_counted(capsys):
    records = make_records(CASE_GT, ["cat", "dog", "bird"])
    d = dets(CASE_DETS + [(99, 0, 0.9, 0, 0, 10, 10), (1, 7, 0.9, 0, 0, 10, 10)])
    result = evaluate_detections(records, d, ("voc12",))
    err = capsys.readouterr().err
    assert "1 detections for images that are not in the dataset" in err
    assert "1 labels outside 0..2" in err
    assert result["voc12"]["per_class"]["cat"] == pytest.approx(5 / 9)
