"""A folder of images with VOC XML files beside them, or in a sibling folder of any name.

Images pair with XML files by file stem (``a.jpg`` ↔ ``a.xml``; extensions in any
case, see ``formats/images.py``). An image without an XML file is not read (no
annotation means "not labelled", not "no objects"; write an XML with no ``<object>``
for a negative) and is reported; an XML without an image is reported by the checks as
a missing image. Box coordinates and image lookup follow ``formats/voc.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from detlab.data.formats.images import ImageIndex, has_ext, is_appledouble, is_image_name, nfc
from detlab.data.formats.voc import annotations_to_records, list_xml, pair_annotations, report_unannotated
from detlab.data.records import Records
from detlab.errors import DataError


def _stems(folder: Path, test) -> set[str]:
    try:
        return {nfc(Path(n).stem) for n in os.listdir(folder) if test(n) and not is_appledouble(n)}
    except OSError:
        return set()


def _image_stems(folder: Path) -> set[str]:
    return _stems(folder, is_image_name)


def _xml_stems(folder: Path) -> set[str]:
    return _stems(folder, lambda n: has_ext(n, ".xml"))


def find_folders(path: Path) -> tuple[Path, Path] | None:
    """The image folder and the XML folder for ``path``, or ``None`` when it is not this layout.

    ``path`` may be the image folder (XML beside it or in a sibling) or a parent holding both.
    """
    if not path.is_dir():
        return None
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    image_dir = path if _image_stems(path) else next((d for d in subdirs if _image_stems(d)), None)
    if image_dir is None:
        return None
    stems = _image_stems(image_dir)
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
        raise DataError(
            f"{path}: no images with matching .xml files found — put each image's VOC XML beside it or in a sibling folder"
        )
    image_dir, xml_dir = folders
    index = ImageIndex(image_dir)
    xml_by_stem, problems = list_xml(xml_dir)
    if xml_dir != image_dir:
        problems += index.problems
    else:
        seen = {p.file for p in problems}
        problems += [p for p in index.problems if p.file not in seen]
    pairs, covered = pair_annotations(sorted(xml_by_stem), xml_by_stem, index, problems)
    report_unannotated(index, pairs, covered, f"{xml_dir}{os.sep}", problems)
    return annotations_to_records(pairs, classes, path, "folder", None, problems)
