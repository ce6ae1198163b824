"""COCO results-file conventions shared by the writer (``detlab predict``) and the scorer (``detlab eval``).

A results file is a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
Both sides must agree on which ``category_id`` a class index is written as, and on the
score below which models stop writing detections.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A results file whose lowest score is above this was thresholded: every PR curve stops early and
# AP/AR are a lower bound (models keep detections down to 0.05, SSD to 0.01, and evaluation scores them all).
THRESHOLDED_SCORE = 0.05


def coco_category_ids(source_ids: Sequence, source_format: str | None = None) -> list[int]:
    """The COCO ``category_id`` of each class index ``0..C-1``.

    A COCO source's integer ids are kept (they are what its ground truth uses); any other
    source gets ``1..C``. When the source format is unknown (checkpoints that do not record
    it), the ids count as COCO's when they are unique integers other than ``0..C-1`` (which
    are YOLO indices).

    Args:
        source_ids: ``C`` ids as the source names each class (COCO ids, VOC names, YOLO indices).
        source_format: ``coco`` | ``voc`` | ``yolo`` | ``folder``, or None when unknown.
    """
    ints = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in source_ids)
    unique = ints and len({int(i) for i in source_ids}) == len(source_ids)
    if source_format is None:
        coco = unique and [int(i) for i in source_ids] != list(range(len(source_ids)))
    else:
        coco = source_format == "coco" and unique
    return [int(i) for i in source_ids] if coco else list(range(1, len(source_ids) + 1))
