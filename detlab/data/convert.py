"""``detlab convert``: write Records as COCO, VOC or YOLO, losslessly where the target can hold it.

What is kept, per target:

- **COCO** (``DST/annotations/instances_<split>.json``, images in ``DST/images/<split>/``,
  or ``DST.json`` with images in ``images/`` beside it): class names and source
  category ids (1..C when the source has none), image sizes, ``iscrowd``, and VOC's
  ``difficult`` as an extra per-annotation key ``"difficult": 0|1`` (COCO tools ignore
  it; detlab reads it back). Original annotation ids and areas when they were COCO.
- **VOC** (``DST/Annotations``, ``DST/JPEGImages``, ``DST/ImageSets/Main/<split>.txt``):
  names, sizes, ``difficult``, ``truncated``, and COCO's ``iscrowd`` as an extra
  ``<iscrowd>1</iscrowd>`` object tag. Coordinates per ``formats/voc.py`` (exact).
- **YOLO** (``DST/images/<split>``, ``DST/labels/<split>``, ``DST/data.yaml``): names and
  boxes (normalised with 10 decimals: < 1e-6 px error). YOLO has no ``difficult`` /
  ``iscrowd``: such boxes are written as normal boxes and counted in a warning.
  ``data.yaml`` is what Ultralytics loads: an absolute ``path``, splits under ``train`` /
  ``val`` / ``test`` whatever the source calls them (:func:`yolo_split_key`), and class
  indices in the source's category order — a COCO source's categories without boxes stay
  class names, so a COCO-80 file keeps its 80 indices (:func:`yolo_class_order`).

Every target gets boxes and sizes in the frame of the image as displayed (EXIF
orientation applied), the frame its readers use: an EXIF-rotated image annotated in
its raw pixel grid (see ``dataset.boxes_in_display_frame``) has its boxes turned and
its width/height swapped before writing (see :func:`to_display_frame`).

Images are hard-linked into the destination (no copy, same bytes); when the
destination is on another file system they are copied. Writing a second split into
the same destination adds to it (``data.yaml`` and ``ImageSets`` are updated).
A write that fails (disk full, read-only, a bad record) leaves the destination as it
was (see :func:`write_all_or_nothing`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import yaml

from detlab.data.records import ImageRecord, Problem, Records
from detlab.errors import DataError, writing
from detlab.log import logger

TARGETS = ("coco", "voc", "yolo")


def place_image(src: Path, dst: Path, link: str = "hardlink") -> None:
    """Put an image at ``dst``: ``hardlink`` (falls back to copy across file systems), ``symlink`` or ``copy``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        if dst.resolve() == Path(src).resolve() or (dst.exists() and os.path.samefile(src, dst)):
            return
        dst.unlink()
    if link == "symlink":
        dst.symlink_to(Path(src).resolve())
        return
    if link == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def dest_names(records: Records) -> list[str]:
    """A unique file name per image for the destination (the source name; ``<id>_name`` on clashes)."""
    names, used = [], set()
    for r in records.images:
        name = Path(r.file).name
        if name in used:
            name = f"{r.image_id}_{name}"
        used.add(name)
        names.append(name)
    return names


def _num(v: float) -> str:
    """A coordinate as text: integers without a fraction, others to 4 decimals (exact to 1e-4 px)."""
    r = round(float(v))
    return str(r) if abs(v - r) < 1e-6 else f"{float(v):.4f}".rstrip("0").rstrip(".")


def voc_xml(rec: ImageRecord, filename: str, class_names: list[str]) -> ET.ElementTree:
    """One image's VOC XML tree (boxes shifted back to 1-based inclusive, see ``formats/voc.py``)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", rec.width), ("height", rec.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(int(value))
    ET.SubElement(root, "segmented").text = "0"
    truncated = rec.extra.get("truncated", np.zeros(rec.num_boxes, bool))
    for j in range(rec.num_boxes):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[int(rec.labels[j])]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(truncated[j]))
        ET.SubElement(obj, "difficult").text = str(int(rec.difficult[j]))
        if rec.iscrowd[j]:
            ET.SubElement(obj, "iscrowd").text = "1"
        box = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (float(v) for v in rec.boxes[j])
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, tag).text = _num(value)
    ET.indent(root)
    return ET.ElementTree(root)


def write_voc(records: Records, dst: Path, split: str | None = None, link: str = "hardlink") -> Path:
    """Write Records as a VOC year folder.

    Args:
        records: boxes xyxy continuous pixels.
        dst: the year folder to write (created).
        split: ``ImageSets/Main/<split>.txt`` name (default: the records' split, else ``all``).
        link: how images are placed (see :func:`place_image`).

    Returns:
        ``dst``.
    """
    split = split or records.split or "all"
    (dst / "Annotations").mkdir(parents=True, exist_ok=True)
    (dst / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    stems = []
    for rec, name in zip(records.images, dest_names(records)):
        stem = Path(name).stem
        voc_xml(rec, name, records.class_names).write(dst / "Annotations" / f"{stem}.xml", encoding="unicode")
        place_image(rec.file, dst / "JPEGImages" / name, link)
        stems.append(stem)
    (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return dst


def coco_dict(records: Records, file_names: list[str]) -> dict:
    """Records as a COCO detection dict (bbox ``[x, y, w, h]``, see the module docstring for extras)."""
    from_coco = records.format == "coco" and all(isinstance(s, int) for s in records.source_ids)
    cat_ids = list(records.source_ids) if from_coco else list(range(1, records.num_classes + 1))
    images, annotations, next_id, seen = [], [], 1, set()
    for rec, name in zip(records.images, file_names):
        images.append(
            {"id": int(rec.image_id), "file_name": name, "width": int(rec.width), "height": int(rec.height)}
        )
        ids, area = rec.extra.get("ann_ids"), rec.extra.get("area")
        for j in range(rec.num_boxes):
            x1, y1, x2, y2 = (float(v) for v in rec.boxes[j])
            ann_id = int(ids[j]) if ids is not None and int(ids[j]) not in seen else None
            if ann_id is None:
                while next_id in seen:
                    next_id += 1
                ann_id = next_id
            seen.add(ann_id)
            a = float(area[j]) if area is not None and np.isfinite(area[j]) else (x2 - x1) * (y2 - y1)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": int(rec.image_id),
                    "category_id": int(cat_ids[int(rec.labels[j])]),
                    "bbox": [round(x1, 4), round(y1, 4), round(x2 - x1, 4), round(y2 - y1, 4)],
                    "area": round(a, 4),
                    "iscrowd": int(rec.iscrowd[j]),
                    "difficult": int(rec.difficult[j]),
                    "segmentation": [],
                }
            )
    categories = [
        {"id": int(c), "name": n, "supercategory": "none"} for c, n in zip(cat_ids, records.class_names)
    ]
    return {
        "info": {"description": "written by detlab convert"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(records: Records, dst: Path, split: str | None = None, link: str = "hardlink") -> Path:
    """Write Records as COCO JSON plus an image folder.

    Args:
        records: boxes xyxy continuous pixels.
        dst: a folder (``annotations/instances_<split>.json``, ``images/<split>/``) or a ``.json`` path
            (images in ``images/`` beside it).
        split: split name (default: the records' split, else ``all``).
        link: how images are placed (see :func:`place_image`).

    Returns:
        The JSON path.
    """
    split = split or records.split or "all"
    if dst.suffix == ".json":
        json_path, image_dir = dst, dst.parent / "images"
    else:
        json_path, image_dir = dst / "annotations" / f"instances_{split}.json", dst / "images" / split
    names = dest_names(records)
    for rec, name in zip(records.images, names):
        place_image(rec.file, image_dir / name, link)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(coco_dict(records, names)))
    return json_path


def yolo_lines(rec: ImageRecord) -> str:
    """One label file: ``class cx cy w h`` normalised by the image size, 10 decimals."""
    w, h = float(rec.width), float(rec.height)
    b = rec.boxes.astype(np.float64)  # [N, 4]
    cxcywh = np.stack(
        [
            (b[:, 0] + b[:, 2]) / 2 / w,
            (b[:, 1] + b[:, 3]) / 2 / h,
            (b[:, 2] - b[:, 0]) / w,
            (b[:, 3] - b[:, 1]) / h,
        ],
        1,
    )
    return "".join(
        f"{int(c)} " + " ".join(f"{v:.10f}" for v in row) + "\n" for c, row in zip(rec.labels, cxcywh)
    )


# Ultralytics reads the keys train, val and test (check_det_dataset requires train and val); a
# source's own split names map onto them, and any other split keeps its name as its key.
YOLO_SPLIT_KEYS = {
    "train": "train",
    "trainval": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "minival": "val",
    "test": "test",
    "testdev": "test",
}


def yolo_split_key(split: str) -> str:
    """The ``data.yaml`` key of a split: ``train2017``/``trainval`` → ``train``, ``val2017``/``valid`` →
    ``val``, ``test`` → ``test`` (a year suffix and ``-``/``_`` ignored); other names are their own key."""
    bare = split.lower().rstrip("0123456789").replace("-", "").replace("_", "")
    return YOLO_SPLIT_KEYS.get(bare, split)


def write_yolo(
    records: Records, dst: Path, split: str | None = None, link: str = "hardlink", root: Path | None = None
) -> Path:
    """Write Records as a YOLO dataset; adds the split to an existing ``data.yaml`` with the same names.

    ``data.yaml`` follows Ultralytics' conventions: ``path`` is the dataset's absolute folder
    (Ultralytics resolves a relative ``path`` against the working directory, or its datasets
    folder, not against the YAML), each split is listed under :func:`yolo_split_key` relative to
    it, ``names`` in class-index order, and for a COCO source ``category_ids`` maps each index
    back to its category id.

    Args:
        records, dst, split, link: as for the other writers.
        root: where ``dst`` will live once written (:func:`write_all_or_nothing` writes a new
            dataset into a hidden sibling and renames it); default ``dst``.

    Returns:
        The ``data.yaml`` path.

    Raises:
        DataError: ``dst/data.yaml`` exists with other class names.
    """
    split = {"valid": "val"}.get(split or records.split or "train", split or records.split or "train")
    yml = dst / "data.yaml"
    data = yaml.safe_load(yml.read_text()) if yml.is_file() else {}
    if data.get("names") and list(data["names"]) != records.class_names:
        raise DataError(
            f"{yml}: names {data['names']} differ from {records.class_names} — write to a new folder or pass --classes"
        )
    for rec, name in zip(records.images, dest_names(records)):
        if rec.width <= 0 or rec.height <= 0:
            raise DataError(
                f"{rec.file}: image size unknown — YOLO labels need it; convert with the checks on (default)"
            )
        place_image(rec.file, dst / "images" / split / name, link)
        label = dst / "labels" / split / f"{Path(name).stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(yolo_lines(rec))
    key, folder = yolo_split_key(split), f"images/{split}"
    listed = data.get(key)
    if listed and listed != folder:  # a second source split under one key (train + trainval): both
        folder = sorted({*(listed if isinstance(listed, list) else [listed]), folder})
    data.update({"path": str(Path(root or dst).resolve()), key: folder, "nc": records.num_classes})
    data["names"] = list(records.class_names)
    if records.format == "coco" and all(isinstance(i, int) for i in records.source_ids):
        data["category_ids"] = dict(enumerate(records.source_ids))
    first = [k for k in ("path", "train", "val", "test") if k in data]  # the order Ultralytics' own files use
    data = {**{k: data[k] for k in first}, **{k: v for k, v in data.items() if k not in first}}
    yml.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return yml


WRITERS = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo}


def convert(
    src: str | Path,
    dst: str | Path,
    to: str,
    split: str | None = None,
    images: str | None = None,
    classes: str | list[str] | None = None,
    link: str = "hardlink",
) -> tuple[Path, Records]:
    """Read any dataset and write it in another format.

    Args:
        src: dataset spec (``PATH``, ``PATH:split``, ``+`` joins).
        dst: destination folder (or ``.json`` for COCO).
        to: ``coco`` | ``voc`` | ``yolo``.
        split, images, classes: as in :func:`detlab.data.dataset.load_dataset`.
        link: ``hardlink`` (default, copies across file systems) | ``symlink`` | ``copy``.

    Returns:
        The written path and the Records written (after the load-time checks).
    """
    from detlab.data.checks import print_load_summary, validate_records
    from detlab.data.formats import read_records

    if to not in WRITERS:
        raise DataError(f"--to {to!r}: unknown target — use one of {', '.join(TARGETS)}")
    records = read_records(src, split=split, images=images, classes=classes)
    result = validate_records(records, decode=False)
    print_load_summary(records, result, str(src))
    if turned := to_display_frame(records):
        logger.info(
            f"detlab: {turned} EXIF-rotated images annotated in their raw frame: boxes written in the displayed frame"
        )
    if to == "yolo":
        for problem in yolo_class_order(records, src, split, kept_classes=classes is not None):
            records.problems.append(problem)
            logger.info(f"detlab: {problem.line()}")
        flagged = int(sum(r.difficult.sum() + r.iscrowd.sum() for r in records.images))
        if flagged:
            records.problems.append(
                Problem(
                    str(dst),
                    "difficult/iscrowd",
                    f"YOLO cannot hold these flags: {flagged} boxes",
                    "written as normal boxes",
                    "warning",
                )
            )
            logger.info(f"detlab: {records.problems[-1].line()}")
    out = write_all_or_nothing(WRITERS[to], records, Path(dst), link)
    if to == "yolo":
        for line in yolo_split_notes(out):
            logger.info(f"detlab: {line}")
    return out, records


def _coco_categories(
    records: Records, src: str | Path, split: str | None, kept_classes: bool
) -> tuple[list[str], list[int]] | None:
    """Every category of a one-file COCO source, names in category-id order (a repeated name once, at its
    first id) with their ids; ``None`` for other sources, and when the reader made every category a
    class and no class list was given (nothing to restore or compare: the file is not parsed again)."""
    from detlab.data.formats import split_spec
    from detlab.data.formats.coco import _load_json, find_coco_json

    dropped = any(
        p.field.startswith("categories[id=") and p.message.endswith("has no boxes") for p in records.problems
    )
    if records.format != "coco" or "+" in str(src) or not (dropped or kept_classes):
        return None
    path, own = split_spec(src)
    found = (path, None) if path.is_file() else find_coco_json(path, own or split)
    if found is None:
        return None
    names, ids = [], []
    for cat in sorted(_load_json(Path(found[0]))["categories"], key=lambda c: int(c["id"])):
        if str(cat["name"]) not in names:
            names.append(str(cat["name"]))
            ids.append(int(cat["id"]))
    return names, ids


def yolo_class_order(
    records: Records, src: str | Path, split: str | None = None, kept_classes: bool = False
) -> list[Problem]:
    """Give YOLO class indices the source's category order, in place; return what to tell the user.

    Ultralytics' labels for a COCO source index its categories in id order (COCO-80: ids 1..90 →
    0..79). The reader makes classes of categories with boxes only, which shifts every later index,
    so here a COCO source gets its categories without boxes back as class names (labels renumbered
    by name). With a user's class list (``kept_classes``) the list decides the order; where that
    moves a category to another index, the problem returned says which (``data.yaml`` keeps the
    index → category id map, see :func:`write_yolo`).
    """
    full = _coco_categories(records, src, split, kept_classes)
    if full is None:
        return []
    names, ids = full
    if not kept_classes:
        index = {n: i for i, n in enumerate(names)}
        lut = np.asarray([index[n] for n in records.class_names], np.int64)
        for rec in records.images:
            rec.labels = lut[np.asarray(rec.labels, np.int64)] if len(rec.labels) else rec.labels
        empty = [n for n in names if n not in records.class_names]
        records.class_names, records.source_ids = names, ids
        return [
            Problem(
                str(records.root),
                "categories",
                f"{len(empty)} categories without boxes kept as YOLO class names ({', '.join(empty[:8])}"
                + (" …)" if len(empty) > 8 else ")"),
                "indices follow the source's category order",
                "info",
            )
        ]
    moved = [
        f"{n!r} {names.index(n)}→{i}"
        for i, n in enumerate(records.class_names)
        if n in names and names.index(n) != i
    ]
    if not moved:
        return []
    return [
        Problem(
            str(records.root),
            "classes",
            f"the class list gives {len(moved)} categories another index than the source's order: {', '.join(moved[:8])}"
            + (" …" if len(moved) > 8 else ""),
            "data.yaml category_ids maps each index to its category id",
            "warning",
        )
    ]


def yolo_split_notes(yml: Path) -> list[str]:
    """What Ultralytics will miss in a written ``data.yaml``: a ``val`` split, and splits under other keys."""
    data = yaml.safe_load(yml.read_text()) or {}
    other = [k for k in data if k not in ("path", "train", "val", "test", "nc", "names", "category_ids")]
    notes = []
    if "val" not in data or "train" not in data:
        missing = " and ".join(k for k in ("train", "val") if k not in data)
        notes.append(
            f"info: {yml}: no {missing} split yet — Ultralytics needs train and val: convert that split into "
            f"the same folder (detlab convert SRC:SPLIT {yml.parent} --to yolo)"
        )
    if other:
        notes.append(
            f"info: {yml}: splits {', '.join(other)} kept under their own keys (Ultralytics reads train/val/test)"
        )
    return notes


def to_display_frame(records: Records) -> int:
    """Move records annotated in an EXIF-rotated image's raw frame into its displayed frame, in place.

    YOLO normalises by the displayed size, and EXIF-aware COCO/VOC tools read boxes in
    the displayed frame, so a converter that wrote the raw frame would put them off the
    object. The rule for which records are in the raw frame is detlab's one rule,
    :func:`detlab.data.dataset.boxes_in_display_frame`.

    Args:
        records: after the load-time checks (image headers readable).

    Returns:
        How many records were turned (``boxes`` xyxy continuous pixels, ``width``/``height`` swapped).
    """
    from detlab.data.checks import probe_images
    from detlab.data.dataset import boxes_in_display_frame

    turned = 0
    for rec, facts in zip(records.images, probe_images([str(r.file) for r in records.images], decode=False)):
        if not isinstance(facts, tuple):
            continue
        shown, raw, orientation = facts
        boxes = boxes_in_display_frame(rec, raw, orientation)
        if boxes is not rec.boxes:
            rec.boxes, (rec.width, rec.height) = boxes, shown
            turned += 1
    return turned


def write_all_or_nothing(writer, records: Records, dst: Path, link: str = "hardlink") -> Path:
    """Run one of :data:`WRITERS` so that a failure leaves no half-written dataset that looks complete.

    A new destination is written into a hidden sibling folder and renamed into place at the
    end (a killed process leaves only that hidden folder). Adding a split to an existing
    destination keeps a copy of its index files (``data.yaml``, ``ImageSets``, the COCO JSON);
    on failure they are put back and every file the writer created is removed.

    Returns:
        The writer's path, at ``dst``. Raises OutputError naming ``dst`` and the cause for an
        OSError (disk full, read-only, a file in the way); other errors pass through after the clean-up.
    """
    fresh = dst.suffix != ".json" and (not dst.exists() or (dst.is_dir() and not any(dst.iterdir())))
    if fresh:
        with writing(dst, "dataset"):
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir()  # not mkdtemp: its 0700 mode would become the dataset's
        try:
            with writing(dst, "dataset", "nothing was left there"):
                # a YOLO data.yaml names its final, absolute folder, not the hidden one it is written in
                extra = {"root": dst} if writer is write_yolo else {}
                out = writer(records, tmp, records.split, link, **extra)
                os.replace(tmp, dst)  # an empty dst folder is replaced too
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dst / out.relative_to(tmp)
    roots = [dst.parent / "images"] if dst.suffix == ".json" else [dst]
    before = {p for root in roots if root.is_dir() for p in root.rglob("*")}
    index = (
        [dst]
        if dst.suffix == ".json"
        else [*dst.glob("data.yaml"), *dst.glob("ImageSets/Main/*.txt"), *dst.glob("annotations/*.json")]
    )
    annotations, images = _replaced_by(writer, records, dst)
    saved = {p: p.read_bytes() for p in [*index, *annotations] if p.is_file()}
    home = dst.parent if dst.suffix == ".json" else dst
    backup = home / f".detlab-replaced-{os.getpid()}-{secrets.token_hex(4)}"
    with writing(dst, "dataset", "nothing was changed"):
        kept = _link_aside(images, backup)
    before.add(backup)
    before.update(backup.rglob("*"))
    try:
        with writing(dst, "dataset", "the files written were removed and the existing dataset restored"):
            return writer(records, dst, records.split, link)
    except BaseException:
        _undo(roots, before, saved, dst)
        for original, aside in kept.items():
            with contextlib.suppress(OSError):
                os.replace(aside, original)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def _replaced_by(writer, records: Records, dst: Path) -> tuple[list[Path], list[Path]]:
    """The existing files the writer will overwrite: ``(annotation files, images)``.

    Adding images whose names a destination already holds (a second split sharing stems, a
    re-export after fixing labels) rewrites their annotation files in place and replaces the
    images, so both must be put back if the write fails.
    """
    names = dest_names(records)
    if writer is write_voc:
        anns = [dst / "Annotations" / f"{Path(n).stem}.xml" for n in names]
        return [p for p in anns if p.is_file()], [p for n in names if (p := dst / "JPEGImages" / n).is_file()]
    if writer is write_yolo:
        folders = (
            [p for p in (dst / "labels").glob("*") if p.is_dir()],
            [p for p in (dst / "images").glob("*") if p.is_dir()],
        )
        anns = [p for d in folders[0] for n in names if (p := d / f"{Path(n).stem}.txt").is_file()]
        return anns, [p for d in folders[1] for n in names if (p := d / n).is_file()]
    folders = [dst.parent / "images"] if dst.suffix == ".json" else list((dst / "images").glob("*"))
    return [], [p for d in folders for n in names if (p := d / n).is_file()]


def _link_aside(images: list[Path], backup: Path) -> dict[Path, Path]:
    """Hard-link (or copy) each image into ``backup``; the writer unlinks before it places, so the link survives."""
    kept = {}
    for i, p in enumerate(images):
        aside = backup / f"{i}{p.suffix}"
        aside.parent.mkdir(exist_ok=True)
        try:
            os.link(p, aside)
        except OSError:
            shutil.copy2(p, aside)
        kept[p] = aside
    return kept


def _undo(roots: list[Path], before: set[Path], saved: dict[Path, bytes], dst: Path) -> None:
    """Remove what a failed write added under ``roots`` and put the saved index files back."""
    added = [p for root in roots if root.is_dir() for p in root.rglob("*") if p not in before]
    if dst.suffix == ".json" and dst not in saved:
        added.append(dst)
    for p in sorted(added, key=lambda q: len(q.parts), reverse=True):  # files and folders, deepest first
        with contextlib.suppress(OSError):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    for p, data in saved.items():
        with contextlib.suppress(OSError):
            p.write_bytes(data)


def convert_command(
    src: str,
    dst: str,
    to: str,
    split: str | None = None,
    images: str | None = None,
    classes: str | None = None,
) -> int:
    """``detlab convert SRC DST --to coco|voc|yolo``; prints what was written. Returns 0."""
    out, records = convert(src, dst, to, split=split, images=images, classes=classes)
    print(
        f"wrote {to}: {out} ({len(records.images)} images, {records.num_boxes} boxes, {records.num_classes} classes)"
    )
    return 0
