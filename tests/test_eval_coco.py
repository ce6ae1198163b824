"""COCO protocol: parity with pycocotools, per-class AP, settings, id mapping, results files."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from test_eval_voc import dets, make_records

from detlab.data.records import ImageRecord, Records
from detlab.errors import DataError
from detlab.evaluation import coco
from detlab.evaluation.evaluator import evaluate_detections, score_results_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from eval_speed import jittered_detections, synthetic_split  # noqa: E402

NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def chess_records(chess: Path, split: str = "test") -> Records:
    """The chess split read straight from its COCO JSON (classes = categories with boxes)."""
    data = json.loads((chess / split / "_annotations.coco.json").read_text())
    used = sorted({a["category_id"] for a in data["annotations"]})
    names = {c["id"]: c["name"] for c in data["categories"]}
    index = {cid: i for i, cid in enumerate(used)}
    by_image: dict = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images = []
    for im in data["images"]:
        anns = by_image.get(im["id"], [])
        b = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        images.append(
            ImageRecord(
                im["id"],
                chess / split / im["file_name"],
                im["width"],
                im["height"],
                np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1).astype(np.float32),
                np.array([index[a["category_id"]] for a in anns], np.int64),
                np.zeros(len(anns), bool),
                np.array([bool(a["iscrowd"]) for a in anns], bool),
            )
        )
    return Records(images, [names[c] for c in used], used, "coco", chess / split, split)


def pycoco_stats(gt_source, results: list[dict], max_dets=None, area_rng=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt_source, dict):
            gt = COCO()
            gt.dataset = copy.deepcopy(gt_source)
            gt.createIndex()
        else:
            gt = COCO(str(gt_source))
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, "bbox")
        if max_dets:
            ev.params.maxDets = list(max_dets)
        if area_rng:
            ev.params.areaRng, ev.params.areaRngLbl = [list(v) for v in area_rng.values()], list(area_rng)
        ev.evaluate()
        ev.accumulate()
        if not (max_dets or area_rng):
            ev.summarize()
    return ev


def ours(result: dict) -> np.ndarray:
    return np.array([result["coco"][n] for n in NAMES])


def theirs(ev) -> np.ndarray:
    s = np.asarray(ev.stats[:12], np.float64)
    return np.where(s < 0, np.nan, s)


def arrays_from_results(results: list[dict], records: Records) -> dict:
    cats = coco.category_ids(records)
    out: dict = {
        r.image_id: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
        for r in records.images
    }
    for row in results:
        x, y, w, h = row["bbox"]
        d = out[row["image_id"]]
        d["boxes"] = np.vstack([d["boxes"], [x, y, x + w, y + h]])
        d["scores"] = np.append(d["scores"], row["score"])
        d["labels"] = np.append(d["labels"], cats.index(row["category_id"]))
    return out


def test_chess_parity_with_pycocotools(chess):
    records = chess_records(chess)
    results = jittered_detections(records, per_image=None, seed=5)
    result = evaluate_detections(records, arrays_from_results(results, records), protocols=("coco",))
    # Against the ground truth detlab builds, and against the original file itself.
    gt_dict = coco.coco_ground_truth(records)
    written = coco.coco_results(*[np.asarray(v) for v in _columns(result_rows(records, results))])
    np.testing.assert_allclose(
        ours(result), theirs(pycoco_stats(gt_dict, written)), atol=1e-6, equal_nan=True
    )
    # The file itself (its own areas, float64 boxes, the empty 'pieces' category), with one change:
    # its first annotation has id 0, which pycocotools' matcher reads as "unmatched" (that box
    # can never be a true positive there); detlab numbers annotations 1..G, so shift the ids.
    original = json.loads((chess / "test" / "_annotations.coco.json").read_text())
    assert min(a["id"] for a in original["annotations"]) == 0
    for a in original["annotations"]:
        a["id"] += 1
    np.testing.assert_allclose(
        ours(result), theirs(pycoco_stats(original, results)), atol=1e-6, equal_nan=True
    )
    assert 0.2 < result["coco"]["AP"] < 0.9  # realistic, not degenerate


def result_rows(records, results):
    """Results as detlab writes them back from xyxy arrays (what evaluate_detections scored)."""
    rows = []
    for row in results:
        x, y, w, h = row["bbox"]
        x2, y2 = np.float64(x) + w, np.float64(y) + h
        rows.append((row["image_id"], [x, y, x2 - x, y2 - y], row["score"], row["category_id"]))
    return rows


def _columns(rows):
    return ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])


def test_synthetic_500_parity_and_per_class(tmp_path):
    records = synthetic_split(500, 80, seed=2)
    results = jittered_detections(records, per_image=20, seed=3)  # 10,000 detections: pycocotools stays quick
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    result, problems = score_results_file(records, path, ("coco",))
    assert problems == []
    ev = pycoco_stats(coco.coco_ground_truth(records), results)
    np.testing.assert_allclose(ours(result), theirs(ev), atol=1e-6, equal_nan=True)
    # per-class AP straight from pycocotools' precision array (classes in category-id order here)
    p = ev.eval["precision"][:, :, :, 0, -1]
    ref = [
        np.mean(p[:, :, k][p[:, :, k] > -1]) if (p[:, :, k] > -1).any() else np.nan for k in range(p.shape[2])
    ]
    np.testing.assert_allclose(list(result["coco"]["per_class"].values()), ref, atol=1e-6, equal_nan=True)


def test_max_dets_and_area_ranges_are_configurable():
    records = synthetic_split(60, 5, seed=4)
    results = jittered_detections(records, per_image=40, seed=4)
    area = {"tiny": (0.0, 40.0**2), "big": (40.0**2, 1e5**2)}
    opts = {"max_dets": (1, 5, 20), "area_ranges": area}
    d = arrays_from_results(results, records)
    result = evaluate_detections(records, d, ("coco",), **opts)["coco"]
    ev = pycoco_stats(
        coco.coco_ground_truth(records), results, max_dets=[1, 5, 20], area_rng={"all": (0, 1e5**2), **area}
    )
    prec, rec = ev.eval["precision"], ev.eval["recall"]

    def mean(a):
        return float(np.mean(a[a > -1])) if (a > -1).any() else float("nan")

    assert result["AP"] == pytest.approx(mean(prec[:, :, :, 0, -1]), abs=1e-6)
    assert result["APtiny" if "APtiny" in result else "AP_tiny"] == pytest.approx(
        mean(prec[:, :, :, 1, -1]), abs=1e-6
    )
    assert result["AR5"] == pytest.approx(mean(rec[:, :, 0, 1]), abs=1e-6)
    assert result["AR20"] == pytest.approx(mean(rec[:, :, 0, 2]), abs=1e-6)
    assert result["max_dets"] == [1, 5, 20]


def test_difficult_boxes_are_ignored_not_missed():
    # One cat found; a difficult cat with a detection on it. As ignore (crowd) regions the
    # difficult box neither adds a miss nor turns its detection into a false positive,
    # so AP equals that of the split without the difficult box and its detection.
    with_difficult = make_records(
        [
            {
                "id": 1,
                "boxes": [[0, 0, 40, 40], [100, 100, 140, 140]],
                "labels": [0, 0],
                "difficult": [False, True],
            }
        ],
        ["cat"],
    )
    plain = make_records([{"id": 1, "boxes": [[0, 0, 40, 40]], "labels": [0]}], ["cat"])
    d_all = dets([(1, 0, 0.5, 0, 0, 40, 40), (1, 0, 0.9, 100, 100, 140, 140)])
    d_one = dets([(1, 0, 0.5, 0, 0, 40, 40)])
    a = evaluate_detections(with_difficult, d_all, ("coco",))["coco"]
    b = evaluate_detections(plain, d_one, ("coco",))["coco"]
    assert a["AP"] == pytest.approx(b["AP"]) and a["AP"] == pytest.approx(1.0)
    gt = coco.coco_ground_truth(with_difficult)
    assert [x["iscrowd"] for x in gt["annotations"]] == [0, 1]
    assert gt["annotations"][0]["bbox"] == [0.0, 0.0, 40.0, 40.0] and gt["annotations"][0]["area"] == 1600.0


def test_category_ids_by_format():
    voc_records = make_records([{"id": 1}], ["a", "b"])
    assert coco.category_ids(voc_records) == [1, 2]
    coco_records = Records([], ["x", "y"], [3, 17], "coco", Path("m"))
    assert coco.category_ids(coco_records) == [3, 17]


def test_no_detections_and_classes_without_gt():
    records = make_records([{"id": 1, "boxes": [[0, 0, 40, 40]], "labels": [0]}], ["cat", "dog"], fmt="coco")
    result = evaluate_detections(records, {}, ("coco",))["coco"]
    assert result["AP"] == 0.0 and result["per_class"]["cat"] == 0.0
    assert math.isnan(result["per_class"]["dog"]) and math.isnan(result["APs"])


def test_results_file_round_trip_and_unknown_ids(tmp_path):
    records = synthetic_split(20, 5, seed=6)
    results = jittered_detections(records, per_image=10, seed=6)
    extra = [
        {"image_id": 9999, "category_id": records.source_ids[0], "bbox": [0, 0, 5, 5], "score": 0.5},
        {"image_id": 1, "category_id": 424242, "bbox": [0, 0, 5, 5], "score": 0.5},
    ]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results + extra))
    parsed, problems = coco.read_results(path, records)
    assert len(parsed["scores"]) == len(results)
    assert sorted(p.field for p in problems) == ["category_id", "image_id"]
    assert all("1 results with an unknown" in p.message for p in problems)
    back = coco.coco_results(
        parsed["image_ids"],
        parsed["boxes_xywh"],
        parsed["scores"],
        np.asarray(records.source_ids)[parsed["labels"]],
    )
    assert back == [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results]


@pytest.mark.parametrize(
    "row, field",
    [
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}, "[1].bbox"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}, "[1].score"),
        ({"image_id": "a", "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}, "[1].image_id"),
        ({"image_id": 1.5, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}, "[1].image_id"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, -5, 5], "score": 0.5}, "[1].bbox"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": float("nan")}, "[1].score"),
    ],
)
def test_malformed_results_name_index_and_field(tmp_path, row, field):
    records = make_records([{"id": 1, "boxes": [[0, 0, 4, 4]], "labels": [0]}], ["cat"])
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.9}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, row]))
    with pytest.raises(DataError, match=rf"bad\.json: {re.escape(field)}:"):
        coco.read_results(path, records)


def test_results_file_not_a_list(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    with pytest.raises(DataError, match="not a list"):
        coco.read_results(path, make_records([{"id": 1}], ["cat"]))
    path.write_text("[1, 2")
    with pytest.raises(DataError, match="invalid JSON"):
        coco.read_results(path, make_records([{"id": 1}], ["cat"]))


def test_chess_parity_on_a_trained_models_detections(chess):
    """A real model's output, scored the way `detlab eval --gt --dets` scores it, equals pycocotools.

    ``tests/data/chess_test_fcos_effl0_dets.json``: ``fcos_effl0_fpn`` (ImageNet backbone) trained
    3 epochs on chess train, then ``detlab predict RUN --data chess/test --score 0.05`` (COCO
    results format, the dataset's own image and category ids).
    """
    from detlab.data.formats import read_records

    path = Path(__file__).parent / "data" / "chess_test_fcos_effl0_dets.json"
    records = read_records(chess / "test")
    result, problems = score_results_file(records, path, ("coco",))
    assert not problems
    original = json.loads((chess / "test" / "_annotations.coco.json").read_text())
    for a in original["annotations"]:  # ids from 1, as in test_chess_parity_with_pycocotools
        a["id"] += 1
    np.testing.assert_allclose(
        ours(result), theirs(pycoco_stats(original, json.loads(path.read_text()))), atol=1e-6, equal_nan=True
    )
    assert result["coco"]["AP50"] > 0.1  # a model that learned something, not noise
