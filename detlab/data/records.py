"""Records: what every format reader produces and every other module reads.

This is the one place the annotation side of the data contract is defined
(see DESIGN.md, "Data contract"). Readers in ``data/formats/`` convert their
format's boxes to this frame; nothing downstream converts again.

Legend for shape comments: ``N`` boxes of one image, ``C`` classes.

Box frame: ``xyxy`` float32 in absolute pixels of the image as annotated
(continuous coordinates: a box covering pixel columns 0..9 inclusive is
``x1=0, x2=10``). VOC's 1-based inclusive pixel indices are shifted in
``formats/voc.py``, and only there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Severity = Literal["error", "warning", "fixed", "skipped", "info"]


@dataclass
class Problem:
    """One finding about the data, printed as one line.

    Attributes:
        file: the file the finding is about (annotation or image), as given.
        field: the field inside that file (``object[3].bndbox.xmin``, ``annotations[id=17].bbox``…).
        message: what is wrong.
        fix: what the user should do, or what detlab did about it.
        severity: ``error`` makes the dataset unusable; ``skipped`` dropped a
            box or image and counted it; ``fixed`` repaired it (e.g. clipped);
            ``warning`` / ``info`` change nothing.
    """

    file: str
    field: str
    message: str
    fix: str = ""
    severity: Severity = "error"

    def line(self) -> str:
        fix = f" — {self.fix}" if self.fix else ""
        return f"{self.severity}: {self.file}: {self.field}: {self.message}{fix}"


@dataclass
class ImageRecord:
    """One image and its boxes, in the annotated frame.

    Attributes:
        image_id: unique integer id inside the dataset (COCO id when the source has one).
        file: absolute path to the image file.
        width, height: the size the annotation declares (0 when it declares none).
        boxes: ``float32 [N, 4]`` xyxy absolute pixels (see module docstring).
        labels: ``int64 [N]`` class indices in ``0..C-1``.
        difficult: ``bool [N]`` VOC ``difficult`` flag.
        iscrowd: ``bool [N]`` COCO ``iscrowd`` flag.
        ann_file: the annotation file the boxes came from, for messages.
        extra: format-specific fields kept for lossless conversion
            (e.g. COCO annotation ids, VOC ``truncated``/``pose``).
    """

    image_id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray
    ann_file: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


def empty_boxes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zero-length ``boxes, labels, difficult, iscrowd`` arrays with the contract's dtypes."""
    return (
        np.zeros((0, 4), np.float32),
        np.zeros((0,), np.int64),
        np.zeros((0,), bool),
        np.zeros((0,), bool),
    )


@dataclass
class Records:
    """A whole split: images, the class map, and every problem found while reading.

    Attributes:
        images: one :class:`ImageRecord` per image, in a stable order.
        class_names: ``C`` names; index ``i`` is label ``i``.
        source_ids: ``C`` ids the source used for each class (COCO category id,
            YOLO index, or the VOC name itself) — kept so results can be
            written back in the source's ids.
        format: ``voc`` | ``coco`` | ``yolo`` | ``folder``.
        root: the path the user gave.
        split: the split name, or ``None`` when the source has no splits.
        problems: every finding; nothing is dropped without one.
    """

    images: list[ImageRecord]
    class_names: list[str]
    source_ids: list
    format: str
    root: Path
    split: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_boxes(self) -> int:
        return sum(r.num_boxes for r in self.images)
