"""PASCAL VOC XML: a year folder, a ``VOCdevkit/`` root, and the XML writer.

Coordinate convention (the one place it is defined): VOC ``bndbox`` values are
1-based *inclusive pixel indices* — ``xmin=1, xmax=10`` covers the first ten pixel
columns. detlab's frame is continuous (see ``records.py``), so that box is
``x1=0, x2=10``::

    x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax      (reading)
    xmin = x1 + 1,  ymin = y1 + 1,  xmax = x2,  ymax = y2      (writing)

Both directions are exact, so VOC → detlab → VOC reproduces every number. A box with
``xmax <= xmin`` (or ``ymax <= ymin``) in the file is reported as zero-size and
skipped: although the devkit would read ``xmin == xmax`` as a one-pixel box, such
boxes are mis-clicks in practice.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detlab.data.formats.classes import label_lookup, resolve_names
from detlab.data.records import ImageRecord, Problem, Records
from detlab.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPG", ".JPEG", ".PNG")


@dataclass
class VocAnnotation:
    """One parsed XML file, boxes already in detlab's continuous xyxy frame.

    Attributes:
        xml: the XML file.
        filename: the ``<filename>`` text, or ``None``.
        width, height: ``<size>`` values (0 when absent).
        boxes: ``float32 [N, 4]`` xyxy continuous pixels.
        names: ``N`` class names.
        difficult, truncated: ``bool [N]``.
        iscrowd: ``bool [N]`` from an optional ``<iscrowd>`` tag (what ``detlab convert`` writes for COCO's flag).
        objects: ``int64 [N]`` index of each box's ``<object>`` in the file (for messages).
    """

    xml: Path
    filename: str | None
    width: int
    height: int
    boxes: np.ndarray
    names: list[str]
    difficult: np.ndarray
    truncated: np.ndarray
    iscrowd: np.ndarray
    objects: np.ndarray
    problems: list[Problem] = field(default_factory=list)


def is_voc_year(path: Path) -> bool:
    """A folder with ``Annotations/`` and ``JPEGImages/`` (a VOC year folder)."""
    return (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir()


def is_vocdevkit(path: Path) -> bool:
    """A folder whose sub-folders include VOC year folders (``VOCdevkit/``)."""
    return path.is_dir() and any(is_voc_year(p) for p in path.iterdir() if p.is_dir())


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def _flag(obj: ET.Element, tag: str) -> bool:
    value = _text(obj, tag)
    try:
        return bool(int(float(value))) if value else False
    except ValueError:
        return False


def _parse_size(root: ET.Element, xml: str, problems: list[Problem]) -> tuple[int, int]:
    size = root.find("size")
    try:
        return int(float(_text(size, "width"))), int(float(_text(size, "height")))
    except (TypeError, ValueError):
        # Not fatal: the load-time check reads the size from the image header.
        problems.append(Problem(xml, "size", "no usable <size><width>/<height>", "size read from the image file", "info"))
        return 0, 0


def _parse_box(obj: ET.Element, xml: str, where: str, problems: list[Problem]) -> list[float] | None:
    bnd = obj.find("bndbox")
    if bnd is None:
        problems.append(Problem(xml, f"{where}.bndbox", "missing <bndbox>", "add xmin/ymin/xmax/ymax — box skipped", "skipped"))
        return None
    values = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = _text(bnd, tag)
        try:
            values.append(float(text))
        except (TypeError, ValueError):
            problems.append(Problem(xml, f"{where}.bndbox.{tag}", f"not a number: {text!r}", "write a pixel index — box skipped", "skipped"))
            return None
    if not np.all(np.isfinite(values)):
        problems.append(Problem(xml, f"{where}.bndbox", f"NaN or infinite coordinate {values}", "write finite pixel indices — box skipped", "skipped"))
        return None
    xmin, ymin, xmax, ymax = values
    if xmax <= xmin or ymax <= ymin:
        problems.append(Problem(xml, f"{where}.bndbox", f"zero or negative size (xmin={xmin:g} xmax={xmax:g} ymin={ymin:g} ymax={ymax:g})",
                                "fix or delete this object — box skipped", "skipped"))
        return None
    return [xmin - 1.0, ymin - 1.0, xmax, ymax]


def parse_voc_xml(path: Path) -> VocAnnotation:
    """Parse one VOC XML file.

    Args:
        path: the XML file.

    Returns:
        The annotation; its ``problems`` list holds per-field findings.

    Raises:
        xml.etree.ElementTree.ParseError: malformed XML (see :func:`read_xml_or_problem`).
    """
    xml = str(path)
    problems: list[Problem] = []
    root = ET.parse(path).getroot()
    width, height = _parse_size(root, xml, problems)
    boxes, names, difficult, truncated, crowd, objects = [], [], [], [], [], []
    for i, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        if not name:
            problems.append(Problem(xml, f"object[{i}].name", "missing class name", "add <name> — box skipped", "skipped"))
            continue
        box = _parse_box(obj, xml, f"object[{i}]", problems)
        if box is None:
            continue
        boxes.append(box)
        names.append(name)
        difficult.append(_flag(obj, "difficult"))
        truncated.append(_flag(obj, "truncated"))
        crowd.append(_flag(obj, "iscrowd"))
        objects.append(i)
    return VocAnnotation(
        xml=path, filename=_text(root, "filename"), width=width, height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4), names=names,
        difficult=np.asarray(difficult, bool), truncated=np.asarray(truncated, bool),
        iscrowd=np.asarray(crowd, bool), objects=np.asarray(objects, np.int64), problems=problems,
    )


def read_xml_or_problem(path: Path) -> tuple[VocAnnotation | None, Problem | None]:
    """:func:`parse_voc_xml`, turning an unreadable or malformed file into a skip Problem."""
    try:
        return parse_voc_xml(path), None
    except ET.ParseError as e:
        return None, Problem(str(path), "xml", f"malformed XML ({e})", "fix or delete the file — image skipped", "skipped")
    except OSError as e:
        return None, Problem(str(path), "file", f"cannot read ({e.strerror or e})", "check permissions — image skipped", "skipped")


def safe_join(folder: Path, name: str) -> Path | None:
    """``folder / name`` when it stays inside ``folder``; ``None`` when ``name`` escapes it (``../``)."""
    if os.path.isabs(name):
        return None
    joined = os.path.normpath(os.path.join(folder, name))
    base = os.path.normpath(folder)
    return Path(joined) if joined == base or joined.startswith(base + os.sep) else None


def image_for(ann: VocAnnotation, folder: Path, stem: str, problems: list[Problem]) -> Path | None:
    """The image for an annotation: ``<filename>`` in ``folder`` if present, else ``<stem>.<ext>``.

    Returns the best guess even when nothing exists (the check reports it as missing), or
    ``None`` with a skip Problem when ``<filename>`` escapes ``folder`` (``../``).
    """
    if ann.filename:
        direct = safe_join(folder, ann.filename)
        if direct is None:
            problems.append(Problem(str(ann.xml), "filename", f"{ann.filename!r} escapes the dataset folder",
                                    f"use a name inside {folder.name}/ — image skipped", "skipped"))
            return None
        if direct.is_file():
            return direct
    for ext in IMAGE_EXTS:
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return folder / (ann.filename or f"{stem}.jpg")


def annotations_to_records(pairs: list[tuple[VocAnnotation, Path]], classes: list[str] | None,
                           root: Path, fmt: str, split: str | None, problems: list[Problem]) -> Records:
    """Turn parsed XML plus image paths into :class:`Records` with a class list.

    Args:
        pairs: (annotation, image path) per image, in output order.
        classes: the user's class list, or ``None`` (sorted names found).
        root, fmt, split: stored on the Records.
        problems: findings so far; extended with unknown-class skips.
    """
    found = [n for ann, _ in pairs for n in ann.names]
    names = resolve_names(found, classes, sort=True)
    lookup = label_lookup(names)
    images = []
    for image_id, (ann, image) in enumerate(pairs):
        problems.extend(ann.problems)
        labels = np.asarray([lookup.get(n, -1) for n in ann.names], np.int64)
        for i in np.flatnonzero(labels < 0):
            problems.append(Problem(str(ann.xml), f"object[{ann.objects[i]}].name", f"class {ann.names[i]!r} is not in the class list",
                                    "add it to --classes or rename it — box skipped", "skipped"))
        keep = labels >= 0
        images.append(ImageRecord(
            image_id=image_id, file=image, width=ann.width, height=ann.height,
            boxes=ann.boxes[keep], labels=labels[keep], difficult=ann.difficult[keep],
            iscrowd=ann.iscrowd[keep], ann_file=ann.xml,
            extra={"stem": ann.xml.stem, "truncated": ann.truncated[keep], "objects": ann.objects[keep]},
        ))
    return Records(images, names, list(names), fmt, root, split, problems)


def split_ids(year: Path, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt``.

    Raises:
        DataError: the split file does not exist (names the ones that do).
    """
    path = year / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in (year / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{path}: split {split!r} not found — use one of {have or 'no splits (omit --split)'}")
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def read_voc_year(year: Path, split: str | None = None, classes: list[str] | None = None) -> Records:
    """Read a VOC year folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``).

    Args:
        year: the folder.
        split: a name in ``ImageSets/Main``; ``None`` reads every XML in ``Annotations/``.
        classes: the user's class list, or ``None``.

    Returns:
        Records with boxes in continuous xyxy pixels (see module docstring).
    """
    ann_dir, img_dir = year / "Annotations", year / "JPEGImages"
    ids = split_ids(year, split) if split else sorted(p.stem for p in ann_dir.glob("*.xml"))
    problems: list[Problem] = []
    pairs = []
    for stem in ids:
        xml = ann_dir / f"{stem}.xml"
        if not xml.is_file():
            problems.append(Problem(str(xml), "file", f"missing annotation for image id {stem!r} listed in split {split!r}",
                                    "add the XML or remove the id — image skipped", "skipped"))
            continue
        ann, problem = read_xml_or_problem(xml)
        if ann is None:
            problems.append(problem)
            continue
        image = image_for(ann, img_dir, stem, problems)
        if image is not None:
            pairs.append((ann, image))
    if split is None:
        listed = set(ids)
        for image in sorted(p for p in img_dir.iterdir() if p.suffix in IMAGE_EXTS and p.stem not in listed):
            problems.append(Problem(str(image), "annotation", f"no Annotations/{image.stem}.xml",
                                    "image not read — add an XML (one with no <object> for a negative)", "skipped"))
    return annotations_to_records(pairs, classes, year, "voc", split, problems)


def read_vocdevkit(devkit: Path, split: str | None = None, classes: list[str] | None = None) -> list[Records]:
    """Read every year folder under a ``VOCdevkit/`` root (years that lack the split are reported, not read)."""
    parts, missing = [], []
    for year in sorted(p for p in devkit.iterdir() if p.is_dir() and is_voc_year(p)):
        if split and not (year / "ImageSets" / "Main" / f"{split}.txt").is_file():
            missing.append(Problem(str(year), "ImageSets/Main", f"no split {split!r} in this year", "year not read", "info"))
            continue
        parts.append(read_voc_year(year, split, classes))
    if not parts:
        raise DataError(f"{devkit}: no VOC year folder has split {split!r} — pick a split that exists, e.g. trainval")
    parts[0].problems[:0] = missing
    return parts
