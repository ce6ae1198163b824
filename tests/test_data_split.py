"""Seeded, class-stratified splits: every class reaches val, the seed decides, no image is in two splits, and
the split files ``detlab split`` writes in each layout are read back by detlab's own readers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from detlab.cli import main
from detlab.data.formats import read_records
from detlab.data.records import ImageRecord, Records
from detlab.data.split import holdout, stratified_split
from detlab.errors import DataError


def classes_in(records: Records, idx: list[int]) -> set[int]:
    return {int(c) for i in idx for c in np.asarray(records.images[i].labels)}


def images_per_class(records: Records) -> dict[int, int]:
    counts: dict[int, int] = {}
    for r in records.images:
        for c in set(np.asarray(r.labels).tolist()):
            counts[c] = counts.get(c, 0) + 1
    return counts


def synthetic(label_sets: list[list[int]], names: list[str]) -> Records:
    images = [
        ImageRecord(
            i,
            Path(f"/data/{i}.jpg"),
            100,
            100,
            np.tile(np.float32([[1, 1, 20, 20]]), (len(ls), 1)),
            np.int64(ls),
            np.zeros(len(ls), bool),
            np.zeros(len(ls), bool),
        )
        for i, ls in enumerate(label_sets)
    ]
    return Records(images, names, names, "folder", Path("/data"))


def test_bccd_split_is_stratified_disjoint_complete_and_seeded(bccd):
    records = read_records(bccd)  # all 364 annotated images
    parts = stratified_split(records, 0.2, 0.1, seed=3)
    every = [i for idx in parts.values() for i in idx]
    assert sorted(every) == list(range(len(records.images)))  # each image in exactly one split
    n = len(records.images)
    assert abs(len(parts["val"]) - 0.2 * n) <= 1 and abs(len(parts["test"]) - 0.1 * n) <= 1
    for c, count in images_per_class(records).items():
        for s, share in (("val", 0.2), ("test", 0.1)):
            got = sum(c in set(records.images[i].labels.tolist()) for i in parts[s])
            assert abs(got - share * count) <= max(2, 0.05 * count), (c, s, got, count)
    assert stratified_split(records, 0.2, 0.1, seed=3) == parts
    assert stratified_split(records, 0.2, 0.1, seed=4) != parts


def test_rare_classes_reach_val_and_test_and_stay_in_train():
    # Class 1 in 2 images, class 2 in 3, class 3 in 3 images that all also hold class 2's rival 4.
    sets = (
        [[0]] * 30 + [[0, 1], [1]] + [[2], [2, 0], [2]] + [[3, 4], [3, 4], [3, 4, 0]] + [[4]] * 3 + [[]] * 4
    )
    records = synthetic(sets, ["a", "b", "c", "d", "e"])
    for seed in range(20):
        parts = stratified_split(records, 0.2, 0.15, seed)
        counts = images_per_class(records)
        assert all(c in classes_in(records, parts["val"]) for c, n in counts.items() if n >= 2), seed
        assert all(c in classes_in(records, parts["test"]) for c, n in counts.items() if n >= 3), seed
        assert classes_in(records, parts["train"]) == set(counts), seed
        assert sorted(i for idx in parts.values() for i in idx) == list(range(len(sets)))


def test_holdout_is_the_val_of_the_split_and_bad_shares_are_refused():
    records = synthetic([[0]] * 10 + [[1]] * 5, ["a", "b"])
    train, val = holdout(records, 0.2, seed=1)
    parts = stratified_split(records, 0.2, 0.0, seed=1)
    assert [r.image_id for r in val.images] == parts["val"] and len(train.images) + len(val.images) == 15
    with pytest.raises(Exception, match="--val"):
        stratified_split(records, 0.7, 0.3)


@pytest.fixture
def small_voc(bccd, tmp_path) -> Path:
    """A VOC year of the first 24 BCCD images, without ImageSets."""
    year = tmp_path / "VOC"
    (year / "Annotations").mkdir(parents=True)
    (year / "JPEGImages").mkdir()
    for xml in sorted((bccd / "Annotations").glob("*.xml"))[:24]:
        shutil.copy(xml, year / "Annotations")
        shutil.copy(bccd / "JPEGImages" / f"{xml.stem}.jpg", year / "JPEGImages")
    return year


def read_back(spec: str) -> set[str]:
    return {Path(r.file).name for r in read_records(spec).images}


def expected(spec: str, val: float, test: float, seed: int) -> dict[str, set[str]]:
    records = read_records(spec)
    parts = stratified_split(records, val, test, seed)
    return {s: {Path(records.images[i].file).name for i in idx} for s, idx in parts.items()}


def test_voc_split_files_are_read_back(small_voc, capsys):
    want = expected(str(small_voc), 0.25, 0.125, 7)
    assert main(["split", str(small_voc), "--val", "0.25", "--test", "0.125", "--seed", "7"]) == 0
    for s in ("train", "val", "test"):
        assert (small_voc / "ImageSets" / "Main" / f"{s}.txt").is_file()
        assert read_back(f"{small_voc}:{s}") == want[s]
    assert "split: train 15 / val 6 / test 3 images (seed 7)" in capsys.readouterr().err
    assert main(["split", str(small_voc), "--val", "0.25"]) == 1  # the files exist: one line, no traceback
    assert "already exists — pass --force" in capsys.readouterr().err


def test_folder_split_makes_data_val_work(small_voc, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (*(small_voc / "Annotations").iterdir(), *(small_voc / "JPEGImages").iterdir()):
        shutil.copy(f, flat)
    with pytest.raises(DataError, match="detlab split"):
        read_records(f"{flat}:val")
    want = expected(str(flat), 0.25, 0.0, 0)
    assert main(["split", str(flat), "--val", "0.25"]) == 0
    assert read_back(f"{flat}:val") == want["val"] and read_back(f"{flat}:train") == want["train"]
    assert not (flat / "test.txt").exists()


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_converted_split_files_are_read_back(small_voc, tmp_path, fmt):
    from detlab.data.convert import convert

    dst = tmp_path / fmt
    convert(str(small_voc), str(dst), fmt)
    src = read_records(dst)
    want = expected(str(dst), 0.25, 0.125, 1)
    assert main(["split", str(dst), "--val", "0.25", "--test", "0.125", "--seed", "1"]) == 0
    for s in ("train", "val", "test"):
        got = read_records(f"{dst}:{s}")
        assert {Path(r.file).name for r in got.images} == want[s]
        assert got.class_names == src.class_names
        boxes = {Path(r.file).name: r.boxes for r in src.images}
        assert all(np.array_equal(boxes[Path(r.file).name], r.boxes) for r in got.images)


def test_val_fraction_holds_out_a_stratified_val_when_no_split_exists(small_voc, tmp_path, capsys):
    from detlab.config import resolve
    from detlab.engine.train import load_train_val

    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (*(small_voc / "Annotations").iterdir(), *(small_voc / "JPEGImages").iterdir()):
        shutil.copy(f, flat)
    cfg = resolve(
        {"data": str(flat), "model": "fcos_effl0_fpn", "out": str(tmp_path / "run"), "val_fraction": 0.25}
    )
    train_ds, val_ds = load_train_val(cfg)
    want = expected(str(flat), 0.25, 0.0, cfg.seed)
    assert {Path(r.file).name for r in val_ds.records.images} == want["val"]
    assert {Path(r.file).name for r in train_ds.records.images} == want["train"]
    assert "6 of 24 images" in capsys.readouterr().err
    cfg0 = resolve({"data": str(flat), "model": "fcos_effl0_fpn", "out": str(tmp_path / "run0")})
    assert load_train_val(cfg0)[1] is None and "val_fraction=0.2" in capsys.readouterr().err


def test_eval_report_and_compare_rebuild_the_held_out_val_from_the_saved_config(small_voc, tmp_path):
    from detlab.config import resolve
    from detlab.engine.train import load_train_val
    from detlab.runfolder import validation_dataset

    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (*(small_voc / "Annotations").iterdir(), *(small_voc / "JPEGImages").iterdir()):
        shutil.copy(f, flat)
    settings = {
        "data": str(flat),
        "model": "fcos_effl0_fpn",
        "out": str(tmp_path / "run"),
        "val_fraction": 0.25,
    }
    cfg = resolve({**settings, "seed": 3})
    train_ds, val_ds = load_train_val(cfg, verbose=False)
    saved = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))  # what config.yaml holds
    assert saved["val"] is None  # no split was written; the saved fraction and seed rebuild it
    again = validation_dataset(saved, classes=list(train_ds.class_names))
    assert [r.file for r in again.records.images] == [r.file for r in val_ds.records.images]
    assert {r.file for r in again.records.images}.isdisjoint(r.file for r in train_ds.records.images)
    assert {Path(r.file).name for r in again.records.images} == expected(str(flat), 0.25, 0.0, 3)["val"]
