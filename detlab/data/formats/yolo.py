"""YOLO txt labels: ``images/`` + ``labels/`` folders, class names from ``data.yaml``.

Each label line is ``class cx cy w h`` with the centre and size normalised by the
image width/height (the EXIF-corrected size, as Ultralytics defines it), so::

    x1 = (cx - w/2) * W,  y1 = (cy - h/2) * H,  x2 = (cx + w/2) * W,  y2 = (cy + h/2) * H

The image header is read once per image for ``W, H``. A polygon line (segmentation
export: ``class x1 y1 x2 y2 …``) becomes its bounding box and is reported. A missing
label file makes the image a negative (no boxes), as Ultralytics does; reported as info.

Layouts: ``data.yaml`` with ``train:``/``val:``/``test:`` entries (a folder, a list of
folders, or a ``.txt`` list of images; relative to ``path:`` or to the YAML's folder),
Roboflow's ``<split>/images`` + ``<split>/labels``, or plain ``images/`` + ``labels/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from detlab.data.formats.classes import label_lookup
from detlab.data.formats.voc import IMAGE_EXTS
from detlab.data.records import ImageRecord, Problem, Records
from detlab.errors import DataError

EXIF_ORIENTATION = 0x0112
SPLIT_ALIASES = {"valid": "val", "validation": "val", "val": "valid"}


def find_yaml(path: Path) -> Path | None:
    """``data.yaml`` (or ``dataset.yaml`` / a single yaml with ``names``) at a YOLO root."""
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return path
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (path / name).is_file():
            return path / name
    return None


def is_yolo(path: Path) -> bool:
    """A YOLO dataset root: a data.yaml, or ``images/`` beside ``labels/`` (also per split)."""
    if find_yaml(path) is not None:
        return True
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return True
    return any((p / "images").is_dir() and (p / "labels").is_dir() for p in path.iterdir() if p.is_dir()) if path.is_dir() else False


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML ({str(e).splitlines()[0]}) — fix the file") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is not a mapping — a YOLO data.yaml holds names and train/val paths")
    return data


def yaml_names(data: dict, path: Path) -> list[str] | None:
    """The ``names`` entry as a list (a dict ``{index: name}`` must have indices ``0..C-1``)."""
    names = data.get("names")
    if names is None:
        return None
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: names: indices {keys} are not 0..{len(keys) - 1} — number classes from 0 without gaps")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DataError(f"{path}: names: expected a list or a mapping, got {type(names).__name__} — list the class names")


def _resolve(entry: str, base: Path, yaml_dir: Path) -> Path | None:
    for root in (base, yaml_dir, yaml_dir.parent):
        cand = (root / entry).resolve()
        if cand.exists():
            return cand
    stripped = entry.lstrip("./")
    cand = (yaml_dir / stripped).resolve()
    return cand if cand.exists() else None


def split_images(root: Path, split: str | None) -> tuple[list[Path], str | None, dict]:
    """Image files of a split, the split's name, and the YAML content (``{}`` without one)."""
    yml = find_yaml(root)
    data = _load_yaml(yml) if yml else {}
    base_dir = yml.parent if yml else root
    base = Path(data["path"]) if isinstance(data.get("path"), str) else base_dir
    base = base if base.is_absolute() else base_dir / base
    if split is None:
        split = "train" if "train" in data or (root / "train").is_dir() or (root / "images" / "train").is_dir() else None
    if split is None:
        return _list_images(root / "images"), None, data
    key = split if split in data else SPLIT_ALIASES.get(split)
    if key in data and data[key] is not None:
        entries = data[key] if isinstance(data[key], list) else [data[key]]
        files = []
        for entry in entries:
            where = _resolve(str(entry), base, base_dir)
            if where is None:
                raise DataError(f"{yml}: {key}: path {entry!r} not found — fix it (relative to 'path:' or to the YAML's folder)")
            files += _read_list(where) if where.is_file() else _list_images(where)
        return files, split, data
    for cand in (root / split / "images", root / "images" / split, root / SPLIT_ALIASES.get(split, split) / "images"):
        if cand.is_dir():
            return _list_images(cand), split, data
    raise DataError(f"{root}: split {split!r} not found in data.yaml or as {split}/images or images/{split} — pick an existing split")


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found — a YOLO dataset needs images/ and labels/")
    return sorted(p for p in folder.rglob("*") if p.suffix in IMAGE_EXTS and p.is_file())


def _read_list(path: Path) -> list[Path]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return [(path.parent / ln).resolve() if not Path(ln).is_absolute() else Path(ln) for ln in lines]


def label_path(image: Path) -> Path:
    """``…/images/…/x.jpg`` → ``…/labels/…/x.txt`` (the last ``images`` component is swapped)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def displayed_size(image: Path) -> tuple[int, int] | None:
    """Width, height after EXIF orientation, from the header only; ``None`` if unreadable."""
    try:
        with Image.open(image) as im:
            w, h = im.size
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError):
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def parse_label_file(path: Path, num_names: int, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a label file into normalised ``cx cy w h [N, 4]``, class indices ``[N]`` and 1-based line numbers ``[N]``."""
    rows, cls, lines = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            problems.append(Problem(str(path), f"line {n}", f"not numbers: {line.strip()!r}", "write 'class cx cy w h' — box skipped", "skipped"))
            continue
        if len(values) >= 7 and len(values) % 2 == 1:
            xy = np.asarray(values[1:]).reshape(-1, 2)
            lo, hi = xy.min(0), xy.max(0)
            values = [values[0], *((lo + hi) / 2), *(hi - lo)]
            problems.append(Problem(str(path), f"line {n}", "polygon (segmentation) label", "its bounding box is used", "info"))
        elif len(values) != 5:
            problems.append(Problem(str(path), f"line {n}", f"needs 5 numbers 'class cx cy w h', got {len(values)}", "fix the line — box skipped", "skipped"))
            continue
        c = values[0]
        if c != int(c) or not 0 <= c < num_names:
            problems.append(Problem(str(path), f"line {n}.class", f"class index {fields[0]} out of range 0..{num_names - 1}",
                                    "fix the index or the names in data.yaml — box skipped", "skipped"))
            continue
        rows.append(values[1:])
        cls.append(int(c))
        lines.append(n)
    return np.asarray(rows, np.float64).reshape(-1, 4), np.asarray(cls, np.int64), np.asarray(lines, np.int64)


def read_yolo(root: Path, split: str | None = None, classes: list[str] | None = None) -> Records:
    """Read a YOLO dataset into :class:`Records`.

    Args:
        root: the dataset root (or its ``data.yaml``).
        split: ``train`` / ``val`` / ``test`` (``valid`` accepted); ``None``: train, or all of ``images/``.
        classes: the user's class list: renames/reorders by name when ``data.yaml`` has
            names, else gives the names of indices ``0..C-1``.

    Returns:
        Records with boxes ``float32 [N, 4]`` xyxy continuous pixels of the EXIF-corrected image.
    """
    root = root.parent if root.is_file() else root
    files, split, data = split_images(root, split)
    names = yaml_names(data, find_yaml(root) or root)
    if names is None and (root / "classes.txt").is_file():
        names = [ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip()]
    if names is None and classes is None:
        raise DataError(f"{root}: no class names (data.yaml 'names' or classes.txt) — add one or pass --classes")
    src_names = names if names is not None else list(classes)
    out_names = list(classes) if classes is not None else src_names
    lookup = label_lookup(out_names)
    to_label = np.asarray([lookup.get(n, -1) for n in src_names], np.int64)
    problems: list[Problem] = []
    for k in np.flatnonzero(to_label < 0):
        problems.append(Problem(str(find_yaml(root) or root), f"names[{k}]", f"class {src_names[k]!r} is not in the class list",
                                "add it to --classes — its boxes skipped", "skipped"))
    records = [_read_one(i, image, len(src_names), to_label, problems) for i, image in enumerate(files)]
    source = [src_names.index(n) if n in src_names else None for n in out_names]
    return Records([r for r in records if r is not None], out_names, source, "yolo", root, split, problems)


def _read_one(image_id: int, image: Path, num_names: int, to_label: np.ndarray, problems: list[Problem]) -> ImageRecord | None:
    labels_file = label_path(image)
    size = displayed_size(image) if image.is_file() else None
    if size is None:
        problems.append(Problem(str(image), "file", "missing or unreadable image (its size is needed for YOLO labels)",
                                "replace or remove the image — image skipped", "skipped"))
        return None
    w, h = size
    if labels_file.is_file():
        cxcywh, cls, lines = parse_label_file(labels_file, num_names, problems)
    else:
        problems.append(Problem(str(image), "labels", f"no label file {labels_file.name}", "image used as a negative (no boxes)", "info"))
        cxcywh, cls, lines = np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1) * [w, h, w, h]  # [N, 4]
    labels = to_label[cls] if cls.size else cls
    keep = labels >= 0
    n = int(keep.sum())
    return ImageRecord(
        image_id=image_id, file=image, width=w, height=h, boxes=xyxy[keep].astype(np.float32), labels=labels[keep],
        difficult=np.zeros(n, bool), iscrowd=np.zeros(n, bool), ann_file=labels_file,
        extra={"stem": image.stem, "lines": lines[keep]},
    )
