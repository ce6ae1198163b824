"""COCO files as they come from other tools: encodings, string ids, names for ids, repeated names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detlab.cli import main
from detlab.data.formats import read_records
from detlab.errors import DataError


def coco(images=None, annotations=None, categories=None) -> dict:
    return {
        "images": images
        if images is not None
        else [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": annotations
        if annotations is not None
        else [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10]}],
        "categories": categories if categories is not None else [{"id": 3, "name": "café"}],
    }


def write(tmp_path: Path, data: dict, encoding: str = "utf-8") -> Path:
    path = tmp_path / "instances_train.json"
    path.write_bytes(json.dumps(data, ensure_ascii=False).encode(encoding))
    return path


def lines(path: Path) -> list[str]:
    return [p.line() for p in read_records(path).problems]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_a_file_with_a_byte_order_mark_is_decoded(tmp_path: Path, encoding: str):
    records = read_records(write(tmp_path, coco(), encoding))
    assert records.class_names == ["café"] and records.num_boxes == 1 and records.problems == []


def test_latin1_json_is_one_line_naming_file_and_encoding(tmp_path: Path, capsys):
    path = write(tmp_path, coco(), "latin-1")
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value) == (
        f"{path}: not UTF-8 text (byte 0xe9 at offset {offset} cannot be decoded) — "
        "JSON must be UTF-8: re-save the file as UTF-8"
    )
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"detlab: {err.value}\n" and "Traceback" not in captured.err + captured.out


def test_string_image_ids_are_reported_per_field(tmp_path: Path):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2, 3)]
    images.append({"id": "12", "file_name": "12.jpg", "width": 64, "height": 48})
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10]},
        {"id": 2, "image_id": "2", "category_id": 3, "bbox": [1, 2, 10, 10]},
    ]
    path = write(tmp_path, coco(images, anns))
    assert lines(path) == [
        f"skipped: {path}: images[3].id: '12' is a string — COCO ids are integers: write it without quotes — image skipped",
        f"skipped: {path}: annotations[id=2].image_id: '2' is a string — COCO ids are integers: write it without quotes"
        " — box skipped",
    ]


def test_string_annotation_id_is_reported_as_id_not_bbox(tmp_path: Path):
    anns = [{"id": "a1", "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10]}]
    path = write(tmp_path, coco(annotations=anns))
    assert lines(path) == [
        f"skipped: {path}: annotations[0].id: 'a1' is a string — COCO ids are integers: "
        "write it without quotes — box skipped",
        f"info: {path}: categories[id=3]: category 'café' has no boxes — not made a class "
        "(pass --classes to keep it)",
    ]


def test_category_name_as_category_id_is_reported_with_its_id(tmp_path: Path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": "café", "bbox": [1, 2, 10, 10]},
        {"id": 3, "image_id": 1, "category_id": "dog", "bbox": [1, 2, 10, 10]},
    ]
    path = write(tmp_path, coco(annotations=anns))
    assert lines(path) == [
        f"skipped: {path}: annotations[id=2].category_id: 'café' is a category name — give the category's id, 3 — box skipped",
        f"skipped: {path}: annotations[id=3].category_id: 'dog' is a string — COCO ids are integers: "
        "write it without quotes — box skipped",
    ]


def test_a_non_integer_category_id_in_the_category_list_is_one_line(tmp_path: Path):
    path = write(tmp_path, coco(categories=[{"id": "x", "name": "cat"}]))
    with pytest.raises(DataError) as err:
        read_records(path)
    assert (
        str(err.value)
        == f"{path}: categories[0].id: 'x' is a string — COCO ids are integers: write it without quotes"
    )


def test_two_categories_with_one_name_are_warned_and_read_as_one_class(tmp_path: Path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10]},
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 10]},
    ]
    cats = [{"id": 7, "name": "cat"}, {"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}]
    path = write(tmp_path, coco(annotations=anns, categories=cats))
    records = read_records(path)
    assert [p.line() for p in records.problems] == [
        f"warning: {path}: categories[id=7].name: 'cat' is also the name of category 3 — rename one — "
        "the boxes of both are read as one class 'cat'"
    ]
    assert records.class_names == ["cat", "dog"] and records.source_ids == [3, 5]
    assert records.images[0].labels.tolist() == [0, 0, 1]
    given = read_records(path, classes=["dog", "cat"])
    assert given.source_ids == [5, 3] and given.images[0].labels.tolist() == [1, 1, 0]


@pytest.mark.parametrize(
    ("layout", "asked", "message"),
    [
        ("roboflow", "val", "this folder holds test, train, valid; did you mean {root}:valid?"),
        ("roboflow", "trian", "this folder holds test, train, valid; did you mean {root}:train?"),
        ("coco2017", "val", "this folder holds train2017, val2017; did you mean {root}:val2017?"),
        ("coco2017", "minival", "this folder holds train2017, val2017; use {root}:train2017"),
    ],
)
def test_a_split_the_coco_folder_does_not_hold_is_named_with_the_ones_it_does(
    tmp_path: Path, capsys, layout, asked, message
):
    """Roboflow's train/valid/test folders and COCO's annotations/instances_<split>.json: a wrong split
    name is that, not an "unknown dataset layout"."""
    root = tmp_path / layout
    if layout == "roboflow":
        for split in ("train", "valid", "test"):
            (root / split).mkdir(parents=True)
            (root / split / "_annotations.coco.json").write_text(json.dumps(coco()))
    else:
        (root / "annotations").mkdir(parents=True)
        for split in ("train2017", "val2017"):
            (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco()))
    with pytest.raises(DataError) as info:
        read_records(f"{root}:{asked}")
    assert str(info.value) == f"{root}: no COCO split {asked!r} — " + message.format(root=root)
    assert main(["check", f"{root}:{asked}"]) == 1  # unusable data
    assert capsys.readouterr().err == f"detlab: {info.value}\n"
