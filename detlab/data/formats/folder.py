"""A folder of images with VOC XML files beside them, or in a sibling folder of any name.

Images pair with XML files by file stem (``a.jpg`` ↔ ``a.xml``). An image without an
XML file is not read (no annotation means "not labelled", not "no objects"; write an
XML with no ``<object>`` for a negative) and is reported; an XML without an image is
reported by the checks as a missing image. Box coordinates follow ``formats/voc.py``.
"""

from __future__ import annotations

from pathlib import Path

from detlab.data.formats.voc import IMAGE_EXTS, annotations_to_records, image_for, read_xml_or_problem
from detlab.data.records import Problem, Records
from detlab.errors import DataError


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in IMAGE_EXTS and p.is_file())


def _xml_stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.xml")}


def find_folders(path: Path) -> tuple[Path, Path] | None:
    """The image folder and the XML folder for ``path``, or ``None`` when it is not this layout.

    ``path`` may be the image folder (XML beside it or in a sibling) or a parent holding both.
    """
    if not path.is_dir():
        return None
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    image_dir = path if _images_in(path) else next((d for d in subdirs if _images_in(d)), None)
    if image_dir is None:
        return None
    stems = {p.stem for p in _images_in(image_dir)}
    candidates = [image_dir] + sorted(p for p in image_dir.parent.iterdir() if p.is_dir() and p != image_dir)
    best = max(candidates, key=lambda d: len(_xml_stems(d) & stems))
    return (image_dir, best) if _xml_stems(best) & stems else None


def is_folder(path: Path) -> bool:
    """Images with matching VOC XML beside them or in a sibling folder."""
    return find_folders(path) is not None


def read_folder(path: Path, classes: list[str] | None = None) -> Records:
    """Read an image folder with VOC XML annotations.

    Args:
        path: the image folder, or a folder holding the image and XML folders.
        classes: the user's class list, or ``None`` (sorted names found).

    Returns:
        Records with boxes ``float32 [N, 4]`` xyxy continuous pixels (VOC shift applied).
    """
    folders = find_folders(path)
    if folders is None:
        raise DataError(f"{path}: no images with matching .xml files found — put each image's VOC XML beside it or in a sibling folder")
    image_dir, xml_dir = folders
    problems: list[Problem] = []
    pairs = []
    xml_by_stem = {p.stem: p for p in xml_dir.glob("*.xml")}
    for image in _images_in(image_dir):
        if image.stem not in xml_by_stem:
            problems.append(Problem(str(image), "annotation", f"no {image.stem}.xml in {xml_dir}",
                                    "image not read — add an XML (one with no <object> for a negative)", "skipped"))
    for stem in sorted(xml_by_stem):
        ann, problem = read_xml_or_problem(xml_by_stem[stem])
        if ann is None:
            problems.append(problem)
            continue
        image = image_for(ann, image_dir, stem, problems)
        if image is not None:
            pairs.append((ann, image))
    return annotations_to_records(pairs, classes, path, "folder", None, problems)
