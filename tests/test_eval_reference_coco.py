"""COCO protocol against pycocotools on files shaped like real ones, scored the way `detlab eval --gt --dets`
scores them: from the two JSON files alone, with image files missing or truncated, with empty ground truth.

The ground truth carries what real COCO files carry and synthetic splits usually lack: non-contiguous
category ids, a category without boxes, images without boxes, a mask-like ``area`` that is not ``w*h``
(so boxes change small/medium/large bucket), crowd regions with their own area, a stray ``ignore`` key
(pycocotools overwrites it from ``iscrowd``), annotation and image ids that are neither contiguous nor
ordered, and boxes that run past the declared image size (scored as annotated, not clipped).
The results carry duplicates, false positives, more than 100 detections of one class on one image,
detections on the category without boxes and on a category id the file does not have.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detlab.cli import main

NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
# COCO's own ids and names: non-contiguous; "bottle" gets no box at all.
CATEGORIES = {1: "person", 3: "car", 7: "train", 18: "dog", 44: "bottle", 90: "toothbrush"}
WITH_BOXES = [1, 3, 7, 18, 90]
EMPTY_CATEGORY = 44
ABSENT_CATEGORY = 2  # "bicycle": a detector's class that the ground-truth file does not declare
AREA_RULE = "the annotations' 'area' field, as pycocotools"


# --- building the files -------------------------------------------------------------


def _bucket(area: float) -> int:
    return 0 if area < 32**2 else 1 if area < 96**2 else 2


def _polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[round(v, 2) for v in (x, y + h / 2, x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h)]]


def realistic_ground_truth(seed: int = 0, num_images: int = 48) -> dict:
    """A COCO instances file: ~350 boxes on 48 images of varied sizes, 6 of them without boxes."""
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(np.arange(1, 600_000), num_images, replace=False)  # unordered, gaps
    ann_ids = iter(rng.choice(np.arange(1, 2_000_000), 4000, replace=False).tolist())  # never 0
    images, anns = [], []
    for k, image_id in enumerate(image_ids.tolist()):
        width, height = int(rng.integers(240, 801)), int(rng.integers(180, 641))
        images.append(
            {
                "id": image_id,
                "file_name": f"{image_id:012d}.png",
                "width": width,
                "height": height,
                "license": 1,
                "date_captured": "2013-11-14 11:18:45",
            }
        )
        if k % 8 == 5:
            continue  # an image without GT: every detection on it is a false positive
        for _ in range(int(rng.integers(3, 13))):
            side = float(np.exp(rng.uniform(np.log(12), np.log(260))))  # sqrt(w*h): small, medium and large
            aspect = float(np.exp(rng.normal(0, 0.4)))
            w, h = min(side * aspect, width * 0.9), min(side / aspect, height * 0.9)
            # up to 15% of a box may run past the right/bottom edge: annotated that way, scored that way
            x, y = rng.uniform(0, width - 0.85 * w), rng.uniform(0, height - 0.85 * h)
            x, y, w, h = (round(float(v), 2) for v in (x, y, w, h))
            ann = {
                "id": next(ann_ids),
                "image_id": image_id,
                "category_id": int(rng.choice(WITH_BOXES, p=[0.4, 0.25, 0.1, 0.15, 0.1])),
                "bbox": [x, y, w, h],
                "area": w * h * float(rng.uniform(0.4, 0.9)),  # a mask's area
                "segmentation": _polygon(x, y, w, h),
                "iscrowd": 0,
            }
            if rng.random() < 0.1:
                ann["ignore"] = 1  # pycocotools sets ignore = iscrowd: this box still counts
            anns.append(ann)
        if rng.random() < 0.3:  # a crowd region: its own area, never a miss, absorbs detections
            w, h = (
                round(float(rng.uniform(80, 0.8 * width)), 2),
                round(float(rng.uniform(60, 0.8 * height)), 2),
            )
            x, y = round(float(rng.uniform(0, width - w)), 2), round(float(rng.uniform(0, height - h)), 2)
            anns.append(
                {
                    "id": next(ann_ids),
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": w * h * float(rng.uniform(0.3, 0.7)),
                    "iscrowd": 1,
                    "ignore": 0,
                    "segmentation": {"size": [height, width], "counts": [int(y * height), int(w * h)]},
                }
            )
    rng.shuffle(anns)
    categories = [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in CATEGORIES.items()]
    return {
        "info": {"description": "synthetic, COCO-shaped"},
        "licenses": [{"id": 1, "name": "cc"}],
        "images": images,
        "annotations": anns,
        "categories": categories,
    }


def _jitter(rng, bbox: list[float], noise: float) -> list[float]:
    x, y, w, h = bbox
    dx, dy = rng.normal(0, noise, 2) * (w, h)
    sw, sh = np.exp(rng.normal(0, noise, 2))
    return [round(float(v), 2) for v in (x + dx, y + dy, max(w * sw, 1.0), max(h * sh, 1.0))]


def _random_box(rng, image: dict) -> list[float]:
    w, h = rng.uniform(8, 0.6 * image["width"]), rng.uniform(8, 0.6 * image["height"])
    x, y = rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h)
    return [round(float(v), 2) for v in (x, y, w, h)]


def realistic_results(gt: dict, seed: int = 1) -> list[dict]:
    """A detector's results file for ``gt`` (no image id outside it: pycocotools' loadRes refuses those)."""
    rng = np.random.default_rng(seed)
    images = {im["id"]: im for im in gt["images"]}
    rows = []

    def add(image_id, category_id, bbox, score):
        rows.append(
            {"image_id": image_id, "category_id": int(category_id), "bbox": bbox, "score": float(score)}
        )

    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            for _ in range(3):  # detections inside the crowd region: neither TP nor FP
                x, y, w, h = ann["bbox"]
                fw, fh = rng.uniform(0.15, 0.4, 2)
                inside = (x + rng.uniform(0, 1 - fw) * w, y + rng.uniform(0, 1 - fh) * h, fw * w, fh * h)
                add(ann["image_id"], 1, [round(float(v), 2) for v in inside], rng.beta(3, 3))
            continue
        if rng.random() < 0.85:
            add(ann["image_id"], ann["category_id"], _jitter(rng, ann["bbox"], 0.08), rng.beta(5, 2))
        if rng.random() < 0.2:  # duplicate, looser and lower
            add(ann["image_id"], ann["category_id"], _jitter(rng, ann["bbox"], 0.15), rng.beta(2, 3))
        if rng.random() < 0.1:  # right place, wrong class
            other = rng.choice([c for c in WITH_BOXES if c != ann["category_id"]])
            add(ann["image_id"], other, _jitter(rng, ann["bbox"], 0.08), rng.beta(2, 4))
        if rng.random() < 0.05:  # on the category without boxes, and on one the file does not declare
            add(
                ann["image_id"],
                rng.choice([EMPTY_CATEGORY, ABSENT_CATEGORY]),
                _jitter(rng, ann["bbox"], 0.05),
                rng.beta(5, 2),
            )
    for image_id, image in images.items():
        for _ in range(int(rng.poisson(3))):
            add(image_id, rng.choice(WITH_BOXES + [EMPTY_CATEGORY]), _random_box(rng, image), rng.beta(1, 4))
    # A crowded image: 150 "person" detections, more than maxDets=100 of one class on one image.
    per_image = {}
    for ann in gt["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    busy = max(per_image, key=lambda i: len(per_image[i]))
    for k in range(150):
        near = per_image[busy][k % len(per_image[busy])]["bbox"]
        box = _jitter(rng, near, 0.2) if k % 3 else _random_box(rng, images[busy])
        add(busy, 1, box, rng.uniform(0.01, 0.9))
    rng.shuffle(rows)
    return rows


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def coco_case() -> tuple[dict, list[dict]]:
    gt = realistic_ground_truth(seed=0)
    results = realistic_results(gt, seed=1)
    return gt, results


# --- the two sides ------------------------------------------------------------------


def pycocotools_eval(gt_path: Path, results: list[dict]):
    """COCO(gt) → loadRes → evaluate/accumulate/summarize; an empty list is an empty result set
    (loadRes itself indexes ``anns[0]``)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        if results:
            dt = gt.loadRes(copy.deepcopy(results))
        else:
            dt = COCO()
            dt.dataset = {
                "images": gt.dataset["images"],
                "categories": gt.dataset["categories"],
                "annotations": [],
            }
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def reference_stats(ev) -> np.ndarray:
    s = np.asarray(ev.stats[:12], np.float64)
    return np.where(s < 0, np.nan, s)


def reference_per_class(ev, gt: dict) -> dict[str, float]:
    """AP@[.5:.95] per category from pycocotools' precision array (area all, maxDets 100)."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    p = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        valid = p[:, :, k][p[:, :, k] > -1]
        out[names[cid]] = float(valid.mean()) if valid.size else float("nan")
    return out


def detlab_eval(gt_arg: str | Path, dets: Path, out: Path, protocol: str = "coco", extra=()) -> dict:
    """``detlab eval --gt --dets`` in process; the metrics.json it wrote."""
    code = main(
        [
            "eval",
            "--gt",
            str(gt_arg),
            "--dets",
            str(dets),
            "--protocol",
            protocol,
            "--out",
            str(out),
            "--no-analysis",
            *extra,
        ]
    )
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def stats_of(coco_result: dict) -> np.ndarray:
    return np.array([np.nan if coco_result[n] is None else coco_result[n] for n in NAMES], np.float64)


def assert_same_per_class(ours: dict, reference: dict) -> None:
    assert set(ours) <= set(reference)
    np.testing.assert_allclose(
        [np.nan if ours[n] is None else ours[n] for n in ours],
        [reference[n] for n in ours],
        atol=1e-6,
        equal_nan=True,
    )


def unknown_image_rows(gt: dict) -> list[dict]:
    """Rows for an image id the file does not have (kept out of the pycocotools side)."""
    stray = max(im["id"] for im in gt["images"]) + 1
    return [
        {"image_id": stray, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 40.0], "score": 0.99 - k / 100}
        for k in range(3)
    ]


# --- tests --------------------------------------------------------------------------


def test_fixture_is_realistic_and_its_areas_and_borders_matter(coco_case, tmp_path):
    """The case is one where using w*h instead of `area`, or clipping boxes to the image, would be caught."""
    gt, results = coco_case
    anns = gt["annotations"]
    assert 30 <= len(gt["images"]) <= 60 and len(anns) >= 300
    assert sum(_bucket(a["bbox"][2] * a["bbox"][3]) != _bucket(a["area"]) for a in anns) >= 40
    images = {im["id"]: im for im in gt["images"]}
    assert sum(a["bbox"][0] + a["bbox"][2] > images[a["image_id"]]["width"] for a in anns) >= 10
    assert len({a["image_id"] for a in anns}) < len(images)
    assert {r["category_id"] for r in results} >= {EMPTY_CATEGORY, ABSENT_CATEGORY}
    assert (
        max(np.unique([r["image_id"] for r in results if r["category_id"] == 1], return_counts=True)[1]) > 100
    )
    reference = reference_stats(pycocotools_eval(write_json(tmp_path / "gt.json", gt), results))
    box_area = copy.deepcopy(gt)
    for a in box_area["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    other = reference_stats(pycocotools_eval(write_json(tmp_path / "box.json", box_area), results))
    assert np.abs(other[[3, 4, 5, 9, 10, 11]] - reference[[3, 4, 5, 9, 10, 11]]).max() > 1e-3
    clipped = copy.deepcopy(gt)
    for a in clipped["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        a["bbox"] = [x, y, min(w, im["width"] - x), min(h, im["height"] - y)]
    other = reference_stats(pycocotools_eval(write_json(tmp_path / "clip.json", clipped), results))
    assert np.abs(other - reference).max() > 1e-4


def test_two_json_files_alone_give_pycocotools_twelve_numbers_and_per_class(coco_case, tmp_path, capsys):
    gt, results = coco_case
    folder = tmp_path / "only"
    gt_path = write_json(folder / "instances_val2017.json", gt)
    dets = write_json(folder / "detections.json", results + unknown_image_rows(gt))
    assert sorted(p.name for p in folder.iterdir()) == ["detections.json", "instances_val2017.json"]
    meta = detlab_eval(gt_path, dets, tmp_path / "out")
    ev = pycocotools_eval(gt_path, results)
    coco = meta["results"]["coco"]
    np.testing.assert_allclose(stats_of(coco), reference_stats(ev), atol=1e-6, equal_nan=True)
    assert_same_per_class(coco["per_class"], reference_per_class(ev, gt))
    assert set(coco["per_class"]) == {CATEGORIES[c] for c in WITH_BOXES}
    assert coco["area"] == AREA_RULE
    assert meta["num_images"] == len(gt["images"]) and meta["num_boxes"] == len(gt["annotations"])
    skipped = " ".join(meta["skipped"])
    assert "3 results with an unknown image_id" in skipped
    assert f"unknown category_id (e.g. {ABSENT_CATEGORY}" in skipped
    assert sorted(p.name for p in folder.iterdir()) == ["detections.json", "instances_val2017.json"]


def test_python_api_scores_the_file_like_pycocotools_and_counts_unknown_ids(coco_case, tmp_path):
    from detlab.data.dataset import load_ground_truth
    from detlab.evaluation.evaluator import score_results_file

    gt, results = coco_case
    gt_path = write_json(tmp_path / "instances_val2017.json", gt)
    dets = write_json(tmp_path / "detections.json", results + unknown_image_rows(gt))
    records = load_ground_truth(gt_path, verbose=False)
    assert len(records.images) == len(gt["images"]) and records.num_boxes == len(gt["annotations"])
    result, problems = score_results_file(records, dets, ("coco",))
    np.testing.assert_allclose(
        stats_of(result["coco"]),
        reference_stats(pycocotools_eval(gt_path, results)),
        atol=1e-6,
        equal_nan=True,
    )
    assert sorted(p.field for p in problems) == ["category_id", "image_id"]
    assert all(p.severity == "skipped" for p in problems)


def _write_png(path: Path, width: int, height: int, shade: int) -> None:
    Image.new("RGB", (width, height), (shade, 120, 255 - shade)).save(path)


def test_missing_and_truncated_images_are_reported_and_change_no_number(coco_case, tmp_path, capsys):
    gt, results = coco_case
    folder = tmp_path / "val2017"
    gt_path = write_json(folder / "_annotations.coco.json", gt)
    counts = {}
    for a in gt["annotations"]:
        counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    for k, im in enumerate(gt["images"]):
        _write_png(folder / im["file_name"], im["width"], im["height"], (37 * k) % 256)
    busiest = sorted(gt["images"], key=lambda im: -counts.get(im["id"], 0))
    truncated, missing = folder / busiest[0]["file_name"], folder / busiest[1]["file_name"]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    missing.unlink()
    dets = write_json(tmp_path / "detections.json", results)
    capsys.readouterr()
    meta = detlab_eval(gt_path, dets, tmp_path / "out")
    err = capsys.readouterr().err
    assert truncated.name in err and missing.name in err
    assert meta["num_images"] == len(gt["images"]) and meta["num_boxes"] == len(gt["annotations"])
    ev = pycocotools_eval(gt_path, results)
    np.testing.assert_allclose(
        stats_of(meta["results"]["coco"]), reference_stats(ev), atol=1e-6, equal_nan=True
    )
    assert_same_per_class(meta["results"]["coco"]["per_class"], reference_per_class(ev, gt))


def test_empty_results_list_gives_pycocotools_numbers(coco_case, tmp_path):
    gt, _ = coco_case
    gt_path = write_json(tmp_path / "gt.json", gt)
    dets = write_json(tmp_path / "empty.json", [])
    meta = detlab_eval(gt_path, dets, tmp_path / "out", protocol="coco,voc07,voc12")
    ref = reference_stats(pycocotools_eval(gt_path, []))
    np.testing.assert_allclose(stats_of(meta["results"]["coco"]), ref, atol=1e-6, equal_nan=True)
    assert meta["results"]["coco"]["AP"] == 0.0
    assert meta["results"]["voc07"]["mAP"] == 0.0 and meta["results"]["voc12"]["mAP"] == 0.0


@pytest.mark.parametrize("with_detections", [True, False])
def test_ground_truth_without_any_box_is_nan_everywhere(coco_case, tmp_path, with_detections, capsys):
    """A split whose categories have no box at all: pycocotools' -1 for every number → null, rc 0."""
    gt, results = coco_case
    empty = {**copy.deepcopy(gt), "annotations": []}
    gt_path = write_json(tmp_path / "gt.json", empty)
    rows = results[:200] if with_detections else []
    dets = write_json(tmp_path / "dets.json", rows)
    meta = detlab_eval(gt_path, dets, tmp_path / "out", protocol="coco,voc07,voc12")
    result = meta["results"]
    assert all(result["coco"][n] is None for n in NAMES), {n: result["coco"][n] for n in NAMES}
    assert all(v is None for v in result["coco"]["per_class"].values())
    for voc in ("voc07", "voc12"):
        assert result[voc]["mAP"] is None and all(v is None for v in result[voc]["per_class"].values())
    assert np.isnan(reference_stats(pycocotools_eval(gt_path, rows))).all()
    assert meta["num_images"] == len(gt["images"]) and meta["num_boxes"] == 0


def test_chess_json_alone_equals_pycocotools(chess, tmp_path):
    """The real chess test file (its own areas, float boxes, the box-less 'pieces' category id 0), copied
    alone into an empty folder. Its annotation ids start at 0, which pycocotools' matcher reads as
    'unmatched' (detlab warns and numbers boxes 1..N), so the copy shifts them by one."""
    data = json.loads((chess / "test" / "_annotations.coco.json").read_text())
    for a in data["annotations"]:
        a["id"] += 1
    gt_path = write_json(tmp_path / "chess" / "_annotations.coco.json", data)
    rng = np.random.default_rng(12)
    used = sorted({a["category_id"] for a in data["annotations"]})
    rows = []
    for a in data["annotations"]:
        if rng.random() < 0.9:
            rows.append(
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    "bbox": _jitter(rng, a["bbox"], 0.07),
                    "score": float(rng.beta(5, 2)),
                }
            )
        if rng.random() < 0.25:  # chess pieces look alike: a confident wrong class on the same square
            rows.append(
                {
                    "image_id": a["image_id"],
                    "category_id": int(rng.choice(used)),
                    "bbox": _jitter(rng, a["bbox"], 0.1),
                    "score": float(rng.beta(3, 3)),
                }
            )
    for im in data["images"]:
        for _ in range(int(rng.poisson(4))):
            rows.append(
                {
                    "image_id": im["id"],
                    "category_id": int(rng.choice(used)),
                    "bbox": _random_box(rng, im),
                    "score": float(rng.beta(1, 5)),
                }
            )
    dets = write_json(tmp_path / "dets.json", rows)
    assert [p.name for p in gt_path.parent.iterdir()] == ["_annotations.coco.json"]
    meta = detlab_eval(gt_path, dets, tmp_path / "out")
    ev = pycocotools_eval(gt_path, rows)
    np.testing.assert_allclose(
        stats_of(meta["results"]["coco"]), reference_stats(ev), atol=1e-6, equal_nan=True
    )
    assert_same_per_class(meta["results"]["coco"]["per_class"], reference_per_class(ev, data))
    assert 0.2 < meta["results"]["coco"]["AP"] < 0.9
    assert meta["num_boxes"] == len(data["annotations"])
