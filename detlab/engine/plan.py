"""The input size a run trains at, chosen from the data and the machine, and said on screen.

The papers' 800 px suits COCO on a GPU. On other data it decides, unseen, whether a class
exists at all: BCCD's ~15 px platelets vanish for FCOS at 192 px (AP50 0.000) and are found
by Faster R-CNN at 256 px (0.888), and 800 px on a 2-core CPU turns a run into hours. So
``detlab train`` looks at the training boxes before the model is built:

* each torchvision-based family detects objects from about ``MIN_OBJECT_PX[family]`` pixels
  at its input (two cells of its finest level, or its smallest anchors' matching limit);
* the shorter side is chosen so that, in every class, 90 % of the boxes (their shorter side,
  relative to the image's) reach that size, rounded up to a multiple of 32 — a class of small
  objects is what a too-small input loses first;
* on a CPU it is capped at ``CPU_MAX_SHORT`` and floored at ``MIN_SHORT``; on a GPU the
  published 800 px stays the floor, raised only when the data needs more.

Sizes a user sets (``--set model_kwargs.min_size=…``) always win; SSD (fixed square input
that sets its anchors) and DETR (its recipe's 384 px) keep their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detlab.data.records import Records

# Smallest object side (px at the model's input) each family is planned for. Faster R-CNN: BCCD's
# platelets at ~16 px (256 px input) reach AP50 0.888. FCOS: at ~12 px (192 px input) they reach
# 0.000; 20 px is two and a half cells of its stride-8 level. RetinaNet: its smallest anchors are
# 32 px and match at IoU 0.5, which a box needs about 24 px for.
MIN_OBJECT_PX = {"faster_rcnn": 16, "fcos": 20, "retinanet": 24}
MIN_SHORT, CPU_MAX_SHORT, GPU_SHORT, GPU_MAX_SHORT = 256, 512, 800, 1333
COVERED = 0.9  # fraction of boxes that must reach the family's detectable size
SIZE_KEYS = ("min_size", "max_size", "size")


@dataclass
class SizePlan:
    """The chosen resize (torchvision's ``min_size`` / ``max_size``) and why, one line each."""

    min_size: int
    max_size: int
    why: list[str]


def relative_box_sides(records: Records) -> tuple[np.ndarray, np.ndarray]:
    """``(float64 [N], int64 [N])``: each box's shorter side over its image's shorter side, and its label."""
    sides, labels = [], []
    for r in records.images:
        if r.num_boxes and r.width > 0 and r.height > 0:
            b = np.asarray(r.boxes, np.float64)
            sides.append(np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / min(r.width, r.height))
            labels.append(np.asarray(r.labels, np.int64))
    if not sides:
        return np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(sides), np.concatenate(labels)


def plan_input_size(records: Records, family: str, device_type: str) -> SizePlan | None:
    """The training resize for ``family`` on this data and device (module docstring), or ``None``
    when the family keeps its own size or the data has no box to measure."""
    need_px = MIN_OBJECT_PX.get(family)
    rel, labels = relative_box_sides(records)
    keep = rel > 0
    rel, labels = rel[keep], labels[keep]
    if need_px is None or not len(rel):
        return None
    per_class = {c: float(np.quantile(rel[labels == c], 1 - COVERED)) for c in np.unique(labels).tolist()}
    hardest = min(per_class, key=per_class.get)
    small = per_class[hardest]
    shorts = np.asarray(
        [min(r.width, r.height) for r in records.images if r.width > 0 and r.height > 0], np.float64
    )
    longs = np.asarray(
        [max(r.width, r.height) for r in records.images if r.width > 0 and r.height > 0], np.float64
    )
    aspect = float(np.median(longs / shorts))
    needed = int(np.ceil(need_px / small / 32) * 32)
    if device_type == "cuda":
        short, where = (
            min(max(GPU_SHORT, needed), GPU_MAX_SHORT),
            "on a GPU the published 800 px unless the data needs more",
        )
    else:
        short, where = (
            min(max(MIN_SHORT, needed), CPU_MAX_SHORT),
            f"on a CPU kept within {MIN_SHORT}-{CPU_MAX_SHORT} px",
        )
    long = int(np.ceil(short * max(aspect, 1.0) / 32) * 32)
    name = records.class_names[hardest] if hardest < len(records.class_names) else str(hardest)
    covered = float((rel[labels == hardest] * short >= need_px).mean())
    why = [
        f"smallest class: {name!r}, 90 % of its boxes have a shorter side of at least {100 * small:.1f} % of "
        f"their image's (median image {int(np.median(shorts))} px on the short side)",
        f"{family} finds objects from about {need_px} px at its input, so they need {needed} px; "
        f"{where}: {short} px ({100 * covered:.0f} % of {name!r} boxes reach {need_px} px)",
    ]
    return SizePlan(min_size=short, max_size=long, why=why)


def apply_size_plan(
    model_kwargs: dict, user_kwargs: dict, records: Records, family: str, device_type: str
) -> list[str]:
    """Set ``min_size``/``max_size`` in ``model_kwargs`` from :func:`plan_input_size` unless the user
    gave a size; return the lines to print (empty when nothing was chosen)."""
    if any(k in user_kwargs for k in SIZE_KEYS):
        return []
    plan = plan_input_size(records, family, device_type)
    if plan is None:
        return []
    model_kwargs.update(min_size=plan.min_size, max_size=plan.max_size)
    return [
        f"input size {plan.min_size} px (shorter side; longer side up to {plan.max_size}), chosen from the data:",
        *(f"  {line}" for line in plan.why),
        "  override with --set model_kwargs.min_size=N --set model_kwargs.max_size=M",
    ]
