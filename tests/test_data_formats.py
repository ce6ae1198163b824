"""Format readers on the real datasets and on small written layouts; index speed; dataset contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from detlab.cli import main
from detlab.data.dataset import DetectionDataset, collate, exif_boxes, load_dataset
from detlab.data.formats import detect_format, read_records, split_spec
from detlab.data.formats.coco import read_coco

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bccd_check_cli(bccd: Path, capsys):
    assert main(["check", str(bccd)]) == 0
    out = capsys.readouterr().out
    assert "images: 364 usable" in out and "boxes: 4886 usable of 4888" in out and "classes: 3" in out
    assert "BloodImage_00338.xml: object[12].bndbox: zero or negative size" in out
    assert "BloodImage_00343.xml: object[3].bndbox: zero or negative size" in out
    for name, n in (("Platelets", 361), ("RBC", 4153), ("WBC", 372)):  # 4155 RBC in the files, 2 zero-size
        assert any(line.split() == [name, str(n)] for line in out.splitlines())


def test_bccd_splits_and_joins(bccd: Path):
    assert len(read_records(bccd, split="train").images) == 205
    assert len(read_records(f"{bccd}:val").images) == 87
    joined = read_records(f"{bccd}:train+{bccd}:val")
    assert len(joined.images) == 292 and len({r.image_id for r in joined.images}) == 292
    assert joined.class_names == ["Platelets", "RBC", "WBC"]
    first = read_records(bccd, split="test").images[0]
    assert first.boxes.dtype == np.float32 and first.labels.dtype == np.int64


def test_voc_coordinates_shift_by_one(bccd: Path):
    rec = next(r for r in read_records(bccd).images if r.file.name == "BloodImage_00338.jpg")
    # first object in the XML: xmin 453 ymin 81 xmax 555 ymax 182 (1-based inclusive)
    np.testing.assert_array_equal(rec.boxes[0], [452, 80, 555, 182])


def test_chess_check_cli(chess: Path, capsys):
    assert main(["check", str(chess / "train")]) == 0
    out = capsys.readouterr().out
    assert "categories[id=0]: category 'pieces' has no boxes" in out
    assert "classes: 13" in out and "bishop" in out and "only 1 box" in out
    records = read_records(chess / "train")
    assert records.class_names[:3] == ["bishop", "black-bishop", "black-king"] and records.source_ids == list(
        range(1, 14)
    )
    valid = read_records(f"{chess}:valid")
    assert valid.split == "valid" and len(valid.images) == 58 and valid.num_classes == 12
    given = read_records(f"{chess}:valid", classes=read_records(chess / "train").class_names)
    assert given.class_names[0] == "bishop" and given.num_boxes == 386  # train's class map, no box lost


def test_chess_matches_pycocotools(chess: Path):
    from pycocotools.coco import COCO

    path = chess / "train" / "_annotations.coco.json"
    ref = COCO(str(path))
    records = read_coco(path)
    cat_to_label = {c: i for i, c in enumerate(records.source_ids)}
    for rec in records.images[:40]:
        anns = ref.loadAnns(ref.getAnnIds(imgIds=[rec.image_id]))
        xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        np.testing.assert_allclose(rec.boxes, np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], atol=1e-4)
        assert rec.labels.tolist() == [cat_to_label[a["category_id"]] for a in anns]


def test_class_list_given_keeps_order_and_reports_unknown(bccd: Path):
    records = read_records(bccd, split="val", classes="WBC,RBC")
    assert records.class_names == ["WBC", "RBC"]
    skipped = [p for p in records.problems if "'Platelets' is not in the class list" in p.message]
    assert skipped and all(p.severity == "skipped" and p.field.endswith(".name") for p in skipped)


def test_coco_folder_layouts_and_images_arg(tmp_path: Path, chess: Path):
    data = json.loads((chess / "valid" / "_annotations.coco.json").read_text())
    data["images"] = data["images"][:3]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(data))
    assert detect_format(tmp_path) == "coco"
    records = read_records(tmp_path, split="val", images=chess / "valid")
    assert len(records.images) == 3 and all(r.file.is_file() for r in records.images)
    (tmp_path / "images" / "val").mkdir(parents=True)
    for im in data["images"]:
        (tmp_path / "images" / "val" / im["file_name"]).symlink_to(chess / "valid" / im["file_name"])
    found = read_records(f"{tmp_path}:val")
    assert found.images[0].file.parent == tmp_path / "images" / "val"


def test_folder_and_vocdevkit_layouts(tmp_path: Path, bccd: Path):
    imgs, xmls = tmp_path / "set" / "pictures", tmp_path / "set" / "labels_xml"
    imgs.mkdir(parents=True)
    xmls.mkdir()
    for stem in ("BloodImage_00000", "BloodImage_00001"):
        (imgs / f"{stem}.jpg").symlink_to(bccd / "JPEGImages" / f"{stem}.jpg")
        (xmls / f"{stem}.xml").symlink_to(bccd / "Annotations" / f"{stem}.xml")
    assert detect_format(imgs) == "folder"
    records = read_records(imgs)
    assert records.format == "folder" and len(records.images) == 2 and records.num_boxes > 10
    devkit = tmp_path / "VOCdevkit"
    devkit.mkdir()
    (devkit / "VOC2007").symlink_to(bccd)
    assert detect_format(devkit) == "vocdevkit"
    assert len(read_records(devkit, split="val").images) == 87


def test_split_spec():
    assert split_spec("data/VOC2007:trainval") == (Path("data/VOC2007"), "trainval")
    assert split_spec("data/VOC2007") == (Path("data/VOC2007"), None)


def test_exif_box_maps_match_pil():
    from PIL import Image, ImageOps

    raw = np.zeros((30, 50), np.uint8)  # H=30, W=50
    raw[5:12, 20:41] = 255  # box x 20..41, y 5..12
    box = np.array([[20, 5, 41, 12]], np.float32)
    for orientation in range(1, 9):
        im = Image.fromarray(raw)
        exif = im.getexif()
        exif[0x0112] = orientation
        im.info["exif"] = exif.tobytes()
        shown = np.asarray(ImageOps.exif_transpose(im))
        ys, xs = np.nonzero(shown)
        expect = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_array_equal(
            exif_boxes(box, orientation, 50, 30)[0], expect, err_msg=str(orientation)
        )


def test_dataset_contract_and_collate(bccd: Path):
    ds = load_dataset(bccd, split="val")
    assert isinstance(ds, DetectionDataset) and ds.num_classes == 3 and ds.source_ids == ds.class_names
    image, target = ds[0]
    assert type(image) is torch.Tensor and image.shape == (3, 480, 640) and image.dtype == torch.float32
    assert type(target["boxes"]) is torch.Tensor and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64 and target["difficult"].dtype == torch.bool
    assert target["orig_size"] == (480, 640) and isinstance(target["image_id"], int)
    np.testing.assert_array_equal(target["boxes"].numpy(), ds.records.images[0].boxes)
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == len(targets) == 2
    assert not any(
        isinstance(v, np.ndarray) and v.ndim >= 2 and v.size > 1000
        for r in ds.records.images
        for v in vars(r).values()
    )


def test_index_10k_coco_reads_every_image_and_box(tmp_path: Path):
    """The benchmark's synthetic 10k-image file reads whole; its speed is measured in benchmarks/index_speed.py."""
    from index_speed import write_synthetic_coco

    path = tmp_path / "instances_train.json"
    n = write_synthetic_coco(path, 10_000)
    records = read_coco(path, split="train", images=tmp_path)
    assert len(records.images) == 10_000 and records.num_boxes == n
