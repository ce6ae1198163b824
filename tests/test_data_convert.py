"""Conversion round trips on the real datasets, flags kept, and the CLI; synthetic data; drawing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detlab.cli import main
from detlab.data.checks import validate_records
from detlab.data.convert import convert
from detlab.data.formats import read_records
from detlab.data.synthetic import CLASSES, write_shapes_dataset
from detlab.report.draw import class_colour, draw_boxes


def by_name(records):
    return {Path(r.file).name: r for r in records.images}


def assert_same(a, b, atol=1e-3):
    assert a.class_names == b.class_names
    ra, rb = by_name(a), by_name(b)
    assert ra.keys() == rb.keys()
    for name, x in ra.items():
        y = rb[name]
        assert (x.width, x.height) == (y.width, y.height), name
        assert x.labels.tolist() == y.labels.tolist(), name
        assert x.difficult.tolist() == y.difficult.tolist() and x.iscrowd.tolist() == y.iscrowd.tolist(), name
        np.testing.assert_allclose(x.boxes, y.boxes, atol=atol, err_msg=name)


def load(spec, classes=None):
    records = read_records(spec, classes=classes)
    validate_records(records)
    return records


def test_voc_coco_voc_round_trip(bccd: Path, tmp_path: Path):
    json_path, src = convert(f"{bccd}:val", tmp_path / "coco", "coco")
    coco = load(json_path)
    assert_same(src, coco)
    cats = json.loads(json_path.read_text())["categories"]
    assert [c["name"] for c in cats] == ["Platelets", "RBC", "WBC"] and [c["id"] for c in cats] == [1, 2, 3]
    out, _ = convert(json_path, tmp_path / "voc", "voc")
    back = load(f"{out}:val")
    assert_same(src, back, atol=0)
    stem = Path(src.images[0].file).stem
    original = (bccd / "Annotations" / f"{stem}.xml").read_text()
    written = (out / "Annotations" / f"{stem}.xml").read_text()
    tags = [
        f"<{t}>{int(v)}</{t}>"
        for t, v in zip(("xmin", "ymin", "xmax", "ymax"), src.images[0].boxes[0] + [1, 1, 0, 0])
    ]
    assert all(tag in original and tag in written for tag in tags), tags  # the file's own integers come back
    image = out / "JPEGImages" / f"{stem}.jpg"
    assert image.read_bytes() == (bccd / "JPEGImages" / f"{stem}.jpg").read_bytes()


def test_coco_yolo_coco_round_trip(chess: Path, tmp_path: Path):
    yml, src = convert(chess / "train", tmp_path / "yolo", "yolo")
    convert(f"{chess}:valid", tmp_path / "yolo", "yolo", classes=src.class_names)
    assert "val" in (tmp_path / "yolo" / "data.yaml").read_text()
    yolo = load(tmp_path / "yolo")
    assert_same(src, yolo)
    assert len(load(f"{tmp_path / 'yolo'}:val").images) == 58
    json_path, _ = convert(tmp_path / "yolo", tmp_path / "coco.json", "coco")
    # the YOLO names keep chess's box-less 'pieces' category, which the COCO reader leaves out unless asked
    assert src.class_names[0] == "pieces" and yolo.class_names == src.class_names
    assert_same(src, load(json_path, classes=src.class_names))


def test_difficult_and_iscrowd_survive_coco_and_voc(tmp_path: Path):
    year = write_shapes_dataset(tmp_path / "src", num_train=3, num_val=1, size=64, seed=1)
    records = load(year)
    records.images[0].difficult[:] = True
    records.images[1].iscrowd[:] = True
    from detlab.data.convert import write_coco, write_voc

    json_path = write_coco(records, tmp_path / "c", "all")
    ann = json.loads(json_path.read_text())["annotations"][0]
    assert ann["difficult"] == 1 and ann["iscrowd"] == 0
    coco = load(json_path)
    assert_same(records, coco)
    voc = write_voc(coco, tmp_path / "v", "all")
    assert_same(records, load(voc))


def test_convert_cli(bccd: Path, tmp_path: Path, capsys):
    assert main(["convert", str(bccd), str(tmp_path / "y"), "--to", "yolo", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "wrote yolo" in out and "72 images" in out
    assert (tmp_path / "y" / "labels" / "test").is_dir()
    assert main(["convert", str(bccd), str(tmp_path / "z"), "--to", "yolo", "--split", "nope"]) == 1
    assert "split 'nope' not found" in capsys.readouterr().err


def test_shapes_dataset_deterministic_and_valid(tmp_path: Path):
    a = write_shapes_dataset(tmp_path / "a", num_train=6, num_val=2, size=96, seed=3)
    b = write_shapes_dataset(tmp_path / "b", num_train=6, num_val=2, size=96, seed=3)
    for f in sorted((a / "Annotations").iterdir()):
        assert f.read_bytes() == (b / "Annotations" / f.name).read_bytes()
        assert (a / "JPEGImages" / f"{f.stem}.jpg").read_bytes() == (
            b / "JPEGImages" / f"{f.stem}.jpg"
        ).read_bytes()
    records = load(f"{a}:train")
    assert records.class_names == sorted(CLASSES) and len(records.images) == 6 and records.num_boxes >= 6
    assert not [p for p in records.problems if p.severity != "info"]
    assert len(read_records(f"{a}:trainval").images) == 8
    # The box is tight on the drawn shape: a square's box is filled with one colour off the background.
    for rec in records.images:
        image = np.asarray(Image.open(rec.file).convert("RGB"), np.float32)
        for box, label in zip(rec.boxes, rec.labels):
            if records.class_names[label] == "square" and box[2] - box[0] >= 12:
                x1, y1, x2, y2 = box.astype(int)
                patch = image[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
                assert patch.std(axis=(0, 1)).max() < 12  # one solid colour (JPEG noise only)


def test_draw_boxes_colours_and_shape():
    image = torch.zeros(3, 40, 60)
    out = draw_boxes(
        image,
        torch.tensor([[5.0, 5, 30, 30]]),
        torch.tensor([2]),
        ["a", "b", "c"],
        scores=torch.tensor([0.9]),
    )
    assert out.dtype == torch.uint8 and out.shape == (3, 40, 60)
    assert tuple(out[:, 20, 5].tolist()) == class_colour(2)  # left edge drawn in the class colour
    assert class_colour(0) != class_colour(1)
    assert torch.equal(
        draw_boxes(image, np.zeros((0, 4)), [], ["a"]), torch.zeros(3, 40, 60, dtype=torch.uint8)
    )


def test_show_cli(tmp_path: Path, capsys):
    year = write_shapes_dataset(tmp_path / "d", num_train=3, num_val=1, size=64)
    assert main(["show", str(year), "--out", str(tmp_path / "show"), "--n", "3"]) == 0
    files = sorted(p.name for p in (tmp_path / "show").glob("*.png"))
    assert "grid.png" in files and len(files) == 4
    grid = Image.open(tmp_path / "show" / "grid.png")
    assert grid.size[0] > 3 * 300
