"""A bad-data corpus built in a temp folder: each case gives its one-line message or counted skip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.cli import main
from detlab.data.checks import validate_records
from detlab.data.dataset import load_dataset
from detlab.data.formats import read_records
from detlab.errors import DataError

RED, BLUE = (230, 20, 20), (20, 20, 230)


def voc_xml(filename: str, objects: list[tuple], size: tuple[int, int] | None = (64, 48)) -> str:
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    )
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return f"<annotation><filename>{filename}</filename>{size_xml}{objs}</annotation>"


def solid(size=(64, 48), colour=BLUE, mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def add(year: Path, stem: str, image: Image.Image | None, xml: str | None, ext: str = ".jpg", **save) -> None:
    if image is not None:
        image.save(year / "JPEGImages" / f"{stem}{ext}", **save)
    if xml is not None:
        (year / "Annotations" / f"{stem}.xml").write_text(xml)


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """A VOC year folder where almost every image has something wrong."""
    year = tmp_path / "VOCbad"
    (year / "Annotations").mkdir(parents=True)
    (year / "JPEGImages").mkdir()
    box = [("cat", (10, 10, 30, 30), 0)]
    add(year, "good", solid(), voc_xml("good.jpg", box + [("dog", (5, 5, 20, 40), 1)]))
    solid().save(year / "JPEGImages" / "trunc.jpg", quality=95)
    data = (year / "JPEGImages" / "trunc.jpg").read_bytes()
    (year / "JPEGImages" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    add(year, "trunc", None, voc_xml("trunc.jpg", box))
    (year / "JPEGImages" / "zero.jpg").write_bytes(b"")
    add(year, "zero", None, voc_xml("zero.jpg", box))
    add(year, "missing", None, voc_xml("missing.jpg", box))
    add(year, "rgba", solid(colour=(*RED, 128), mode="RGBA"), voc_xml("rgba.png", box), ext=".png")
    add(year, "cmyk", solid(colour=(0, 255, 255, 0), mode="CMYK"), voc_xml("cmyk.jpg", box), quality=95)
    level = np.full((48, 64), 65535, np.uint16)
    level[:, :32] = 32768
    gray16 = Image.fromarray(level)
    add(year, "gray16", gray16, voc_xml("gray16.png", box), ext=".png")
    add(year, "gray", solid(colour=128, mode="L"), voc_xml("gray.jpg", box))
    add(year, "palette", solid().convert("P"), voc_xml("palette.png", box), ext=".png")
    add(year, "malformed", solid(), "<annotation><filename>malformed.jpg</filename><object>")
    add(year, "nosize", solid(), voc_xml("nosize.jpg", box, size=None))
    add(year, "negative", solid(), voc_xml("negative.jpg", box + [("cat", (30, 10, 20, 30), 0)]))
    add(year, "nan", solid(), voc_xml("nan.jpg", box + [("cat", ("nan", 10, 20, 30), 0)]))
    add(
        year,
        "outside",
        solid(),
        voc_xml("outside.jpg", [("cat", (50, 40, 90, 60), 0), ("cat", (100, 100, 120, 120), 0)]),
    )
    add(year, "unknown", solid(), voc_xml("unknown.jpg", box + [("zebra", (1, 1, 9, 9), 0)]))
    add(year, "noxml", solid(), None)
    add(year, "escape", None, voc_xml("../../etc/passwd", box))
    add(
        year,
        "resized",
        solid((32, 24)),
        voc_xml("resized.jpg", [("cat", (11, 11, 30, 30), 0)], size=(64, 48)),
    )
    add(year, "negative_image", solid(), voc_xml("negative_image.jpg", []))
    return year


def by_file(problems, name: str) -> list[str]:
    return [p.line() for p in problems if Path(p.file).name == name]


def test_voc_corpus_each_case_reported(voc: Path):
    records = read_records(voc, classes=["cat", "dog"])
    result = validate_records(records, decode=True)
    lines = records.problems
    assert any("unreadable or truncated" in ln for ln in by_file(lines, "trunc.jpg"))
    assert any("zero-byte file" in ln for ln in by_file(lines, "zero.jpg"))
    assert any("image file not found" in ln for ln in by_file(lines, "missing.jpg"))
    assert any("xml: malformed XML" in ln for ln in by_file(lines, "malformed.xml"))
    assert any(": size: no usable <size>" in ln for ln in by_file(lines, "nosize.xml"))
    assert any("object[1].bndbox: zero or negative size" in ln for ln in by_file(lines, "negative.xml"))
    assert any(
        "object[1].bndbox.xmin: not a number" in ln or "object[1].bndbox: NaN" in ln
        for ln in by_file(lines, "nan.xml")
    )
    outside = by_file(lines, "outside.xml")
    assert any("object[0].bndbox" in ln and "clipped" in ln and ln.startswith("fixed") for ln in outside)
    assert any("object[1].bndbox" in ln and "outside" in ln and ln.startswith("skipped") for ln in outside)
    assert any(
        "object[1].name: class 'zebra' is not in the class list" in ln for ln in by_file(lines, "unknown.xml")
    )
    assert any("annotation: no Annotations/noxml.xml" in ln for ln in by_file(lines, "noxml.jpg"))
    assert any(
        "filename: '../../etc/passwd' escapes the dataset folder" in ln for ln in by_file(lines, "escape.xml")
    )
    assert any(
        "size: annotated 64x48 but resized.jpg is 32x24" in ln and "scaled" in ln
        for ln in by_file(lines, "resized.xml")
    )
    kept = {Path(r.file).stem: r for r in records.images}
    assert set(kept) == {
        "good",
        "rgba",
        "cmyk",
        "gray16",
        "gray",
        "palette",
        "nosize",
        "negative",
        "nan",
        "outside",
        "unknown",
        "resized",
        "negative_image",
    }
    assert (kept["nosize"].width, kept["nosize"].height) == (64, 48)
    np.testing.assert_allclose(kept["outside"].boxes, [[49, 39, 64, 48]])
    np.testing.assert_allclose(kept["resized"].boxes, [[5, 5, 15, 15]])  # VOC (11..30) → (10, 30) px, halved
    assert kept["good"].difficult.tolist() == [False, True]
    assert (
        result.negatives == 1 and result.images_skipped == 6
    )  # trunc, zero, missing, malformed, noxml, escape
    assert (
        result.boxes_skipped == 4 and result.boxes_fixed == 1
    )  # skipped: negative, nan, zebra, outside[1]; fixed: outside[0]
    for problem in lines:
        assert "\n" not in problem.line() and problem.file and problem.field


def test_load_dataset_skips_without_decoding_and_prints_counts(voc: Path, capsys):
    ds = load_dataset(voc, classes="cat,dog")
    err = capsys.readouterr().err
    assert all(Path(r.file).name != "trunc.jpg" for r in ds.records.images)
    # Caught by the end-of-file test (no full decode of good images); reported in the load-time counts.
    assert any("trunc.jpg: file: unreadable or truncated" in p.line() for p in ds.records.problems)
    assert "skipped 4 boxes and 6 images" in err
    assert "skipped" in err and "images" in err and "more — run `detlab check" in err
    assert len(ds) == 13
    names = [Path(r.file).stem for r in ds.records.images]
    for stem in ("rgba", "cmyk", "gray16", "gray", "palette"):
        image, target = ds[names.index(stem)]
        assert image.shape == (3, 48, 64) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
    cmyk, _ = ds[names.index("cmyk")]
    assert cmyk[0].mean() > 0.85 and cmyk[1].mean() < 0.15
    rgba, _ = ds[names.index("rgba")]
    assert abs(rgba[0].mean().item() - RED[0] / 255) < 0.01
    g16, _ = ds[names.index("gray16")]
    assert abs(g16[0, 0, 0].item() - 32768 / 65535) < 1e-4 and g16[1, 0, 63].item() == 1.0


def exif_jpeg(path: Path, raw: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw.save(path, quality=95, exif=exif.tobytes())


def test_exif_rotated_boxes_land_on_the_object(tmp_path: Path):
    year = tmp_path / "VOCexif"
    (year / "Annotations").mkdir(parents=True)
    (year / "JPEGImages").mkdir()
    # Raw frame 60x40 with a red block at columns 5..19, rows 10..29; orientation 6 shows it turned 90° clockwise.
    raw = solid((60, 40))
    raw.paste(RED, (5, 10, 20, 30))
    exif_jpeg(year / "JPEGImages" / "raw.jpg", raw, 6)
    (year / "Annotations" / "raw.xml").write_text(
        voc_xml("raw.jpg", [("obj", (6, 11, 20, 30), 0)], size=(60, 40))
    )
    # Displayed frame 40x60 annotated as displayed; stored turned so that orientation 8 restores it.
    shown = solid((40, 60))
    shown.paste(RED, (22, 35, 38, 55))
    exif_jpeg(year / "JPEGImages" / "shown.jpg", shown.transpose(Image.Transpose.ROTATE_270), 8)
    (year / "Annotations" / "shown.xml").write_text(
        voc_xml("shown.jpg", [("obj", (23, 36, 38, 55), 0)], size=(40, 60))
    )
    ds = load_dataset(year)
    assert any("raw frame of an EXIF-rotated image (orientation 6)" in p.line() for p in ds.records.problems)
    for i in range(2):
        image, target = ds[i]
        assert image.shape == (3, 60, 40)
        x1, y1, x2, y2 = target["boxes"][0].round().int().tolist()
        inside = image[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
        assert inside[0].mean() > 0.8 and inside[2].mean() < 0.2, (i, target["boxes"])
        ring = image[:, max(y1 - 3, 0), x1:x2]
        assert ring[2].mean() > 0.7  # just outside the box is background
    np.testing.assert_allclose(ds[0][1]["boxes"][0].tolist(), [10, 5, 30, 20])  # (H - y, x) of the raw box


def test_coco_corpus(tmp_path: Path):
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        solid().save(tmp_path / "images" / name)
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 1, "file_name": "b.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "../secret.jpg", "width": 64, "height": 48},
            {"id": 3, "file_name": "b.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 10], "iscrowd": 1},
            {"id": 7, "image_id": 3, "category_id": 5, "bbox": [1, 2, 10, 10]},
            {"id": 8, "image_id": 3, "category_id": 5, "bbox": [1, 2, 10]},
            {"id": 9, "image_id": 42, "category_id": 5, "bbox": [1, 2, 3, 4]},
            {"id": 10, "image_id": 3, "category_id": 9, "bbox": [1, 2, 3, 4]},
            {"id": 11, "image_id": 3, "category_id": 5, "bbox": [1, 2, None, 4]},
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 6, "name": "empty"}],
    }
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(data))
    records = read_records(path)
    validate_records(records)
    lines = [p.line() for p in records.problems]
    expect = [
        "images[id=1].id: duplicate image id",
        "annotations[id=7].id: annotation id used 2 times",
        "annotations[id=8].bbox: needs 4 numbers [x, y, w, h], got 3",
        "images[id=2].file_name: '../secret.jpg' escapes",
        "annotations[id=9].image_id: no image with id 42",
        "annotations[id=10].category_id: no category with id 9",
        "categories[id=6]: category 'empty' has no boxes",
        "annotations[id=11].bbox: NaN",
    ]
    for text in expect:
        assert any(text in ln and ln.count(str(path)) == 1 for ln in lines), (text, lines)
    assert records.class_names == ["cat"] and records.source_ids == [5]
    assert [r.image_id for r in records.images] == [1, 3]
    assert records.images[0].iscrowd.tolist() == [True]


def test_yolo_corpus(tmp_path: Path):
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    (tmp_path / "data.yaml").write_text("names: [cat, dog]\n")
    for stem in ("ok", "four", "range", "empty", "nolabel"):
        solid((100, 50)).save(tmp_path / "images" / f"{stem}.jpg")
    (tmp_path / "labels" / "ok.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (tmp_path / "labels" / "four.txt").write_text("0 0.5 0.5 0.2\n0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "range.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "empty.txt").write_text("")
    records = read_records(tmp_path)
    result = validate_records(records)
    lines = [p.line() for p in records.problems]
    assert any("four.txt: line 1: needs 5 numbers 'class cx cy w h', got 4" in ln for ln in lines)
    assert any("range.txt: line 1.class: class index 7 out of range 0..1" in ln for ln in lines)
    assert any(
        "nolabel.jpg: labels: no label file nolabel.txt" in ln and ln.startswith("info") for ln in lines
    )
    recs = {Path(r.file).stem: r for r in records.images}
    np.testing.assert_allclose(recs["ok"].boxes, [[40, 15, 60, 35]], atol=1e-4)  # hand-computed: 100x50 image
    assert recs["ok"].labels.tolist() == [1] and recs["four"].num_boxes == 1
    assert result.negatives == 3  # range (its only box skipped), empty, nolabel


def test_cli_check_and_errors_are_one_line(voc: Path, tmp_path: Path, capsys):
    assert main(["check", str(voc), "--classes", "cat,dog"]) == 0
    out = capsys.readouterr().out
    assert "zero-byte file" in out and "images: 13 usable" in out and "verdict: usable" in out
    assert "COCO sizes:" in out and "box size histogram" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    assert main(["check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"detlab: {bad}: line 1: invalid JSON") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err + captured.out
    assert main(["check", str(tmp_path / "nowhere")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["check", f"{voc}:nosplit"]) == 1
    assert "split 'nosplit' not found" in capsys.readouterr().err


def test_cli_check_exit_1_when_unusable(tmp_path: Path, capsys):
    year = tmp_path / "VOCempty"
    (year / "Annotations").mkdir(parents=True)
    (year / "JPEGImages").mkdir()
    add(year, "zero", None, voc_xml("zero.jpg", [("cat", (1, 1, 5, 5), 0)]))
    (year / "JPEGImages" / "zero.jpg").write_bytes(b"")
    assert main(["check", str(year)]) == 1
    out = capsys.readouterr().out
    assert "zero.jpg: file: zero-byte file" in out and "NOT usable" in out
    with pytest.raises(DataError, match="no usable images"):
        load_dataset(year)


def test_a_repeated_box_in_a_real_export_is_warned_and_kept(chess):
    """chess train (a Roboflow export) annotates one white rook twice with the same coordinates."""
    source = json.loads((chess / "train" / "_annotations.coco.json").read_text())
    seen, repeats = {}, []
    for a in source["annotations"]:  # the duplicates, found from the file itself
        key = (a["image_id"], a["category_id"], *a["bbox"])
        if key in seen:
            repeats.append((seen[key], a["id"]))
        seen.setdefault(key, a["id"])
    records = read_records(str(chess / "train"))
    result = validate_records(records)
    warned = [p for p in records.problems if "duplicate" in p.message]
    assert [(p.field, p.severity) for p in warned] == [
        (f"annotations[id={b}].bbox", "warning") for _, b in repeats
    ]
    assert all(f"annotations[id={a}]" in p.message for (a, _), p in zip(repeats, warned))
    assert records.num_boxes == len(source["annotations"])  # kept as written, as pycocotools counts them
    assert result.severity["warning"] == len(repeats) == 1 and not result.unusable
