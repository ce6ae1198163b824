"""YOLO txt labels: ``images/`` + ``labels/`` folders, class names from ``data.yaml``.

Each label line is ``class cx cy w h`` with the centre and size normalised by the
image width/height (the EXIF-corrected size, as Ultralytics defines it), so::

    x1 = (cx - w/2) * W,  y1 = (cy - h/2) * H,  x2 = (cx + w/2) * W,  y2 = (cy + h/2) * H

The image header is read once per image for ``W, H``. A polygon line (segmentation
export: ``class x1 y1 x2 y2 …``) becomes its bounding box and is reported. A missing
label file makes the image a negative (no boxes), as Ultralytics does; reported as info.
A label file with no image is reported and counted as a skipped image. A value over 1
(pixel coordinates written by mistake) skips that box with a line saying so.

Class names: ``data.yaml`` ``names`` as a list, ``{index: name}`` (indices ``0..C-1``)
or ``{name: index}``; else ``classes.txt`` (root, ``labels/`` as LabelImg writes it, or
beside the labels). ``nc``, when given, must equal the number of names. A name listed
twice is an error (see ``classes.py``).

Layouts: ``data.yaml`` with ``train:``/``val:``/``test:`` entries (a folder, a list of
folders, or a ``.txt`` list of images; relative to ``path:`` or to the YAML's folder,
Windows separators accepted), Roboflow's ``<split>/images`` + ``<split>/labels``, or
plain ``images/`` + ``labels/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from detlab.data.formats.classes import case_clashes, indexed_names, label_lookup
from detlab.data.formats.images import has_ext, is_appledouble, link_problem, list_files, list_images, nfc
from detlab.data.records import ImageRecord, Problem, Records
from detlab.errors import DataError

EXIF_ORIENTATION = 0x0112
SPLIT_ALIASES = {"valid": "val", "validation": "val", "val": "valid"}
NORMALISED_SLACK = (
    0.01  # values up to 1.01 are float noise or a small overhang (clipped by the check); beyond: pixels
)


def find_yaml(path: Path) -> Path | None:
    """``data.yaml`` (or ``data.yml`` / ``dataset.yaml`` / the one yaml holding ``names``) at a YOLO root."""
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return path
    if not path.is_dir():
        return None
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (path / name).is_file():
            return path / name
    others = [
        p
        for p in sorted(path.iterdir())
        if p.suffix.lower() in (".yaml", ".yml") and p.is_file() and not is_appledouble(p)
    ]
    if len(others) == 1:
        try:
            text = others[0].read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            return None
        if any(line.startswith("names:") for line in text.splitlines()):
            return others[0]
    return None


def is_yolo(path: Path) -> bool:
    """A YOLO dataset root: a data.yaml, or ``images/`` beside ``labels/`` (also per split)."""
    if find_yaml(path) is not None:
        return True
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return True
    return (
        any((p / "images").is_dir() and (p / "labels").is_dir() for p in path.iterdir() if p.is_dir())
        if path.is_dir()
        else False
    )


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}) — save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML ({str(e).splitlines()[0]}) — fix the file") from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: top level is not a mapping — a YOLO data.yaml holds names and train/val paths"
        )
    return data


def _is_index(value) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        or isinstance(value, str)
        and value.strip().isdigit()
    )


def yaml_names(data: dict, path: Path) -> list[str] | None:
    """The ``names`` entry as a list, index ``i`` naming class ``i`` (see the module docstring for the shapes).

    Raises:
        DataError: a shape that does not say which index is which name, a gap in the
            indices, a duplicate name, or ``nc`` that disagrees (one line naming the field).
    """
    names = data.get("names")
    if names is None:
        return None
    where = f"{path}: names"
    if isinstance(names, dict):
        if names and all(_is_index(k) for k in names):
            by_index = {int(k): v for k, v in names.items()}
        elif names and all(_is_index(v) for v in names.values()):
            by_index = {int(v): k for k, v in names.items()}
            if len(by_index) < len(names):
                raise DataError(
                    f"{where}: two names share one index in {names} — give each name its own index"
                )
        else:
            raise DataError(
                f"{where}: a mapping must be {{index: name}} or {{name: index}}, got {names} — "
                "or list the names in index order"
            )
        keys = sorted(by_index)
        if keys != list(range(len(keys))):
            raise DataError(
                f"{where}: indices {keys} are not 0..{len(keys) - 1} — number classes from 0 without gaps"
            )
        names = [by_index[k] for k in keys]
    elif not isinstance(names, list):
        raise DataError(
            f"{where}: expected a list or a mapping, got {type(names).__name__} {names!r} — "
            "write names: [cat, dog]"
        )
    if not names:
        raise DataError(f"{where}: empty — list the class names")
    out = indexed_names(names, where)
    nc = data.get("nc")
    if nc is not None and (not _is_index(nc) or int(nc) != len(out)):
        raise DataError(
            f"{path}: nc: {nc!r} but names lists {len(out)} classes — make them agree (or drop nc)"
        )
    return out


def _resolve(entry: str, base: Path, yaml_dir: Path) -> Path | None:
    entry = entry.replace("\\", "/")
    for root in (base, yaml_dir, yaml_dir.parent):
        cand = (root / entry).resolve()
        if cand.exists():
            return cand
    stripped = entry.lstrip("./")
    cand = (yaml_dir / stripped).resolve()
    return cand if cand.exists() else None


def split_images(
    root: Path, split: str | None
) -> tuple[list[Path], str | None, dict, list[Path], list[Problem]]:
    """Image files of a split, the split's name, the YAML content (``{}`` without one), the image
    folders listed and what their listing left out."""
    yml = find_yaml(root)
    data = _load_yaml(yml) if yml else {}
    base_dir = yml.parent if yml else root
    base = Path(data["path"]) if isinstance(data.get("path"), str) else base_dir
    base = base if base.is_absolute() else base_dir / base
    if split is None:
        split = (
            "train"
            if "train" in data or (root / "train").is_dir() or (root / "images" / "train").is_dir()
            else None
        )
    if split is None:
        return _pack(root / "images", None, data)
    key = split if split in data else SPLIT_ALIASES.get(split)
    if key in data and data[key] is not None:
        entries = data[key] if isinstance(data[key], list) else [data[key]]
        files, folders, problems = [], [], []
        for entry in entries:
            where = _resolve(str(entry), base, base_dir)
            if where is None:
                raise DataError(
                    f"{yml}: {key}: path {entry!r} not found — fix it (relative to 'path:' or to the YAML's folder)"
                )
            if where.is_file():
                files += _read_list(where)
            else:
                found, left = _list_images(where)
                files, folders, problems = files + found, folders + [where], problems + left
        return files, split, data, folders, problems
    for cand in (
        root / split / "images",
        root / "images" / split,
        root / SPLIT_ALIASES.get(split, split) / "images",
    ):
        if cand.is_dir():
            return _pack(cand, split, data)
    raise DataError(
        f"{root}: split {split!r} not found in data.yaml or as {split}/images or images/{split} — pick an existing split"
    )


def _pack(
    folder: Path, split: str | None, data: dict
) -> tuple[list[Path], str | None, dict, list[Path], list[Problem]]:
    files, problems = _list_images(folder)
    return files, split, data, [folder], problems


def _list_images(folder: Path) -> tuple[list[Path], list[Problem]]:
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found — a YOLO dataset needs images/ and labels/")
    return list_images(folder, recursive=True)


def _read_list(path: Path) -> list[Path]:
    lines = [
        ln.strip().replace("\\", "/")
        for ln in path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
        if ln.strip()
    ]
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


def _parse_line(
    fields: list[str], path: str, line: str, num_names: int, problems: list[Problem]
) -> list[float] | None:
    """``class cx cy w h`` (or a polygon) → ``[class, cx, cy, w, h]``; ``None`` with a Problem when unusable."""
    try:
        values = [float(v) for v in fields]
    except ValueError:
        problems.append(
            Problem(
                path,
                line,
                f"not numbers: {' '.join(fields)!r}",
                "write 'class cx cy w h' — box skipped",
                "skipped",
            )
        )
        return None
    if len(values) >= 7 and len(values) % 2 == 1:
        xy = np.asarray(values[1:]).reshape(-1, 2)
        lo, hi = xy.min(0), xy.max(0)
        values = [values[0], *((lo + hi) / 2), *(hi - lo)]
        problems.append(
            Problem(path, line, "polygon (segmentation) label", "its bounding box is used", "info")
        )
    elif len(values) != 5:
        problems.append(
            Problem(
                path,
                line,
                f"needs 5 numbers 'class cx cy w h', got {len(values)}",
                "fix the line — box skipped",
                "skipped",
            )
        )
        return None
    c = values[0]
    if not np.isfinite(c) or c != int(c):
        problems.append(
            Problem(
                path,
                f"{line}.class",
                f"class index {fields[0]} is not a whole number",
                "write the class index as an integer — box skipped",
                "skipped",
            )
        )
        return None
    if not 0 <= c < num_names:
        problems.append(
            Problem(
                path,
                f"{line}.class",
                f"class index {fields[0]} out of range 0..{num_names - 1}",
                "fix the index or the names in data.yaml — box skipped",
                "skipped",
            )
        )
        return None
    if max(values[1:]) > 1 + NORMALISED_SLACK:
        problems.append(
            Problem(
                path,
                line,
                f"coordinates {' '.join(fields[1:])} are not normalised to 0..1 (pixels?)",
                "divide by the image width/height — box skipped",
                "skipped",
            )
        )
        return None
    return values


def parse_label_file(
    path: Path, num_names: int, problems: list[Problem]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a label file into normalised ``cx cy w h [N, 4]``, class indices ``[N]`` and 1-based line numbers ``[N]``."""
    rows, cls, lines = [], [], []
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        values = _parse_line(fields, str(path), f"line {n}", num_names, problems)
        if values is None:
            continue
        rows.append(values[1:])
        cls.append(int(values[0]))
        lines.append(n)
    return np.asarray(rows, np.float64).reshape(-1, 4), np.asarray(cls, np.int64), np.asarray(lines, np.int64)


def class_names(root: Path, data: dict, folders: list[Path], problems: list[Problem]) -> list[str] | None:
    """Names from ``data.yaml``, else from ``classes.txt``; case-only clashes reported (see ``classes.py``)."""
    yml = find_yaml(root)
    names, where = yaml_names(data, yml or root), yml or root
    if names is None:
        spots = [root, root / "labels", *(label_path(f / "x.jpg").parent for f in folders)]
        txt = next((d / "classes.txt" for d in spots if (d / "classes.txt").is_file()), None)
        if txt is not None:
            lines = txt.read_text(encoding="utf-8-sig", errors="replace").splitlines()
            names, where = indexed_names([ln.strip() for ln in lines if ln.strip()], f"{txt}: line"), txt
    for a, b in case_clashes(names or []):
        problems.append(
            Problem(
                str(where),
                f"names[{names.index(b)}]",
                f"class names {a!r} and {b!r} differ only in case",
                "kept as two classes — rename one if they are the same class",
                "warning",
            )
        )
    return names


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
    files, split, data, folders, problems = split_images(root, split)
    names = class_names(root, data, folders, problems)
    if names is None and classes is None:
        raise DataError(
            f"{root}: no class names (data.yaml 'names' or classes.txt) — add one or pass --classes"
        )
    src_names = names if names is not None else list(classes)
    out_names = list(classes) if classes is not None else src_names
    lookup = label_lookup(out_names)
    to_label = np.asarray([lookup.get(n, -1) for n in src_names], np.int64)
    for k in np.flatnonzero(to_label < 0):
        problems.append(
            Problem(
                str(find_yaml(root) or root),
                f"names[{k}]",
                f"class {src_names[k]!r} is not in the class list",
                "add it to --classes — its boxes skipped",
                "skipped",
            )
        )
    records = [_read_one(i, image, len(src_names), to_label, problems) for i, image in enumerate(files)]
    report_orphan_labels(files, folders, {nfc(str(Path(p.file).with_suffix(""))) for p in problems}, problems)
    source = [src_names.index(n) if n in src_names else None for n in out_names]
    return Records([r for r in records if r is not None], out_names, source, "yolo", root, split, problems)


def report_orphan_labels(
    files: list[Path], folders: list[Path], reported: set[str], problems: list[Problem]
) -> None:
    """One ``skipped`` line per label file under the split's label folders that no listed image uses.

    ``reported``: image paths without suffix that already have a line (a broken link, …): their
    label file needs none of its own.
    """
    used = {nfc(str(label_path(f))) for f in files}
    for folder in folders:
        labels = label_path(folder / "x.jpg").parent
        if labels == folder or not labels.is_dir():
            continue  # labels beside the images: any .txt there may be a list file, not a label
        found, _ = list_files(labels, lambda n: has_ext(n, ".txt") and n != "classes.txt", recursive=True)
        for txt in found:
            image = folder / txt.relative_to(labels).with_suffix("")
            if nfc(str(txt)) in used or nfc(str(image)) in reported:
                continue
            problems.append(
                Problem(
                    str(txt),
                    "file",
                    f"label file without an image (no {image.name}.<image ext> in {image.parent})",
                    "labels not read — add the image or delete the file",
                    "skipped",
                )
            )


def _read_one(
    image_id: int, image: Path, num_names: int, to_label: np.ndarray, problems: list[Problem]
) -> ImageRecord | None:
    labels_file = label_path(image)
    size = displayed_size(image) if image.is_file() else None
    if size is None:
        problems.append(
            Problem(
                str(image),
                "file",
                "missing or unreadable image (its size is needed for YOLO labels)",
                "replace or remove the image — image skipped",
                "skipped",
            )
        )
        return None
    if (bad := link_problem(labels_file)) is not None:
        problems.append(
            Problem(
                bad.file, "file", f"label file is a {bad.message}", "fix the link — image skipped", "skipped"
            )
        )
        return None
    w, h = size
    if labels_file.is_file():
        cxcywh, cls, lines = parse_label_file(labels_file, num_names, problems)
    else:
        problems.append(
            Problem(
                str(image),
                "labels",
                f"no label file {labels_file.name}",
                "image used as a negative (no boxes)",
                "info",
            )
        )
        cxcywh, cls, lines = np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1) * [
        w,
        h,
        w,
        h,
    ]  # [N, 4]
    labels = to_label[cls] if cls.size else cls
    keep = labels >= 0
    n = int(keep.sum())
    return ImageRecord(
        image_id=image_id,
        file=image,
        width=w,
        height=h,
        boxes=xyxy[keep].astype(np.float32),
        labels=labels[keep],
        difficult=np.zeros(n, bool),
        iscrowd=np.zeros(n, bool),
        ann_file=labels_file,
        extra={"stem": image.stem, "lines": lines[keep]},
    )
