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

What real exports vary in, and how it is read: a default namespace
(``<annotation xmlns="…">``, some CVAT and web tools) is ignored; flags
(``difficult``, ``truncated``, ``iscrowd``) accept ``0/1``, ``true/false``, ``yes/no``
in any case, anything else is reported and read as 0; ``<filename>`` may be a
Windows or absolute path (its last component is looked up in the image folder) or
lack its extension. An image is found by ``<filename>``, else by the XML's stem
(see :class:`~detlab.data.formats.images.ImageIndex`). When two XML files lead to
one image, the one whose stem matches the image keeps it (else the first by name);
the other is skipped with one line naming both.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detlab.data.formats.classes import case_clashes, label_lookup, resolve_names
from detlab.data.formats.images import (
    ImageIndex,
    has_ext,
    is_image_name,
    link_problem,
    list_files,
    nfc,
    safe_join,
)
from detlab.data.records import ImageRecord, Problem, Records
from detlab.errors import DataError

FLAGS = {"0": False, "1": True, "false": False, "true": True, "no": False, "yes": True}


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


def _flag(obj: ET.Element, tag: str, xml: str, where: str, problems: list[Problem]) -> bool:
    value = _text(obj, tag)
    if not value:
        return False
    key = value.lower()
    if key in FLAGS:
        return FLAGS[key]
    try:
        return float(key) != 0  # 0.0 / 1.0 from tools that write every number as a float
    except ValueError:
        problems.append(
            Problem(xml, f"{where}.{tag}", f"not a flag: {value!r}", "read as 0 — write 0 or 1", "warning")
        )
        return False


def _parse_size(root: ET.Element, xml: str, problems: list[Problem]) -> tuple[int, int]:
    size = root.find("size")
    try:
        width, height = int(float(_text(size, "width"))), int(float(_text(size, "height")))
    except (TypeError, ValueError):
        width = height = 0
    if width <= 0 or height <= 0:
        # Not fatal: the load-time check reads the size from the image header.
        problems.append(
            Problem(xml, "size", "no usable <size><width>/<height>", "size read from the image file", "info")
        )
        return 0, 0
    return width, height


def _strip_namespaces(root: ET.Element) -> None:
    """``{uri}object`` → ``object``: a default namespace changes no VOC field."""
    for node in root.iter():
        if isinstance(node.tag, str) and node.tag.startswith("{"):
            node.tag = node.tag.split("}", 1)[1]


def _parse_box(obj: ET.Element, xml: str, where: str, problems: list[Problem]) -> list[float] | None:
    bnd = obj.find("bndbox")
    if bnd is None:
        problems.append(
            Problem(
                xml, f"{where}.bndbox", "missing <bndbox>", "add xmin/ymin/xmax/ymax — box skipped", "skipped"
            )
        )
        return None
    values = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = _text(bnd, tag)
        try:
            values.append(float(text))
        except (TypeError, ValueError):
            problems.append(
                Problem(
                    xml,
                    f"{where}.bndbox.{tag}",
                    f"not a number: {text!r}",
                    "write a pixel index — box skipped",
                    "skipped",
                )
            )
            return None
    if not np.all(np.isfinite(values)):
        problems.append(
            Problem(
                xml,
                f"{where}.bndbox",
                f"NaN or infinite coordinate {values}",
                "write finite pixel indices — box skipped",
                "skipped",
            )
        )
        return None
    xmin, ymin, xmax, ymax = values
    if xmax <= xmin or ymax <= ymin:
        problems.append(
            Problem(
                xml,
                f"{where}.bndbox",
                f"zero or negative size (xmin={xmin:g} xmax={xmax:g} ymin={ymin:g} ymax={ymax:g})",
                "fix or delete this object — box skipped",
                "skipped",
            )
        )
        return None
    return [xmin - 1.0, ymin - 1.0, xmax, ymax]


class NotVoc(ValueError):
    """An XML file whose root is not ``<annotation>`` (e.g. a CVAT ``annotations.xml``)."""


def parse_voc_xml(path: Path) -> VocAnnotation:
    """Parse one VOC XML file.

    Args:
        path: the XML file.

    Returns:
        The annotation; its ``problems`` list holds per-field findings.

    Raises:
        xml.etree.ElementTree.ParseError: malformed XML (see :func:`read_xml_or_problem`).
        NotVoc: the root element is not ``<annotation>``.
    """
    xml = str(path)
    problems: list[Problem] = []
    root = ET.parse(path).getroot()
    _strip_namespaces(root)
    if root.tag != "annotation":
        raise NotVoc(root.tag)
    width, height = _parse_size(root, xml, problems)
    boxes, names, difficult, truncated, crowd, objects = [], [], [], [], [], []
    for i, obj in enumerate(root.findall("object")):
        where = f"object[{i}]"
        name = _text(obj, "name")
        if not name:
            problems.append(
                Problem(xml, f"{where}.name", "missing class name", "add <name> — box skipped", "skipped")
            )
            continue
        box = _parse_box(obj, xml, where, problems)
        if box is None:
            continue
        boxes.append(box)
        names.append(name)
        difficult.append(_flag(obj, "difficult", xml, where, problems))
        truncated.append(_flag(obj, "truncated", xml, where, problems))
        crowd.append(_flag(obj, "iscrowd", xml, where, problems))
        objects.append(i)
    return VocAnnotation(
        xml=path,
        filename=_text(root, "filename"),
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        names=names,
        difficult=np.asarray(difficult, bool),
        truncated=np.asarray(truncated, bool),
        iscrowd=np.asarray(crowd, bool),
        objects=np.asarray(objects, np.int64),
        problems=problems,
    )


def read_xml_or_problem(path: Path) -> tuple[VocAnnotation | None, Problem | None]:
    """:func:`parse_voc_xml`, turning an unreadable, malformed or non-VOC file into a skip Problem."""
    try:
        return parse_voc_xml(path), None
    except ET.ParseError as e:
        return None, Problem(
            str(path), "xml", f"malformed XML ({e})", "fix or delete the file — image skipped", "skipped"
        )
    except NotVoc as e:
        return None, Problem(
            str(path),
            "xml",
            f"root element <{e}> is not <annotation>: not a PASCAL VOC file",
            "export VOC XML (one file per image) — file skipped",
            "skipped",
        )
    except OSError as e:
        return None, Problem(
            str(path),
            "file",
            f"cannot read ({e.strerror or e})",
            "check permissions — image skipped",
            "skipped",
        )


def _is_absolute(name: str) -> bool:
    """POSIX ``/…``, Windows ``C:/…`` or ``//server/…`` (backslashes already turned into ``/``)."""
    return name.startswith("/") or re.match(r"^[A-Za-z]:/", name) is not None


def image_for(ann: VocAnnotation, index: ImageIndex, stem: str, problems: list[Problem]) -> Path | None:
    """The image for an annotation, looked up in ``index`` (one image folder).

    Order: ``<filename>`` as a path inside the folder; its last component (Windows and
    absolute paths: the folder is the dataset's, the name is what identifies the image);
    the stem of ``<filename>``, then the XML's stem, with any image extension in any case.

    Returns:
        The image, the best guess when nothing exists (the check reports it as missing), or
        ``None`` with a skip Problem when ``<filename>`` is relative and escapes the folder (``../``)
        or names a broken or looping link (reported once, by the listing when it saw it).
    """
    folder, xml = index.folder, str(ann.xml)
    stems, base = [stem], None
    if ann.filename:
        name = ann.filename.replace("\\", "/")
        if not _is_absolute(name):
            direct = safe_join(folder, name)
            if direct is None:
                problems.append(
                    Problem(
                        xml,
                        "filename",
                        f"{ann.filename!r} escapes the dataset folder",
                        f"use a name inside {folder.name}/ — image skipped",
                        "skipped",
                    )
                )
                return None
            if direct.is_file():
                return direct
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if (hit := index.by_name(base)) is not None:
            return hit
        stems.insert(0, Path(base).stem if is_image_name(base) else base)
    for s in dict.fromkeys(stems):
        found, folded = index.by_stem(s)
        if not found:
            continue
        if len(found) > 1:
            problems.append(
                Problem(
                    xml,
                    "filename",
                    f"images {', '.join(p.name for p in found)} share the stem {s!r}",
                    f"{found[0].name} used — name the image in <filename>",
                    "warning",
                )
            )
        if folded:
            problems.append(
                Problem(
                    xml,
                    "filename",
                    f"no image {s!r}; {found[0].name} matches it ignoring case",
                    f"{found[0].name} used — make the names match",
                    "info",
                )
            )
        return found[0]
    guess = folder / (base or f"{stem}.jpg")
    if (bad := link_problem(guess)) is not None:
        if bad.file not in index.reported:
            problems.append(bad)
        return None
    return guess


def one_record_per_image(
    pairs: list[tuple[VocAnnotation, Path]], problems: list[Problem]
) -> list[tuple[VocAnnotation, Path]]:
    """Keep one annotation per image: the XML whose stem matches the image, else the first; report the rest."""
    claims: dict[str, list[int]] = {}
    for i, (_, image) in enumerate(pairs):
        claims.setdefault(os.path.realpath(image), []).append(i)
    dropped = set()
    for members in claims.values():
        if len(members) < 2:
            continue
        image = pairs[members[0]][1]
        keep = next((i for i in members if nfc(pairs[i][0].xml.stem) == nfc(image.stem)), members[0])
        for i in members:
            if i != keep:
                dropped.add(i)
                problems.append(
                    Problem(
                        str(pairs[i][0].xml),
                        "filename",
                        f"leads to {image.name}, which {pairs[keep][0].xml.name} already annotates",
                        "fix <filename> or delete this XML — XML skipped",
                        "skipped",
                    )
                )
    return [p for i, p in enumerate(pairs) if i not in dropped]


def annotations_to_records(
    pairs: list[tuple[VocAnnotation, Path]],
    classes: list[str] | None,
    root: Path,
    fmt: str,
    split: str | None,
    problems: list[Problem],
) -> Records:
    """Turn parsed XML plus image paths into :class:`Records` with a class list.

    Class names are exact strings: ``RBC`` and ``rbc`` are two classes, and each such
    pair is reported as a warning naming both and where the second spelling first occurs.

    Args:
        pairs: (annotation, image path) per image, in output order.
        classes: the user's class list, or ``None`` (sorted names found).
        root, fmt, split: stored on the Records.
        problems: findings so far; extended with unknown-class skips and name clashes.
    """
    found = [n for ann, _ in pairs for n in ann.names]
    names = resolve_names(found, classes, sort=True)
    first = {}
    for ann, _ in pairs:
        for n, i in zip(ann.names, ann.objects):
            first.setdefault(n, (str(ann.xml), f"object[{i}].name"))
    for a, b in case_clashes(list(dict.fromkeys(found))):
        problems.append(
            Problem(
                *first[b],
                f"class names {a!r} and {b!r} differ only in case",
                "kept as two classes — rename one if they are the same class",
                "warning",
            )
        )
    lookup = label_lookup(names)
    images = []
    for image_id, (ann, image) in enumerate(pairs):
        problems.extend(ann.problems)
        labels = np.asarray([lookup.get(n, -1) for n in ann.names], np.int64)
        for i in np.flatnonzero(labels < 0):
            problems.append(
                Problem(
                    str(ann.xml),
                    f"object[{ann.objects[i]}].name",
                    f"class {ann.names[i]!r} is not in the class list",
                    "add it to --classes or rename it — box skipped",
                    "skipped",
                )
            )
        keep = labels >= 0
        images.append(
            ImageRecord(
                image_id=image_id,
                file=image,
                width=ann.width,
                height=ann.height,
                boxes=ann.boxes[keep],
                labels=labels[keep],
                difficult=ann.difficult[keep],
                iscrowd=ann.iscrowd[keep],
                ann_file=ann.xml,
                extra={"stem": ann.xml.stem, "truncated": ann.truncated[keep], "objects": ann.objects[keep]},
            )
        )
    return Records(images, names, list(names), fmt, root, split, problems)


def list_xml(folder: Path) -> tuple[dict[str, Path], list[Problem]]:
    """XML files of a folder by (Unicode-normalised) stem, ``.xml`` in any case; AppleDouble files reported."""
    files, problems = list_files(folder, lambda n: has_ext(n, ".xml"))
    return {nfc(p.stem): p for p in files}, problems


def pair_annotations(
    stems: list[str], xml_by_stem: dict[str, Path], index: ImageIndex, problems: list[Problem]
) -> tuple[list[tuple[VocAnnotation, Path]], set[str]]:
    """Parse the XML of each stem and find its image.

    Returns:
        The (annotation, image) pairs, one per image (see :func:`one_record_per_image`), and the stems of XML files that were read or
        reported (their images need no "no annotation" line of their own).
    """
    pairs, covered = [], set()
    for stem in stems:
        xml = xml_by_stem[nfc(stem)]
        covered.add(nfc(stem))
        ann, problem = read_xml_or_problem(xml)
        if ann is None:
            problems.append(problem)
            continue
        image = image_for(ann, index, xml.stem, problems)
        if image is not None:
            pairs.append((ann, image))
    return one_record_per_image(pairs, problems), covered


def report_unannotated(
    index: ImageIndex,
    pairs: list[tuple[VocAnnotation, Path]],
    covered: set[str],
    where: str,
    problems: list[Problem],
) -> None:
    """One ``skipped`` line per image no annotation leads to, saying why (no XML, or its XML names another image)."""
    used = {os.path.realpath(image) for _, image in pairs}
    by_stem = {nfc(ann.xml.stem): (ann, image) for ann, image in pairs}
    for image in index.files:
        stem = nfc(image.stem)
        if os.path.realpath(image) in used or (stem in covered and stem not in by_stem):
            continue
        if stem in by_stem:
            ann, other = by_stem[stem]
            msg = f"{ann.xml.name} is used for {other.name}, not for this image"
        else:
            msg = f"no {where}{image.stem}.xml"
        problems.append(
            Problem(
                str(image),
                "annotation",
                msg,
                "image not read — add an XML (one with no <object> for a negative)",
                "skipped",
            )
        )


def split_ids(year: Path, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt`` (a line is an id, or an id and a flag).

    Raises:
        DataError: the split file does not exist (names the ones that do).
    """
    path = year / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in (year / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DataError(
            f"{path}: split {split!r} not found — use one of {have or 'no splits (omit --split)'}"
        )
    lines = [
        ln.strip() for ln in path.read_text(encoding="utf-8-sig", errors="replace").splitlines() if ln.strip()
    ]
    # An id may hold spaces (``my photo``): the whole line is the id when such an XML exists.
    return [
        ln if " " in ln and (year / "Annotations" / f"{ln}.xml").is_file() else ln.split()[0] for ln in lines
    ]


def read_voc_year(year: Path, split: str | None = None, classes: list[str] | None = None) -> Records:
    """Read a VOC year folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``).

    Args:
        year: the folder.
        split: a name in ``ImageSets/Main``; ``None`` reads every XML in ``Annotations/``.
        classes: the user's class list, or ``None``.

    Returns:
        Records with boxes in continuous xyxy pixels (see module docstring).
    """
    xml_by_stem, problems = list_xml(year / "Annotations")
    index = ImageIndex(year / "JPEGImages")
    ids = split_ids(year, split) if split else sorted(xml_by_stem)
    wanted = {nfc(s) for s in ids}
    problems += [p for p in index.problems if split is None or nfc(Path(p.file).stem) in wanted]
    stems = []
    for stem in ids:
        if nfc(stem) in xml_by_stem:
            stems.append(stem)
        else:
            problems.append(
                Problem(
                    str(year / "Annotations" / f"{stem}.xml"),
                    "file",
                    f"missing annotation for image id {stem!r} listed in split {split!r}",
                    "add the XML or remove the id — image skipped",
                    "skipped",
                )
            )
    pairs, covered = pair_annotations(stems, xml_by_stem, index, problems)
    if split is None:
        report_unannotated(index, pairs, covered, "Annotations/", problems)
    return annotations_to_records(pairs, classes, year, "voc", split, problems)


def read_vocdevkit(devkit: Path, split: str | None = None, classes: list[str] | None = None) -> list[Records]:
    """Read every year folder under a ``VOCdevkit/`` root (years that lack the split are reported, not read)."""
    parts, missing = [], []
    for year in sorted(p for p in devkit.iterdir() if p.is_dir() and is_voc_year(p)):
        if split and not (year / "ImageSets" / "Main" / f"{split}.txt").is_file():
            missing.append(
                Problem(
                    str(year), "ImageSets/Main", f"no split {split!r} in this year", "year not read", "info"
                )
            )
            continue
        parts.append(read_voc_year(year, split, classes))
    if not parts:
        raise DataError(
            f"{devkit}: no VOC year folder has split {split!r} — pick a split that exists, e.g. trainval"
        )
    parts[0].problems[:0] = missing
    return parts
