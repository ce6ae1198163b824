"""COCO's small/medium/large follow the annotation's `area` (a mask area on real files), as pycocotools:
through detlab eval, through a COCO -> COCO conversion, and only the box area where the source has none."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from detlab.cli import main
from detlab.data.convert import convert

NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def pycocotools_stats(gt_path, dets_path) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(dets_path)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return np.where(ev.stats < 0, np.nan, ev.stats)


def detlab_stats(tmp_path, gt_path, dets_path, name) -> np.ndarray:
    assert (
        main(
            [
                "eval",
                "--gt",
                str(gt_path),
                "--dets",
                str(dets_path),
                "--protocol",
                "coco",
                "--no-analysis",
                "--out",
                str(tmp_path / name),
            ]
        )
        == 0
    )
    coco = json.loads((tmp_path / name / "metrics.json").read_text())["results"]["coco"]
    return np.array([np.nan if coco[n] is None else coco[n] for n in NAMES]), coco["area"]


@pytest.fixture
def chess_with_mask_areas(chess, tmp_path):
    """Chess test with every `area` a seeded 0.3-0.9 of w*h (real COCO areas are mask areas), and results."""
    data = json.loads((chess / "test" / "_annotations.coco.json").read_text())
    rng = np.random.default_rng(4)
    for ann in data["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3] * float(rng.uniform(0.3, 0.9))
        ann["id"] += (
            1  # the file starts at id 0, which pycocotools' matcher reads as "unmatched" (detlab warns)
        )
    dets = []
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        jx, jy = rng.normal(0, 0.1, 2) * (w, h)
        dets.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x + jx, y + jy, w * float(np.exp(rng.normal(0, 0.1))), h],
                "score": float(rng.random()),
            }
        )
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "_annotations.coco.json").write_text(json.dumps(data))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return folder / "_annotations.coco.json", tmp_path / "dets.json"


def test_annotation_id_zero_is_warned_about(chess, tmp_path, capsys):
    results = tmp_path / "none.json"
    results.write_text("[]")
    assert (
        main(
            ["eval", "--gt", f"{chess}:test", "--dets", str(results), "--no-analysis", "--out", str(tmp_path)]
        )
        == 0
    )
    assert "annotations[id=0].id: an annotation has id 0" in capsys.readouterr().err


def test_mask_areas_decide_the_ranges_as_in_pycocotools(tmp_path, chess_with_mask_areas):
    gt, dets = chess_with_mask_areas
    ours, rule = detlab_stats(tmp_path, gt, dets, "o")
    np.testing.assert_allclose(ours, pycocotools_stats(gt, dets), atol=1e-6, equal_nan=True)
    assert rule == "the annotations' 'area' field, as pycocotools"
    box = json.loads(gt.read_text())
    for ann in box[
        "annotations"
    ]:  # the same file with box areas gives other APs/APm: the area field mattered
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    (tmp_path / "box.json").write_text(json.dumps(box))
    other, _ = detlab_stats(tmp_path, tmp_path / "box.json", dets, "b")
    assert not np.allclose(other[3:6], ours[3:6], equal_nan=True)


def test_coco_to_coco_conversion_keeps_the_area_field(tmp_path, chess_with_mask_areas, chess):
    gt, dets = chess_with_mask_areas
    for image in (chess / "test").glob("*.jpg"):  # convert reads the images it links
        shutil.copy(image, gt.parent / image.name)
    written, _ = convert(gt, tmp_path / "converted", "coco")
    before = {a["id"]: a["area"] for a in json.loads(gt.read_text())["annotations"]}
    after = {a["id"]: a["area"] for a in json.loads(written.read_text())["annotations"]}
    assert after.keys() == before.keys()
    assert max(abs(after[k] - before[k]) for k in before) < 1e-4  # written to 4 decimals
    ours, _ = detlab_stats(tmp_path, written, dets, "c")
    np.testing.assert_allclose(ours, pycocotools_stats(gt, dets), atol=1e-6, equal_nan=True)


def test_sources_without_an_area_field_range_by_box_area(tmp_path, chess_with_mask_areas):
    gt, dets = chess_with_mask_areas
    data = json.loads(gt.read_text())
    for ann in data["annotations"]:
        del ann["area"]
    (tmp_path / "noarea.json").write_text(json.dumps(data))
    ours, rule = detlab_stats(tmp_path, tmp_path / "noarea.json", dets, "n")
    for ann in data["annotations"]:  # pycocotools needs the key: give it the box area detlab promises to use
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    (tmp_path / "boxarea.json").write_text(json.dumps(data))
    np.testing.assert_allclose(
        ours, pycocotools_stats(tmp_path / "boxarea.json", dets), atol=1e-6, equal_nan=True
    )
    assert rule == "box w*h (the annotations carry no area)"
