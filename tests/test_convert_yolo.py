"""YOLO exports that Ultralytics' dataset conventions load as written: train/val/test keys, a
``path`` that holds from any working directory, and class indices in the source's category order.

The source annotations are read here with ``json`` (not through detlab's reader) and every written
label line is checked against them: the class index names the box's own category, and the index is
the category's rank in id order, as Ultralytics' COCO labels number them (COCO-80: ids 1..90 → 0..79).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from detlab.data.convert import convert, yolo_split_key


def ultralytics_dirs(yml: Path) -> dict[str, list[Path]]:
    """Image folders of each split, by Ultralytics' documented rule: the root is ``path`` (else the
    YAML's folder); a relative root is taken from the working directory; split entries are joined
    to the root and resolved."""
    data = yaml.safe_load(yml.read_text())
    root = Path(data.get("path") or yml.parent)
    if not root.is_absolute():
        root = Path.cwd() / root
    dirs = {}
    for key in ("train", "val", "test"):
        if data.get(key):
            entries = data[key] if isinstance(data[key], list) else [data[key]]
            dirs[key] = [(root / e).resolve() for e in entries]
    return dirs


def label_file(image: Path) -> Path:
    """Ultralytics' image → label path: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``."""
    head, _, tail = str(image).rpartition("/images/")
    return Path(f"{head}/labels/{tail}").with_suffix(".txt")


def source_boxes(coco: dict) -> dict[str, list[tuple[str, list[float]]]]:
    """file name → [(category name, xywh px)] from a COCO dict."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, list] = {f: [] for f in files.values()}
    for a in coco["annotations"]:
        out[files[a["image_id"]]].append((names[a["category_id"]], [float(v) for v in a["bbox"]]))
    return out


def written_boxes(images: list[Path], names: list[str]) -> dict[str, list[tuple[str, list[float]]]]:
    """file name → [(class name, xywh px)] from YOLO label files."""
    out = {}
    for im in images:
        w, h = Image.open(im).size
        boxes = []
        for line in label_file(im).read_text().splitlines():
            c, cx, cy, bw, bh = line.split()
            cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
            boxes.append((names[int(c)], [cx - bw / 2, cy - bh / 2, bw, bh]))
        out[im.name] = boxes
    return out


def same_boxes(written: list, source: list, atol: float = 1e-3) -> bool:
    """One-to-one: every source box has a written box of its category within ``atol`` px."""
    left = list(written)
    for name, xywh in source:
        hit = next(
            (
                k
                for k, (n, b) in enumerate(left)
                if n == name and max(map(abs, (np.subtract(b, xywh)))) <= atol
            ),
            None,
        )
        if hit is None:
            return False
        left.pop(hit)
    return not left


def check_export(yml: Path, sources: dict[str, dict], elsewhere: Path, monkeypatch) -> dict:
    """Keys, paths from another working directory, and every box's class against its source split."""
    monkeypatch.chdir(elsewhere)
    data = yaml.safe_load(yml.read_text())
    assert {"train", "val"} <= set(data) and data["nc"] == len(data["names"])
    dirs = ultralytics_dirs(yml)
    for key, coco in sources.items():
        (folder,) = dirs[key]
        assert folder.is_dir(), f"{key}: {folder} does not resolve from {elsewhere}"
        images = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
        assert len(images) == len(coco["images"])
        written, source = written_boxes(images, data["names"]), source_boxes(coco)
        assert sorted(written) == sorted(source)
        bad = [f for f in source if not same_boxes(written[f], source[f])]
        assert not bad, (
            f"{key}: {len(bad)} images whose boxes or classes differ from the source, e.g. {bad[0]}"
        )
    return data


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "elsewhere"


def test_chess_export_loads_with_ultralytics_conventions(chess, tmp_path, elsewhere, monkeypatch, capsys):
    dst = tmp_path / "yolo"
    for split in ("train", "valid", "test"):
        convert(f"{chess}:{split}", dst, "yolo")
    sources = {
        key: json.loads((chess / split / "_annotations.coco.json").read_text())
        for key, split in (("train", "train"), ("val", "valid"), ("test", "test"))
    }
    data = check_export(dst / "data.yaml", sources, elsewhere, monkeypatch)
    assert list(data)[:4] == ["path", "train", "val", "test"]
    assert Path(data["path"]) == dst.resolve()
    # the categories in id order, 'pieces' (no boxes: a Roboflow supercategory) and 'bishop' (none
    # outside train) included, so all three splits share one class list and one numbering
    by_id = sorted(sources["train"]["categories"], key=lambda c: c["id"])
    assert data["names"] == [c["name"] for c in by_id]
    assert data["category_ids"] == {i: c["id"] for i, c in enumerate(by_id)}
    err = capsys.readouterr().err
    assert "categories without boxes kept as YOLO class names (pieces, bishop)" in err


def interleaved_source(chess: Path, tmp_path: Path) -> tuple[Path, dict]:
    """chess train as a COCO file whose categories sit at odd ids with unused ones between them
    (ids 1..2C), as COCO-80's ids 1..90 leave gaps and list categories no split uses."""
    coco = json.loads((chess / "train" / "_annotations.coco.json").read_text())
    new_id = {c["id"]: 2 * k + 1 for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    cats = []
    for c in sorted(coco["categories"], key=lambda c: c["id"]):
        cats.append({**c, "id": new_id[c["id"]]})
        cats.append({"id": new_id[c["id"]] + 1, "name": f"unused-{len(cats)}", "supercategory": "none"})
    coco["categories"] = cats
    for a in coco["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    path = tmp_path / "interleaved.json"
    path.write_text(json.dumps(coco))
    return path, coco


def test_empty_categories_keep_their_indices(chess, tmp_path, elsewhere, monkeypatch):
    src, coco = interleaved_source(chess, tmp_path)
    yml, records = convert(src, tmp_path / "yolo", "yolo", images=str(chess / "train"))
    assert len(records.class_names) == len(coco["categories"]) == 28  # chess's 14 and 14 unused
    convert(src, tmp_path / "yolo", "yolo", split="val", images=str(chess / "train"))  # Ultralytics needs val
    data = check_export(yml, {"train": coco, "val": coco}, elsewhere, monkeypatch)
    # index = rank of the category id (the COCO-80 rule), so an unused category between two used
    # ones keeps the later one's index where the source's order puts it
    assert data["names"] == [c["name"] for c in coco["categories"]]
    assert data["category_ids"] == {i: c["id"] for i, c in enumerate(coco["categories"])}
    used = Counter(
        int(line.split()[0])
        for p in (tmp_path / "yolo" / "labels" / "train").glob("*.txt")
        for line in p.read_text().splitlines()
    )
    assert all(i % 2 == 0 for i in used) and 26 in used  # white-rook: id 27, index 26


def test_a_class_list_that_moves_indices_is_warned_and_mapped(chess, tmp_path, capsys):
    src, coco = interleaved_source(chess, tmp_path)
    used = [c["name"] for c in coco["categories"] if not c["name"].startswith("unused")]
    order = used[::-1]
    yml, records = convert(src, tmp_path / "yolo", "yolo", images=str(chess / "train"), classes=order)
    err = capsys.readouterr().err
    assert "another index than the source's order" in err and "category_ids" in err
    data = yaml.safe_load(yml.read_text())
    assert data["names"] == order
    cat_id = {c["name"]: c["id"] for c in coco["categories"]}
    # the written map sends each index to the category its boxes came from
    assert data["category_ids"] == {i: cat_id[n] for i, n in enumerate(order)}


@pytest.mark.parametrize(
    ("split", "key"),
    [
        ("train2017", "train"),
        ("trainval", "train"),
        ("val2017", "val"),
        ("valid", "val"),
        ("validation", "val"),
        ("test", "test"),
        ("test-dev", "test"),
        ("extra", "extra"),
    ],
)
def test_split_keys(split, key):
    assert yolo_split_key(split) == key


def test_voc_trainval_export_lists_extra_splits(bccd, tmp_path, elsewhere, monkeypatch, capsys):
    dst = tmp_path / "y"
    convert(f"{bccd}:trainval", dst, "yolo")
    assert "no val split yet" in capsys.readouterr().err
    convert(f"{bccd}:test", dst, "yolo")
    data = yaml.safe_load((dst / "data.yaml").read_text())
    assert data["train"] == "images/trainval" and data["test"] == "images/test" and "val" not in data
    convert(f"{bccd}:val", dst, "yolo")
    monkeypatch.chdir(elsewhere)
    dirs = ultralytics_dirs(dst / "data.yaml")
    counts = {k: len(list(d[0].glob("*.jpg"))) for k, d in dirs.items()}
    assert counts == {"train": 292, "val": 87, "test": 72}
    assert "category_ids" not in yaml.safe_load((dst / "data.yaml").read_text())  # VOC has names, no ids
