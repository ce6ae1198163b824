"""Format readers → :class:`~detlab.data.records.Records`, and format detection from a path.

A dataset spec is a path, optionally ``PATH:split``, and several specs may be joined
with ``+`` (``VOC2007:trainval+VOC2012:trainval``). Detection order for a folder:
VOC year folder, YOLO (``data.yaml`` or ``images/`` + ``labels/``), COCO (a JSON
inside), ``VOCdevkit/`` root, then images with XML beside them or in a sibling folder.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np

from detlab.data.formats.classes import parse_class_list, resolve_names
from detlab.data.formats.coco import coco_splits, find_coco_json, read_coco
from detlab.data.formats.folder import is_folder, read_folder
from detlab.data.formats.voc import is_voc_year, is_vocdevkit, read_voc_year, read_vocdevkit
from detlab.data.formats.yolo import is_yolo, read_yolo
from detlab.data.records import Records
from detlab.errors import DataError

FORMATS = ("voc", "vocdevkit", "coco", "yolo", "folder")


def split_spec(spec: str | Path) -> tuple[Path, str | None]:
    """``"PATH:split"`` → ``(PATH, split)``; a plain path → ``(path, None)``.

    The suffix after the last ``:`` is a split only when it holds no path separator
    and the whole string is not itself an existing path.
    """
    text = str(spec)
    if ":" in text and not Path(text).exists():
        head, tail = text.rsplit(":", 1)
        if tail and "/" not in tail and "\\" not in tail:
            return Path(head), tail
    return Path(text), None


def absolute_spec(spec: str | Path) -> str:
    """A data spec with each ``+``-joined part's path made absolute (its ``:split`` kept, links not
    followed), so the run folder's config.yaml names its data from any working directory."""
    parts = []
    for part in str(spec).split("+"):
        path, split = split_spec(part)
        parts.append(os.path.abspath(path) + (f":{split}" if split else ""))
    return "+".join(parts)


def detect_format(path: Path, split: str | None = None) -> str:
    """The format of a dataset path: one of :data:`FORMATS`.

    Raises:
        DataError: the path does not exist or matches no layout (says which layouts are known).
    """
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder — give a dataset path (VOC, COCO JSON, YOLO or images with XML)"
        )
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        if path.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        raise DataError(
            f"{path}: not a dataset file — give a COCO .json, a YOLO data.yaml or a dataset folder"
        )
    if is_voc_year(path):
        return "voc"
    if is_yolo(path):
        return "yolo"
    if find_coco_json(path, split) is not None:
        return "coco"
    if is_vocdevkit(path):
        return "vocdevkit"
    if is_folder(path):
        return "folder"
    splits = coco_splits(path) if split else []
    if splits:  # a COCO folder, asked for a split it does not hold
        close = difflib.get_close_matches(split, splits, n=1, cutoff=0.5)
        hint = f"did you mean {path}:{close[0]}?" if close else f"use {path}:{splits[0]}"
        raise DataError(f"{path}: no COCO split {split!r} — this folder holds {', '.join(splits)}; {hint}")
    raise DataError(
        f"{path}: unknown dataset layout — expected a VOC year folder (Annotations/, JPEGImages/), a VOCdevkit/ root, "
        "a COCO JSON (or a folder holding annotations/instances_<split>.json), a YOLO folder (data.yaml, images/, labels/), "
        "or images with VOC XML beside them"
    )


def read_source(
    path: Path, split: str | None = None, images: str | Path | None = None, classes: list[str] | None = None
) -> list[Records]:
    """Read one dataset path (no ``+``) into one Records per part (a VOCdevkit gives one per year)."""
    fmt = detect_format(path, split)
    if fmt == "voc":
        return [read_voc_year(path, split, classes)]
    if fmt == "vocdevkit":
        return read_vocdevkit(path, split, classes)
    if fmt == "yolo":
        return [read_yolo(path, split, classes)]
    if fmt == "folder":
        if split and not (path / f"{split}.txt").is_file():
            raise DataError(
                f"{path}: an image folder has no split {split!r} ({path / f'{split}.txt'} is missing) — write "
                f"one with `detlab split {path} --val 0.2`, or drop --split/':{split}'"
            )
        records = read_folder(path, classes)
        return [select_listed(records, path / f"{split}.txt", split)] if split else [records]
    if path.is_file():
        json_path = path
        split = split or (path.stem[len("instances_") :] if path.stem.startswith("instances_") else None)
    else:
        found = find_coco_json(path, split)
        if found is None:
            raise DataError(
                f"{path}: no COCO JSON for split {split!r} — expected annotations/instances_{split}.json or {split}/*.json"
            )
        json_path, split = found
    return [read_coco(json_path, split, images, classes)]


def select_listed(records: Records, listing: Path, split: str) -> Records:
    """The images of ``records`` named in ``listing`` (one path per line, relative to its folder), as
    ``detlab split`` writes for a folder of images with XML."""
    base = listing.parent.resolve()
    wanted = {
        (base / line.strip()).resolve()
        for line in listing.read_text(encoding="utf-8-sig", errors="replace").splitlines()
        if line.strip()
    }
    images = [r for r in records.images if Path(r.file).resolve() in wanted]
    return Records(
        images, records.class_names, records.source_ids, records.format, records.root, split, records.problems
    )


def read_records(
    spec: str | Path,
    split: str | None = None,
    images: str | Path | None = None,
    classes: str | list[str] | None = None,
) -> Records:
    """Read a dataset spec (``PATH``, ``PATH:split``, joins with ``+``) into one :class:`Records`.

    Args:
        spec: the dataset path(s).
        split: default split for parts that do not name one.
        images: COCO image folder (when not in a common layout).
        classes: a class list (names, comma string, or a text file); order kept.

    Returns:
        Records: boxes ``float32 [N, 4]`` xyxy continuous pixels, labels in ``0..C-1``.
    """
    given = parse_class_list(classes)
    parts: list[Records] = []
    for piece in str(spec).split("+"):
        path, own_split = split_spec(piece)
        parts += read_source(path, own_split or split, images, given)
    return parts[0] if len(parts) == 1 else merge_records(parts, given)


def merge_records(parts: list[Records], given: list[str] | None = None) -> Records:
    """Join several Records: one class list (by name), image ids kept when unique, else renumbered.

    Class order: the user's list; sorted names when every part is VOC/folder; else first-seen order.
    """
    sort = all(p.format in ("voc", "folder") for p in parts)
    names = resolve_names([n for p in parts for n in p.class_names], given, sort=sort)
    index = {n: i for i, n in enumerate(names)}
    source = [None] * len(names)
    for p in reversed(parts):
        for n, s in zip(p.class_names, p.source_ids):
            source[index[n]] = s
    images, problems, used, top = [], [], set(), -1
    for p in parts:
        mapping = np.asarray([index[n] for n in p.class_names], np.int64)
        problems += p.problems
        for r in p.images:
            r.labels = mapping[r.labels] if r.labels.size else r.labels
            if r.image_id in used:
                r.image_id = top + 1
            used.add(r.image_id)
            top = max(top, r.image_id)
            images.append(r)
    splits = sorted({str(p.split) for p in parts})
    split = splits[0] if len(splits) == 1 else "+".join(str(p.split) for p in parts)
    return Records(images, names, source, parts[0].format, parts[0].root, split, problems)
