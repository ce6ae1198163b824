"""VOC07 / VOC12 against an independent re-implementation of the PASCAL VOC devkit, on VOC year folders
(a synthetic one and the real BCCD test split) scored the way `detlab eval --gt --dets` scores them,
with a truncated and a missing image in the split.

The reference below is written from the devkit's definition, not from detlab's code: it reads the XML
itself, works one detection at a time, and does its arithmetic in exact fractions, so it shares no
rounding, vectorisation or threshold constant with detlab. Frame, as detlab documents it
(``data/formats/voc.py``, ``evaluation/voc.py``): VOC's 1-based inclusive pixel indices become the
continuous box ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``, IoU has no ``+1``, a match needs
``IoU > 0.5``; results files are COCO ``[x, y, w, h]`` in that frame, category ids ``1..C`` in sorted
class-name order, image ids the 0-based positions in the split file; boxes with ``xmax <= xmin`` or
``ymax <= ymin`` are skipped.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_eval_reference_coco import NAMES, pycocotools_eval, reference_stats, stats_of

from detlab.cli import main

HALF = Fraction(1, 2)
SIZES = [(500, 375), (375, 500), (500, 333), (334, 500), (480, 360), (500, 281)]
CLASSES = ["bird", "car", "cat", "dog", "person"]  # "sheep" is in the split with difficult boxes only


# --- the reference ------------------------------------------------------------------


def read_split(year: Path, split: str) -> tuple[list[str], list[dict]]:
    """Class names (sorted) and, per split position, ``{"size", "objects": [(name, box, difficult)]}``."""
    lines = (year / "ImageSets" / "Main" / f"{split}.txt").read_text().splitlines()
    ids = [ln.split()[0] for ln in lines if ln.strip()]
    images = []
    for stem in ids:
        root = ET.parse(year / "Annotations" / f"{stem}.xml").getroot()
        objects = []
        for obj in root.iter("object"):
            xmin, ymin, xmax, ymax = (
                float(obj.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")
            )
            if xmax <= xmin or ymax <= ymin:
                continue
            flag = obj.find("difficult")
            objects.append(
                (
                    obj.find("name").text.strip(),
                    (xmin - 1, ymin - 1, xmax, ymax),
                    flag is not None and int(flag.text) == 1,
                )
            )
        size = root.find("size")
        images.append(
            {"size": (int(size.find("width").text), int(size.find("height").text)), "objects": objects}
        )
    return sorted({name for im in images for name, _, _ in im["objects"]}), images


def exact_iou(a: tuple, b: tuple) -> Fraction:
    a, b = [Fraction(v) for v in a], [Fraction(v) for v in b]
    iw = max(Fraction(0), min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(Fraction(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def class_hits(dets: list[tuple], gt: dict[int, list[tuple]]) -> list[bool]:
    """The devkit's loop for one class: detections by descending score over the split; each takes the GT
    box of its image with the highest IoU (the first on ties); IoU > 0.5 and a difficult box → ignored;
    first on a box → TP, later ones → FP (no fall-back to the next box); IoU <= 0.5 → FP."""
    taken = {image: [False] * len(boxes) for image, boxes in gt.items()}
    hits = []
    for _, image, box in sorted(dets, key=lambda d: -d[0]):
        best, j = Fraction(-1), -1
        for k, (g, _) in enumerate(gt.get(image, [])):
            ov = exact_iou(box, g)
            if ov > best:
                best, j = ov, k
        if j >= 0 and best > HALF:
            if gt[image][j][1]:
                continue
            hits.append(not taken[image][j])
            taken[image][j] = True
        else:
            hits.append(False)
    return hits


def exact_ap(hits: list[bool], npos: int) -> tuple[Fraction, Fraction]:
    """(11-point, all-point) AP of a ranked hit list with ``npos`` positives, in exact fractions.

    Precision after each detection ``tp / (tp + fp)``, recall ``tp / npos``. The envelope at recall r is
    the largest precision at any recall >= r. 11-point: the mean of the envelope at r = 0, 1/10, …, 1
    (0 where no detection reaches r). All-point: the area under the envelope — each TP adds 1/npos of
    recall at the envelope's value there.
    """
    prec, tps, tp = [], [], 0
    for i, hit in enumerate(hits, 1):
        tp += hit
        prec.append(Fraction(tp, i))
        tps.append(tp)
    envelope, best = [Fraction(0)] * len(prec), Fraction(0)
    for i in range(len(prec) - 1, -1, -1):
        best = max(best, prec[i])
        envelope[i] = best
    eleven = Fraction(0)
    for k in range(11):
        first = next((i for i, t in enumerate(tps) if 10 * t >= k * npos), None)  # recall >= k/10, exactly
        eleven += envelope[first] if first is not None else 0
    all_point = sum((envelope[i] for i, hit in enumerate(hits) if hit), Fraction(0)) / npos
    return eleven / 11, all_point


def devkit_reference(classes: list[str], images: list[dict], rows: list[dict]) -> dict:
    """``{"voc07"|"voc12": {"mAP", "per_class"}}`` for a results list (rows outside the split left out)."""
    out = {"voc07": {"per_class": {}}, "voc12": {"per_class": {}}}
    for c, name in enumerate(classes, 1):
        gt = {i: [(box, diff) for n, box, diff in im["objects"] if n == name] for i, im in enumerate(images)}
        npos = sum(not diff for boxes in gt.values() for _, diff in boxes)
        dets = []
        for r in rows:
            if r["category_id"] == c and 0 <= r["image_id"] < len(images):
                x, y, w, h = r["bbox"]
                dets.append((r["score"], r["image_id"], (x, y, x + w, y + h)))
        ap07, ap12 = exact_ap(class_hits(dets, gt), npos) if npos else (None, None)
        out["voc07"]["per_class"][name], out["voc12"]["per_class"][name] = ap07, ap12
    for p in out.values():
        defined = [v for v in p["per_class"].values() if v is not None]
        p["mAP"] = float(sum(defined) / len(defined)) if defined else float("nan")
        p["per_class"] = {k: float("nan") if v is None else float(v) for k, v in p["per_class"].items()}
    return out


# --- building VOC folders and results -----------------------------------------------


def voc_xml(filename: str, size: tuple[int, int], objects: list[tuple]) -> str:
    """``objects``: ``(name, xmin, ymin, xmax, ymax, difficult)`` in VOC's 1-based pixel indices."""
    parts = [
        f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>"
        "<source><database>The VOC2007 Database</database></source>"
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>"
    ]
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "\n".join(parts) + "\n</annotation>\n"


def _random_objects(rng, size: tuple[int, int], names: list[str]) -> list[tuple]:
    width, height = size
    objects = []
    for _ in range(int(rng.integers(1, 9))):
        side = float(np.exp(rng.uniform(np.log(12), np.log(240))))
        aspect = float(np.exp(rng.normal(0, 0.4)))
        w, h = int(min(side * aspect, width - 2)) + 1, int(min(side / aspect, height - 2)) + 1
        xmin, ymin = int(rng.integers(1, width - w + 2)), int(rng.integers(1, height - h + 2))
        xmax, ymax = xmin + w - 1, ymin + h - 1
        if (
            rng.random() < 0.1
        ):  # annotated past the declared size (an object cut by the border): scored as annotated
            xmax = width + int(rng.integers(1, w // 2 + 2))
            xmin = max(1, xmax - w + 1)
        objects.append(
            (
                str(rng.choice(names, p=[0.15, 0.2, 0.15, 0.15, 0.35])),
                xmin,
                ymin,
                xmax,
                ymax,
                bool(rng.random() < 0.12),
            )
        )
    return objects


def empty_year(year: Path) -> None:
    """A VOC year folder's layout with no file in it (``JPEGImages/`` stays empty: no image is needed)."""
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (year / sub).mkdir(parents=True)


def write_jpegs(year: Path, stems: list[str], sizes: list[tuple[int, int]]) -> None:
    (year / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for k, (stem, size) in enumerate(zip(stems, sizes)):
        Image.new("RGB", size, ((29 * k) % 256, 90, 160)).save(
            year / "JPEGImages" / f"{stem}.jpg", quality=80
        )


def truncate_and_remove(year: Path, truncated: str, missing: str) -> tuple[Path, Path]:
    """Cut one JPEG to half its bytes, delete another: both stay in the split."""
    cut, gone = year / "JPEGImages" / f"{truncated}.jpg", year / "JPEGImages" / f"{missing}.jpg"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    gone.unlink()
    return cut, gone


def synthetic_year(year: Path, seed: int = 0, num_images: int = 40) -> list[str]:
    """A VOC2007-like year folder; returns the test split's ids in file order (shuffled, not sorted)."""
    rng = np.random.default_rng(seed)
    stems = [
        f"{i:06d}" for i in sorted(rng.choice(np.arange(1, 10_000), num_images + 8, replace=False).tolist())
    ]
    test, train = stems[:num_images], stems[num_images:]
    empty_year(year)
    sizes = [SIZES[int(rng.integers(len(SIZES)))] for _ in stems]
    for k, (stem, size) in enumerate(zip(stems, sizes)):
        if stem in train:  # not in the test split: its 'horse' must not become a class of it
            objects = [("horse", 10, 20, 200, 220, False)] + _random_objects(rng, size, CLASSES)
        elif k % 10 == 3:
            objects = []  # a negative image
        else:
            objects = _random_objects(rng, size, CLASSES)
            if k % 9 == 1:
                objects.append(("sheep", 30, 40, 150, 160, True))  # a class with difficult boxes only
            if k % 13 == 2:  # a mis-click the reader skips (and so must the reference)
                objects.append(
                    ("person", 50, 60, 50, 120, False) if k % 2 else ("car", 80, 90, 40, 90, False)
                )
        (year / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", size, objects))
    write_jpegs(year, stems, sizes)
    order = list(test)
    rng.shuffle(order)
    (year / "ImageSets" / "Main" / "test.txt").write_text("\n".join(order) + "\n")
    (year / "ImageSets" / "Main" / "train.txt").write_text("\n".join(train) + "\n")
    return order


def jittered_results(classes: list[str], images: list[dict], seed: int) -> list[dict]:
    """A detector's results for a split read by :func:`read_split` (COCO xywh, continuous frame)."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(image_id, name, box, score):
        x1, y1, x2, y2 = box
        rows.append(
            {
                "image_id": image_id,
                "category_id": classes.index(name) + 1,
                "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                "score": float(score),
            }
        )

    def jitter(box, noise):
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        dx, dy = rng.normal(0, noise, 2) * (w, h)
        sw, sh = np.exp(rng.normal(0, noise, 2))
        return x1 + dx, y1 + dy, x1 + dx + max(w * sw, 1.0), y1 + dy + max(h * sh, 1.0)

    for i, im in enumerate(images):
        width, height = im["size"]
        for name, box, _ in im["objects"]:
            if rng.random() < 0.85:
                add(i, name, jitter(box, 0.07), rng.beta(5, 2))
            if rng.random() < 0.15:  # duplicate
                add(i, name, jitter(box, 0.12), rng.beta(2, 3))
            if rng.random() < 0.08:  # right place, wrong class
                add(i, str(rng.choice([c for c in classes if c != name])), jitter(box, 0.07), rng.beta(2, 4))
        for _ in range(int(rng.poisson(2))):
            w, h = rng.uniform(10, 0.5 * width), rng.uniform(10, 0.5 * height)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            add(i, str(rng.choice(classes)), (x, y, x + w, y + h), rng.beta(1, 4))
    return rows


def detlab_eval(gt_arg: str, dets: Path, out: Path, protocol: str = "voc07,voc12", extra=()) -> dict:
    code = main(
        [
            "eval",
            "--gt",
            gt_arg,
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


def assert_equal_to_reference(result: dict, reference: dict, classes: list[str]) -> None:
    for p in ("voc07", "voc12"):
        ours = result[p]["per_class"]
        assert list(ours) == classes
        np.testing.assert_allclose(
            [np.nan if ours[c] is None else ours[c] for c in classes],
            [reference[p]["per_class"][c] for c in classes],
            atol=1e-9,
            rtol=0,
            equal_nan=True,
            err_msg=p,
        )
        assert result[p]["mAP"] == pytest.approx(reference[p]["mAP"], abs=1e-9, rel=0), p


@pytest.fixture(scope="module")
def voc_case(tmp_path_factory):
    """The synthetic year folder (a truncated and a missing image in its test split) and its results file."""
    year = tmp_path_factory.mktemp("voc") / "VOC2007"
    order = synthetic_year(year)
    classes, images = read_split(year, "test")
    boxed = [stem for stem, im in zip(order, images) if len(im["objects"]) >= 3]
    cut, gone = truncate_and_remove(year, boxed[0], boxed[1])
    rows = jittered_results(classes, images, seed=3)
    stray = [{"image_id": len(images), "category_id": 1, "bbox": [5.0, 5.0, 20.0, 20.0], "score": 0.5}]
    dets = year.parent / "results.json"
    dets.write_text(json.dumps(rows + stray))
    return {
        "year": year,
        "classes": classes,
        "images": images,
        "rows": rows,
        "dets": dets,
        "cut": cut,
        "gone": gone,
    }


# --- tests --------------------------------------------------------------------------


def test_reference_agrees_with_hand_computed_case(tmp_path):
    """The reference itself, on test_eval_voc's hand case (cat: AP12 5/9, AP07 6/11; dog no GT; bird 0)."""
    year = tmp_path / "VOC"
    empty_year(year)
    objects = [
        [("cat", 1, 1, 10, 10, False), ("cat", 21, 1, 30, 10, True)],
        [("cat", 1, 1, 10, 10, False), ("bird", 1, 1, 20, 20, False)],
        [("cat", 51, 51, 60, 60, False)],
    ]
    for k, objs in enumerate(objects):
        (year / "Annotations" / f"{k}.xml").write_text(voc_xml(f"{k}.jpg", (200, 200), objs))
    (year / "ImageSets" / "Main" / "test.txt").write_text("0\n1\n2\n")
    classes, images = read_split(year, "test")
    assert classes == ["bird", "cat"]
    rows = [
        {"image_id": i, "category_id": 2, "bbox": [x, y, 10, 10], "score": s}
        for i, s, x, y in [
            (0, 0.9, 0, 0),
            (0, 0.8, 0, 0),
            (0, 0.7, 20, 0),
            (1, 0.6, 0, 0),
            (1, 0.5, 100, 100),
        ]
    ]
    ref = devkit_reference(classes, images, rows)
    assert ref["voc12"]["per_class"] == {"bird": 0.0, "cat": pytest.approx(5 / 9, abs=1e-15)}
    assert ref["voc07"]["per_class"] == {"bird": 0.0, "cat": pytest.approx(6 / 11, abs=1e-15)}


def test_synthetic_year_equals_devkit_reference_with_a_truncated_and_a_missing_image(
    voc_case, tmp_path, capsys
):
    case = voc_case
    assert case["classes"] == CLASSES + ["sheep"]
    capsys.readouterr()
    meta = detlab_eval(f"{case['year']}:test", case["dets"], tmp_path / "out")
    err = capsys.readouterr().err
    assert case["cut"].name in err and case["gone"].name in err
    assert meta["num_images"] == len(case["images"])
    assert meta["num_boxes"] == sum(len(im["objects"]) for im in case["images"])
    reference = devkit_reference(case["classes"], case["images"], case["rows"])
    assert np.isnan(reference["voc12"]["per_class"]["sheep"])  # difficult boxes only: no positives
    assert_equal_to_reference(meta["results"], reference, case["classes"])
    assert any("unknown image_id" in line for line in meta["skipped"])


def test_case_is_one_where_difficult_and_clipping_change_the_numbers(voc_case):
    """What the parity above rules out on this case: counting difficult boxes as positives, or clipping
    the boxes annotated past the image border to the declared size, give other numbers."""
    case = voc_case
    reference = devkit_reference(case["classes"], case["images"], case["rows"])
    plain = [{**im, "objects": [(n, b, False) for n, b, _ in im["objects"]]} for im in case["images"]]
    clipped = [
        {
            **im,
            "objects": [
                (n, (x1, y1, min(x2, im["size"][0]), min(y2, im["size"][1])), d)
                for n, (x1, y1, x2, y2), d in im["objects"]
            ],
        }
        for im in case["images"]
    ]
    assert sum(x2 > im["size"][0] for im in case["images"] for _, (_, _, x2, _), _ in im["objects"]) >= 10
    for other in (plain, clipped):
        changed = devkit_reference(case["classes"], other, case["rows"])
        assert abs(changed["voc12"]["mAP"] - reference["voc12"]["mAP"]) > 1e-3


def test_xml_indices_are_read_as_the_continuous_frame_without_plus_one(tmp_path):
    """Three 10x10 cats at VOC xmin=1..xmax=10 (continuous 0..10), each with one detection 10 wide:
    5.1 high → IoU 0.51, a TP (0.39 if the XML were read without the -1 shift); 4.9 high → 0.49, an FP
    (0.54 with the devkit's +1 on continuous boxes); 5 high → exactly 0.5, an FP (the match needs
    IoU > 0.5). Ranked TP, FP, FP with 3 positives: AP12 = 1/3, in this frame only."""
    year = tmp_path / "VOC"
    empty_year(year)
    objects = [("cat", 1 + 100 * k, 1, 10 + 100 * k, 10, False) for k in range(3)]
    (year / "Annotations" / "a.xml").write_text(voc_xml("a.jpg", (300, 100), objects))
    (year / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    rows = [
        {"image_id": 0, "category_id": 1, "bbox": [100.0 * k, 0.0, 10.0, h], "score": 0.9 - k / 10}
        for k, h in enumerate([5.1, 4.9, 5.0])
    ]
    dets = tmp_path / "r.json"
    dets.write_text(json.dumps(rows))
    reference = devkit_reference(*read_split(year, "test"), rows)
    assert reference["voc12"]["mAP"] == pytest.approx(1 / 3, abs=1e-15)
    result = detlab_eval(f"{year}:test", dets, tmp_path / "out")["results"]
    assert result["voc12"]["mAP"] == pytest.approx(1 / 3, abs=1e-12)
    assert result["voc07"]["mAP"] == pytest.approx(reference["voc07"]["mAP"], abs=1e-12)


def test_coco_numbers_on_voc_data_range_by_box_area_as_pycocotools(voc_case, tmp_path):
    """COCO on a VOC source: box areas, difficult boxes as crowd (ignored), ids 1..C, images by split position."""
    case = voc_case
    anns, images = [], []
    for i, im in enumerate(case["images"]):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": im["size"][0], "height": im["size"][1]})
        for name, (x1, y1, x2, y2), difficult in im["objects"]:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": case["classes"].index(name) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(difficult),
                }
            )
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k, "name": n} for k, n in enumerate(case["classes"], 1)],
    }
    gt_path = tmp_path / "voc_as_coco.json"
    gt_path.write_text(json.dumps(gt))
    meta = detlab_eval(f"{case['year']}:test", case["dets"], tmp_path / "out", protocol="coco")
    reference = reference_stats(pycocotools_eval(gt_path, case["rows"]))
    np.testing.assert_allclose(stats_of(meta["results"]["coco"]), reference, atol=1e-6, equal_nan=True)
    assert meta["results"]["coco"]["area"] == "box w*h (the annotations carry no area)"


def test_bccd_test_split_equals_devkit_reference_with_a_truncated_and_a_missing_image(bccd, tmp_path, capsys):
    year = tmp_path / "BCCD"
    ids = [
        ln.split()[0]
        for ln in (bccd / "ImageSets" / "Main" / "test.txt").read_text().splitlines()
        if ln.strip()
    ]
    assert len(ids) == 72
    shutil.copytree(bccd / "ImageSets", year / "ImageSets")
    (year / "Annotations").mkdir()
    (year / "JPEGImages").mkdir()
    for stem in ids:
        shutil.copy(bccd / "Annotations" / f"{stem}.xml", year / "Annotations")
        shutil.copy(bccd / "JPEGImages" / f"{stem}.jpg", year / "JPEGImages")
    cut, gone = truncate_and_remove(year, ids[5], ids[40])
    classes, images = read_split(year, "test")
    assert classes == ["Platelets", "RBC", "WBC"]
    rows = jittered_results(classes, images, seed=7)
    dets = tmp_path / "bccd_results.json"
    dets.write_text(json.dumps(rows))
    capsys.readouterr()
    meta = detlab_eval(f"{year}:test", dets, tmp_path / "out")
    err = capsys.readouterr().err
    assert cut.name in err and gone.name in err
    assert meta["num_images"] == 72 and meta["num_boxes"] == sum(len(im["objects"]) for im in images)
    reference = devkit_reference(classes, images, rows)
    assert_equal_to_reference(meta["results"], reference, classes)
    assert 0.5 < reference["voc12"]["mAP"] < 0.99  # realistic, not degenerate


def test_voc07_counts_a_recall_exactly_on_an_eleven_point_threshold(tmp_path):
    """10 positives, ranked TP TP TP, 7 FPs, TP: recall is exactly 3/10 at precision 1, so the 11-point
    term at r = 0.3 is 1 and AP07 = (4 + 4/11) / 11 = 48/121. (A float threshold 0.1 * 3 =
    0.30000000000000004 misses the point 3/10 and gives 41/121.) AP12 = (3 + 4/11) / 10 = 37/110."""
    year = tmp_path / "VOC"
    empty_year(year)
    objects = [("cat", 1 + 40 * k, 1, 30 + 40 * k, 30, False) for k in range(10)]
    (year / "Annotations" / "a.xml").write_text(voc_xml("a.jpg", (500, 375), objects))
    (year / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    ranked = [(40 * k, 0) for k in range(3)] + [(300, 300)] * 7 + [(120, 0)]
    rows = [
        {"image_id": 0, "category_id": 1, "bbox": [x, y, 30, 30], "score": 1 - k / 100}
        for k, (x, y) in enumerate(ranked)
    ]
    dets = tmp_path / "r.json"
    dets.write_text(json.dumps(rows))
    reference = devkit_reference(*read_split(year, "test"), rows)
    assert reference["voc07"]["mAP"] == pytest.approx(48 / 121, abs=1e-15)
    assert reference["voc12"]["mAP"] == pytest.approx(37 / 110, abs=1e-15)
    result = detlab_eval(f"{year}:test", dets, tmp_path / "out")["results"]
    assert result["voc12"]["mAP"] == pytest.approx(37 / 110, abs=1e-12)
    assert result["voc07"]["mAP"] == pytest.approx(48 / 121, abs=1e-12)


@pytest.mark.parametrize("classes", [None, "cat,dog"])
def test_negatives_only_split_gives_nan_map_without_images(tmp_path, classes, capsys):
    """XMLs without objects (and no image file at all), scored against detections: every number is
    undefined (null), rc 0."""
    year = tmp_path / "VOC"
    empty_year(year)
    stems = [f"neg{k}" for k in range(5)]
    for stem in stems:
        (year / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", (500, 375), []))
    (year / "ImageSets" / "Main" / "test.txt").write_text("\n".join(stems) + "\n")
    rng = np.random.default_rng(0)
    rows = [
        {
            "image_id": int(rng.integers(5)),
            "category_id": int(rng.integers(1, 3)),
            "bbox": [float(v) for v in rng.uniform(0, 200, 2)] + [40.0, 30.0],
            "score": float(rng.random()),
        }
        for _ in range(12)
    ]
    dets = tmp_path / "r.json"
    dets.write_text(json.dumps(rows))
    extra = ["--classes", classes] if classes else []
    result = detlab_eval(f"{year}:test", dets, tmp_path / "out", protocol="coco,voc07,voc12", extra=extra)[
        "results"
    ]
    for p in ("voc07", "voc12"):
        assert result[p]["mAP"] is None
        assert all(v is None for v in result[p]["per_class"].values())
    assert all(result["coco"][n] is None for n in NAMES)
    if classes:
        assert list(result["voc12"]["per_class"]) == ["cat", "dog"]
