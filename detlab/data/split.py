"""Seeded, class-stratified splits of one source, and split files written in the source's own layout.

A folder of labelled images without a split file used to train on every image with no validation
at all. :func:`stratified_split` divides the images of one source into train / val (/ test) so that
each split gets its share of every class — rare classes first, each image going to the split that
still wants that class most (iterative stratification, Sechidis et al. 2011) — and then makes sure
that every class with at least 2 images has one in val (3 images: one in test too) without taking
the last one from train. The same records and seed give the same split.

``detlab split DATA --val 0.2 [--test F] [--seed S]`` writes it where detlab's readers (and the
format's own tools) look:

* VOC: ``ImageSets/Main/{train,val,test}.txt`` (image ids) in each year folder;
* YOLO: ``{train,val,test}.txt`` image lists beside ``data.yaml``, and its ``train/val/test`` keys;
* COCO: one JSON per split, ``annotations/instances_<split>.json`` (every other key of the source kept);
* images with XML: ``{train,val,test}.txt`` (image paths relative to DATA) in DATA, read by ``DATA:val``.

``val_fraction`` (config) does the same in memory when ``detlab train`` finds no validation split.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import yaml

from detlab.data.records import Records
from detlab.errors import ConfigError, DataError, writing
from detlab.log import logger

SPLITS = ("train", "val", "test")


def _targets(count: int, fractions: dict[str, float], least: dict[str, int]) -> dict[str, int]:
    """How many of ``count`` items each split should get: its share rounded, at least ``least[s]``
    when there are enough, and train keeping at least one."""
    want = {s: int(round(f * count)) for s, f in fractions.items() if s != "train"}
    for s in want:
        if fractions[s] > 0 and count >= least[s]:
            want[s] = max(1, want[s])
    for s in reversed(list(want)):  # train keeps one: test gives way first, then val
        while want[s] and count - sum(want.values()) < 1:
            want[s] -= 1
    return {"train": count - sum(want.values()), **want}


def stratified_split(records: Records, val: float, test: float = 0.0, seed: int = 0) -> dict[str, list[int]]:
    """Divide ``records.images`` into train / val (/ test), stratified by class.

    Args:
        records: one source's images; ``labels int64 [N]`` per image decide its classes.
        val: share of images for val, in (0, 1).
        test: share for test, in [0, 1); ``val + test < 1``.
        seed: the shuffle's seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` — sorted indices into ``records.images``,
        each image in exactly one split (``test`` only when ``test > 0``).
    """
    if not 0 < val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise ConfigError(f"split: --val {val} and --test {test} must be shares in (0, 1) that sum below 1")
    fractions = {"train": 1 - val - test, "val": val, **({"test": test} if test > 0 else {})}
    least = {"val": 2, "test": 3}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records.images)).tolist()
    classes_of = [set(np.asarray(r.labels).tolist()) for r in records.images]
    per_class: dict[int, list[int]] = {}
    for i in order:
        for c in classes_of[i]:
            per_class.setdefault(c, []).append(i)
    wanted = {c: _targets(len(ids), fractions, least) for c, ids in per_class.items()}
    total = _targets(len(order), fractions, {"val": 2, "test": 3})
    split_of: dict[int, str] = {}

    def give(i: int, key) -> None:
        s = max(fractions, key=key)
        split_of[i] = s
        total[s] -= 1
        for c in classes_of[i]:
            wanted[c][s] -= 1

    left = {c: list(ids) for c, ids in per_class.items()}
    while any(left.values()):
        # The class with the fewest unplaced images goes first: later classes cannot undo its split.
        c = min((c for c in left if left[c]), key=lambda c: (len(left[c]), c))
        for i in left[c]:
            if i not in split_of:
                give(i, lambda s, c=c: (wanted[c][s], total[s]))
        for ids in left.values():
            ids[:] = [i for i in ids if i not in split_of]
    for i in order:  # images without boxes
        if i not in split_of:
            give(i, lambda s: total[s])
    _cover_every_class(split_of, classes_of, per_class, fractions, least)
    return {s: sorted(i for i, t in split_of.items() if t == s) for s in fractions}


def _cover_every_class(split_of, classes_of, per_class, fractions, least) -> None:
    """Move one train image into val (test) for each class with enough images that has none there,
    preferring an image whose other classes stay in train."""
    for s in (s for s in fractions if s != "train"):
        for c, ids in sorted(per_class.items()):
            if len(ids) < least[s] or any(split_of[i] == s for i in ids):
                continue
            in_train = [i for i in ids if split_of[i] == "train"]
            if len(in_train) < 2:
                continue

            def keeps_train(i: int, c: int = c) -> bool:
                return all(
                    sum(split_of[j] == "train" for j in per_class[k]) >= 2 for k in classes_of[i] if k != c
                )

            split_of[next((i for i in in_train if keeps_train(i)), in_train[0])] = s


def holdout(records: Records, fraction: float, seed: int) -> tuple[Records, Records]:
    """``(train, val)`` records of a :func:`stratified_split` with ``val=fraction`` (``val_fraction``)."""
    parts = stratified_split(records, fraction, 0.0, seed)
    pick = {s: [records.images[i] for i in idx] for s, idx in parts.items()}
    return (
        dataclasses.replace(records, images=pick["train"], split="train"),
        dataclasses.replace(records, images=pick["val"], split="val", problems=[]),
    )


# --- writing the split where the source's readers look ------------------------------------


def _check_free(paths: list[Path], force: bool) -> None:
    taken = [p for p in paths if p.exists()]
    if taken and not force:
        raise DataError(
            f"{taken[0]}: already exists — pass --force to replace it (or split into another copy)"
        )


def _write_text(path: Path, text: str) -> None:
    with writing(path, "split file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def write_voc(records: Records, parts: dict[str, list[int]], force: bool) -> list[Path]:
    """``ImageSets/Main/<split>.txt`` (the XML stems) in each VOC year folder the images come from."""
    by_year: dict[Path, dict[str, list[str]]] = {}
    for s, idx in parts.items():
        for i in idx:
            ann = records.images[i].ann_file
            by_year.setdefault(ann.parent.parent, {t: [] for t in parts})[s].append(ann.stem)
    files = [year / "ImageSets" / "Main" / f"{s}.txt" for year in by_year for s in parts]
    _check_free(files, force)
    for year, lists in by_year.items():
        for s, stems in lists.items():
            _write_text(year / "ImageSets" / "Main" / f"{s}.txt", "".join(f"{x}\n" for x in sorted(stems)))
    return files


def write_folder(root: Path, records: Records, parts: dict[str, list[int]], force: bool) -> list[Path]:
    """``DATA/<split>.txt``: image paths relative to DATA, which ``DATA:<split>`` reads."""
    files = [root / f"{s}.txt" for s in parts]
    _check_free(files, force)
    for s, idx in parts.items():
        rel = sorted(
            Path(records.images[i].file).resolve().relative_to(root.resolve()).as_posix() for i in idx
        )
        _write_text(root / f"{s}.txt", "".join(f"{x}\n" for x in rel))
    return files


def write_yolo(root: Path, records: Records, parts: dict[str, list[int]], force: bool) -> list[Path]:
    """``<split>.txt`` image lists beside data.yaml (made when missing) and its ``train/val/test`` keys."""
    from detlab.data.formats.yolo import find_yaml

    yml = find_yaml(root) or root / "data.yaml"
    data = yaml.safe_load(yml.read_text(encoding="utf-8-sig")) if yml.is_file() else None
    data = data if isinstance(data, dict) else {"names": list(records.class_names)}
    files = [yml.parent / f"{s}.txt" for s in parts]
    _check_free(files, force)
    for s, idx in parts.items():
        rel = sorted(
            "./" + Path(records.images[i].file).resolve().relative_to(yml.parent.resolve()).as_posix()
            for i in idx
        )
        _write_text(yml.parent / f"{s}.txt", "".join(f"{x}\n" for x in rel))
        data[s] = f"{s}.txt"
    if "val" in parts:  # Roboflow's alias would otherwise stand beside the new key
        data.pop("valid", None)
    _write_text(yml, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return [*files, yml]


def write_coco(json_path: Path, records: Records, parts: dict[str, list[int]], force: bool) -> list[Path]:
    """One COCO JSON per split in ``annotations/`` beside (or above) the source JSON, every other key kept."""
    ann_dir = json_path.parent if json_path.parent.name == "annotations" else json_path.parent / "annotations"
    files = [ann_dir / f"instances_{s}.json" for s in parts]
    _check_free(files, force)
    source = json.loads(json_path.read_text(encoding="utf-8-sig"))
    for s, idx in parts.items():
        ids = {records.images[i].image_id for i in idx}
        out = {
            **source,
            "images": [im for im in source.get("images", []) if im.get("id") in ids],
            "annotations": [a for a in source.get("annotations", []) if a.get("image_id") in ids],
        }
        _write_text(ann_dir / f"instances_{s}.json", json.dumps(out))
    return files


def split_command(data: str, val: float, test: float = 0.0, seed: int = 0, force: bool = False) -> int:
    """``detlab split DATA --val F [--test F] [--seed S] [--force]``: write a stratified split of DATA.

    Returns:
        Exit code 0; a bad source or an existing split file raises a DetlabError (one line).
    """
    from detlab.data.formats import detect_format, find_coco_json, read_records, split_spec

    path, source_split = split_spec(data)
    fmt = detect_format(path, source_split)
    records = read_records(data)
    if not records.images:
        raise DataError(f"{data}: no images to split — run `detlab check {data}`")
    parts = stratified_split(records, val, test, seed)
    if fmt in ("voc", "vocdevkit"):
        files = write_voc(records, parts, force)
    elif fmt == "yolo":
        files = write_yolo(path if path.is_dir() else path.parent, records, parts, force)
    elif fmt == "coco":
        found = (path, source_split) if path.is_file() else find_coco_json(path, source_split)
        files = write_coco(found[0], records, parts, force)
    else:
        files = write_folder(path, records, parts, force)
    logger.info(summary(records, parts, seed))
    for f in files:
        logger.info(f"wrote {f}")
    return 0


def summary(records: Records, parts: dict[str, list[int]], seed: int) -> str:
    """``train 164 / val 41 images (seed 0); per class: RBC 131/33, …`` — what went where."""
    counts = " / ".join(f"{s} {len(idx)}" for s, idx in parts.items())
    per_class = []
    for c, name in enumerate(records.class_names):
        n = [
            sum(c in set(np.asarray(records.images[i].labels).tolist()) for i in idx)
            for idx in parts.values()
        ]
        per_class.append(f"{name} {'/'.join(map(str, n))}")
    return f"split: {counts} images (seed {seed}); images per class ({'/'.join(parts)}): " + ", ".join(
        per_class
    )
