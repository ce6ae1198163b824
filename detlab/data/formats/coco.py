"""COCO JSON: reader (fast, numpy per image) and the folder/image-folder lookups.

COCO ``bbox`` is ``[x, y, w, h]`` in continuous pixels; detlab's frame is xyxy in the
same continuous pixels, so ``x2 = x + w``, ``y2 = y + h`` and nothing else moves.

Class map: categories are taken in category-id order; categories without any box
are reported (``info``) and not made into classes, so non-contiguous ids map onto
``0..C-1`` and ``Records.source_ids`` keeps the original ids. ``iscrowd`` is kept.
``difficult`` is read from an optional per-annotation ``"difficult": 0|1`` key (what
``detlab convert --to coco`` writes for VOC's flag; COCO tools ignore unknown keys).

Ids (image, annotation, category) must be integers: a string id is reported on its own
field and skips its entry. ``segmentation`` is dropped while the JSON is parsed — boxes
are all detlab reads — which halves the reader's peak memory on a train2017-sized file
(``benchmarks/coco_scale.py``). The file may be UTF-8 (with or without a BOM), or
UTF-16/32; anything else is one error line.
"""

from __future__ import annotations

import gc
import json
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path

import numpy as np

from detlab.data.formats.images import safe_join
from detlab.data.records import ImageRecord, Problem, Records
from detlab.errors import DataError


def find_coco_json(folder: Path, split: str | None) -> tuple[Path, str | None] | None:
    """The COCO JSON inside a folder, and the split it holds.

    Looks for ``annotations/instances_<split>.json``, ``<split>/_annotations.coco.json``
    (Roboflow), ``<split>/*.json`` (single file), then a single ``*.json`` in the
    folder itself. Without a split: ``train`` if present, else the only one.
    """
    ann = folder / "annotations"
    if split:
        for cand in (
            ann / f"instances_{split}.json",
            ann / f"{split}.json",
            folder / split / "_annotations.coco.json",
        ):
            if cand.is_file():
                return cand, split
        inside = sorted((folder / split).glob("*.json")) if (folder / split).is_dir() else []
        if len(inside) == 1:
            return inside[0], split
    else:
        found = sorted(ann.glob("instances_*.json")) if ann.is_dir() else []
        if found:
            by_split = {p.stem[len("instances_") :]: p for p in found}
            name = (
                next((s for s in by_split if s.startswith("train")), None)
                if len(by_split) > 1
                else next(iter(by_split))
            )
            if name is not None:
                return by_split[name], name
        if (folder / "train" / "_annotations.coco.json").is_file():
            return folder / "train" / "_annotations.coco.json", "train"
    own = sorted(folder.glob("*.json"))
    if len(own) == 1:
        return own[0], split
    return None


def coco_splits(folder: Path) -> list[str]:
    """The split names a COCO folder holds (``annotations/instances_<split>.json``, ``<split>/<one>.json``)."""
    ann = folder / "annotations"
    names = [p.stem.removeprefix("instances_") for p in sorted(ann.glob("*.json"))] if ann.is_dir() else []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "annotations"):
        if (sub / "_annotations.coco.json").is_file() or len(list(sub.glob("*.json"))) == 1:
            names.append(sub.name)
    return list(dict.fromkeys(names))


def _load_json(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}) — check the path") from None
    text = _decode(raw, path)
    del raw
    # The parse builds millions of containers that all stay alive, so the cyclic collector
    # would rescan them again and again for nothing: a fifth of the parse time at COCO size.
    collecting = gc.isenabled()
    gc.disable()
    try:
        data = json.loads(text, object_hook=_drop_segmentation)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg}) — fix the file") from None
    finally:
        if collecting:
            gc.enable()
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: top level is not an object — a COCO file holds images, annotations, categories"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: {key}: missing or not a list — this is not a COCO detection file")
    return data


def _decode(raw: bytes, path: Path) -> str:
    # json's own detection: a BOM (UTF-8, UTF-16, UTF-32) or the null-byte pattern of UTF-16/32.
    encoding = json.detect_encoding(raw)
    try:
        return raw.decode(encoding, "surrogatepass")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not {encoding.upper()} text (byte 0x{raw[e.start]:02x} at offset {e.start} cannot be decoded) — "
            "JSON must be UTF-8: re-save the file as UTF-8"
        ) from None


def _drop_segmentation(obj: dict) -> dict:
    # Polygons are most of the objects in a COCO file and detlab reads boxes only; dropping
    # each one as soon as its annotation is built keeps them from ever being alive together
    # (peak memory of the parse roughly halves).
    obj.pop("segmentation", None)
    return obj


def find_image_dir(
    json_path: Path, split: str | None, file_names: list[str], images: str | Path | None
) -> Path:
    """The folder the COCO ``file_name`` entries are relative to.

    Args:
        json_path: the annotation file.
        split: split name, used for ``images/<split>/`` and ``<split>/`` layouts.
        file_names: image file names from the JSON (a few are probed).
        images: the user's image folder; wins when given.
    """
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise DataError(
                f"{folder}: --images folder does not exist — give the folder holding the COCO images"
            )
        return folder
    here, up = json_path.parent, json_path.parent.parent
    names = ([split] if split else []) + [json_path.stem.replace("instances_", "")]
    candidates = [here]
    for s in dict.fromkeys(names):
        candidates += [here / "images" / s, up / "images" / s, up / s, here / s]
    candidates += [here / "images", up / "images", up]
    probe = [n for n in file_names[:8] if n and ".." not in n]
    found = [sum((folder / n).is_file() for n in probe) for folder in candidates]
    return candidates[int(np.argmax(found))] if probe and max(found) > 0 else here


def _categories(data: dict, path: Path, problems: list[Problem]) -> tuple[np.ndarray, list[str]]:
    ids, names = [], []
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DataError(f"{path}: categories[{i}]: needs 'id' and 'name' — fix the category list")
        bad = _id_problem(cat["id"])
        if bad:
            raise DataError(f"{path}: categories[{i}].id: {bad[0]} — {bad[1]}")
        ids.append(int(cat["id"]))
        names.append(str(cat["name"]))
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise DataError(f"{path}: categories: duplicate category ids {dup} — give every category its own id")
    order = np.argsort(ids, kind="stable")
    ids, names = [ids[i] for i in order], [names[i] for i in order]
    first: dict[str, int] = {}
    for cid, name in zip(ids, names):
        if name in first:
            problems.append(
                Problem(
                    str(path),
                    f"categories[id={cid}].name",
                    f"{name!r} is also the name of category {first[name]}",
                    f"rename one — the boxes of both are read as one class {name!r}",
                    "warning",
                )
            )
        first.setdefault(name, cid)
    return np.asarray(ids, np.int64), names


def _images(data: dict, path: Path, problems: list[Problem]) -> tuple[list[dict], np.ndarray]:
    kept, ids, seen = [], [], set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            problems.append(
                Problem(
                    str(path),
                    f"images[{i}]",
                    "needs 'id' and 'file_name'",
                    "fix the entry — image skipped",
                    "skipped",
                )
            )
            continue
        bad = _id_problem(img["id"])
        if bad:
            problems.append(
                Problem(str(path), f"images[{i}].id", bad[0], f"{bad[1]} — image skipped", "skipped")
            )
            continue
        if img["id"] in seen:
            problems.append(
                Problem(
                    str(path),
                    f"images[id={img['id']}].id",
                    "duplicate image id",
                    "give every image its own id — later duplicate skipped",
                    "skipped",
                )
            )
            continue
        seen.add(img["id"])
        kept.append(img)
        ids.append(int(img["id"]))
    return kept, np.asarray(ids, np.int64)


def _annotation_arrays(
    anns: list, path: Path, problems: list[Problem], cat_of_name: dict
) -> tuple[np.ndarray, ...]:
    """Columns of the annotation list: ids, image ids, category ids, bbox ``[A, 4]``, flags, area.

    Tries one vectorised pass; on any malformed entry, walks the list and reports each bad one.
    """
    n = len(anns)
    all_dicts = set(map(type, anns)) <= {dict}
    try:
        if not all_dicts:
            raise TypeError
        boxes = list(map(itemgetter("bbox"), anns))
        if not set(map(type, boxes)) <= {list} or not set(map(len, boxes)) <= {4}:
            raise ValueError
        bbox = np.fromiter(chain.from_iterable(boxes), np.float64, count=4 * n).reshape(n, 4)
        cols = [list(map(itemgetter(k), anns)) for k in ("id", "image_id", "category_id")]
        if not all(set(map(type, c)) <= {int} for c in cols):
            raise TypeError
        cols = [np.array(c, np.int64) for c in cols]
        ok = np.ones(n, bool)
    except (KeyError, TypeError, ValueError, OverflowError):
        bbox, cols, ok = _annotation_arrays_slow(anns, path, problems, cat_of_name)
    if all_dicts:
        flags = [
            np.fromiter(map(bool, map(dict.get, anns, repeat(k))), bool, count=n)
            for k in ("iscrowd", "difficult")
        ]
        area = list(map(dict.get, anns, repeat("area")))
        area = (
            np.array(area, np.float64)
            if set(map(type, area)) <= {float, int}
            else np.fromiter(map(_float, area), np.float64, count=n)
        )
    else:
        flags = [
            np.fromiter((bool(a.get(k, 0)) if isinstance(a, dict) else False for a in anns), bool, count=n)
            for k in ("iscrowd", "difficult")
        ]
        area = np.fromiter(
            (_float(a.get("area")) if isinstance(a, dict) else np.nan for a in anns), np.float64, count=n
        )
    return cols[0], cols[1], cols[2], bbox, flags[0], flags[1], area, ok


def _annotation_arrays_slow(anns: list, path: Path, problems: list[Problem], cat_of_name: dict) -> tuple:
    bbox = np.zeros((len(anns), 4), np.float64)
    cols = np.zeros((3, len(anns)), np.int64)
    ok = np.zeros(len(anns), bool)
    for i, a in enumerate(anns):
        where = (
            f"annotations[id={a['id']}]"
            if isinstance(a, dict) and not _id_problem(a.get("id"))
            else f"annotations[{i}]"
        )
        missing = [
            k for k in ("id", "image_id", "category_id", "bbox") if not isinstance(a, dict) or k not in a
        ]
        if missing:
            problems.append(
                Problem(
                    str(path),
                    where,
                    f"missing {', '.join(missing)}",
                    "complete the entry — box skipped",
                    "skipped",
                )
            )
            continue
        bad = [
            (k, _id_problem(a[k], cat_of_name if k == "category_id" else None))
            for k in ("id", "image_id", "category_id")
        ]
        bad = [(k, why) for k, why in bad if why]
        if bad:
            key, (message, fix) = bad[0]
            problems.append(Problem(str(path), f"{where}.{key}", message, f"{fix} — box skipped", "skipped"))
            continue
        box = a["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            got = len(box) if isinstance(box, (list, tuple)) else type(box).__name__
            problems.append(
                Problem(
                    str(path),
                    f"{where}.bbox",
                    f"needs 4 numbers [x, y, w, h], got {got}",
                    "fix the bbox — box skipped",
                    "skipped",
                )
            )
            continue
        try:
            bbox[i] = [float(v) if v is not None else np.nan for v in box]
            cols[:, i] = [int(a["id"]), int(a["image_id"]), int(a["category_id"])]
        except (TypeError, ValueError):
            problems.append(
                Problem(
                    str(path),
                    f"{where}.bbox",
                    f"not numbers: {box!r}",
                    "fix the entry — box skipped",
                    "skipped",
                )
            )
            continue
        ok[i] = True
    return bbox, cols, ok


def _id_problem(value, cat_of_name: dict | None = None) -> tuple[str, str] | None:
    """What is wrong with a COCO id and how to fix it; ``None`` when it is an integer.

    A string id is reported as such (not left to fail later as a bad bbox); a category
    name given as ``category_id`` gets that category's id in the fix.
    """
    if type(value) is int or (type(value) is float and value.is_integer()):
        return (
            None if -(2**63) <= value < 2**63 else (f"{value!r} is out of range", "COCO ids fit in 64 bits")
        )
    if isinstance(value, str) and cat_of_name and value in cat_of_name:
        return f"{value!r} is a category name", f"give the category's id, {cat_of_name[value]}"
    if isinstance(value, str):
        return f"{value!r} is a string", "COCO ids are integers: write it without quotes"
    return f"{value!r} is not an integer", "COCO ids are integers"


def _class_map(
    cat_ids: np.ndarray,
    cat_names: list[str],
    counts: np.ndarray,
    classes: list[str] | None,
    path: Path,
    problems: list[Problem],
) -> tuple[list[str], list, np.ndarray]:
    """Class names, their source ids, and category index → label (``-1`` = not a class)."""
    to_label = np.full(len(cat_ids), -1, np.int64)
    if classes is None:
        names, source, label_of = [], [], {}
        for k, (cid, name) in enumerate(zip(cat_ids, cat_names)):
            if name in label_of:  # a second category of that name (warned in _categories): one class
                to_label[k] = label_of[name]
                continue
            if counts[k] == 0:
                problems.append(
                    Problem(
                        str(path),
                        f"categories[id={cid}]",
                        f"category {name!r} has no boxes",
                        "not made a class (pass --classes to keep it)",
                        "info",
                    )
                )
                continue
            to_label[k] = label_of[name] = len(names)
            names.append(name)
            source.append(int(cid))
        return names, source, to_label
    lookup = {n: i for i, n in enumerate(classes)}
    source: list = [None] * len(classes)
    for k, (cid, name) in enumerate(zip(cat_ids, cat_names)):
        if name in lookup:
            to_label[k] = lookup[name]
            if source[lookup[name]] is None:
                source[lookup[name]] = int(cid)
        elif counts[k]:
            problems.append(
                Problem(
                    str(path),
                    f"categories[id={cid}]",
                    f"category {name!r} is not in the class list",
                    f"add it to --classes — its {int(counts[k])} boxes skipped",
                    "skipped",
                )
            )
    return list(classes), source, to_label


def read_coco(
    path: Path, split: str | None = None, images: str | Path | None = None, classes: list[str] | None = None
) -> Records:
    """Read a COCO detection JSON into :class:`Records`.

    Args:
        path: the JSON file.
        split: the split name (used to find the image folder).
        images: the image folder, when it is not in a common layout.
        classes: the user's class list (matched by category name), or ``None``.

    Returns:
        Records; boxes ``float32 [N, 4]`` xyxy continuous pixels; ``extra`` holds
        ``ann_ids`` and ``area`` per box so conversion back is lossless.
    """
    data = _load_json(path)
    problems: list[Problem] = []
    cat_ids, cat_names = _categories(data, path, problems)
    imgs, img_ids = _images(data, path, problems)
    ann_ids, ann_img, ann_cat, bbox, crowd, difficult, area, ok = _annotation_arrays(
        data["annotations"], path, problems, dict(zip(reversed(cat_names), reversed(cat_ids.tolist())))
    )
    del (
        data
    )  # the annotation dicts are the bulk of the memory, and everything needed from them is in columns now
    _report_duplicate_ann_ids(ann_ids[ok], path, problems)
    order = np.argsort(img_ids, kind="stable")
    pos = np.searchsorted(img_ids[order], ann_img).clip(0, max(len(img_ids) - 1, 0))
    img_idx = order[pos] if len(img_ids) else np.zeros_like(ann_img)
    has_img = (img_ids[img_idx] == ann_img) if len(img_ids) else np.zeros(len(ann_ids), bool)
    cat_pos = np.searchsorted(cat_ids, ann_cat).clip(0, max(len(cat_ids) - 1, 0))
    has_cat = (cat_ids[cat_pos] == ann_cat) if len(cat_ids) else np.zeros(len(ann_ids), bool)
    for i in np.flatnonzero(ok & ~has_img):
        problems.append(
            Problem(
                str(path),
                f"annotations[id={ann_ids[i]}].image_id",
                f"no image with id {ann_img[i]}",
                "fix the id — box skipped",
                "skipped",
            )
        )
    for i in np.flatnonzero(ok & has_img & ~has_cat):
        problems.append(
            Problem(
                str(path),
                f"annotations[id={ann_ids[i]}].category_id",
                f"no category with id {ann_cat[i]}",
                "fix the id — box skipped",
                "skipped",
            )
        )
    valid = ok & has_img & has_cat
    counts = np.bincount(cat_pos[valid], minlength=len(cat_ids))
    names, source, to_label = _class_map(cat_ids, cat_names, counts, classes, path, problems)
    labels = to_label[cat_pos]
    valid &= labels >= 0
    xyxy = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], 1).astype(np.float32)  # [A, 4]
    columns = dict(boxes=xyxy, labels=labels, difficult=difficult, iscrowd=crowd, ann_ids=ann_ids, area=area)
    folder = find_image_dir(path, split, [im["file_name"] for im in imgs], images)
    records = _group_by_image(imgs, img_idx, valid, columns, folder, path, problems)
    return Records(records, names, source, "coco", path, split, problems)


def _report_duplicate_ann_ids(ids: np.ndarray, path: Path, problems: list[Problem]) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    for dup in uniq[counts > 1]:
        problems.append(
            Problem(
                str(path),
                f"annotations[id={dup}].id",
                f"annotation id used {counts[uniq == dup][0]} times",
                "give every annotation its own id (boxes kept; ids renumbered on convert)",
                "warning",
            )
        )


def _group_by_image(
    imgs: list[dict],
    img_idx: np.ndarray,
    valid: np.ndarray,
    columns: dict,
    folder: Path,
    path: Path,
    problems: list[Problem],
) -> list[ImageRecord]:
    """Slice the per-annotation columns into one :class:`ImageRecord` per image (no per-box objects)."""
    sel = np.flatnonzero(valid)
    sel = sel[np.argsort(img_idx[sel], kind="stable")]
    starts = np.searchsorted(img_idx[sel], np.arange(len(imgs) + 1)).tolist()  # Python ints slice faster
    cols = {k: v[sel] for k, v in columns.items()}
    out = []
    for k, img in enumerate(imgs):
        name = img["file_name"]
        file = (
            folder / name
            if (".." not in name and not name.startswith(("/", "\\")))
            else safe_join(folder, name)
        )
        if file is None:
            problems.append(
                Problem(
                    str(path),
                    f"images[id={img['id']}].file_name",
                    f"{name!r} escapes the dataset folder",
                    "use a path inside the image folder — image skipped",
                    "skipped",
                )
            )
            continue
        a, b = starts[k], starts[k + 1]
        out.append(
            ImageRecord(
                image_id=int(img["id"]),
                file=file,
                width=_int(img.get("width")),
                height=_int(img.get("height")),
                boxes=cols["boxes"][a:b],
                labels=cols["labels"][a:b],
                difficult=cols["difficult"][a:b],
                iscrowd=cols["iscrowd"][a:b],
                ann_file=path,
                extra={"ann_ids": cols["ann_ids"][a:b], "area": cols["area"][a:b], "file_name": name},
            )
        )
    return out


def _float(value) -> float:
    return float(value) if isinstance(value, (int, float)) else np.nan


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
