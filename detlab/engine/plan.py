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


# --- batch size and loader workers on a CPU ---------------------------------------------

# Peak memory a training step adds per image, per input pixel (bytes): the slope of peak RSS between
# batch 1 and batch 4 at 320x448 px, two forward + backward passes, EfficientNet-Lite0 backbones,
# one thread: fcos_effl0_fpn 1215 -> 2243 MB (343 MB per image), faster_rcnn_effl0_fpn 1402 -> 2352 MB
# (317 MB). Families not measured use the largest. Half the available memory is offered to the step;
# the rest is the model, the optimizer, the loader workers and the machine's other users.
TRAIN_BYTES_PER_PIXEL = {"fcos": 2500, "faster_rcnn": 2300}
MEMORY_SHARE = 0.5
MAX_CPU_WORKERS = 4


@dataclass
class MachinePlan:
    """Batch size and DataLoader workers for a CPU run, and why (one line each)."""

    batch_size: int
    num_workers: int
    why: list[str]


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to new work (``MemAvailable``), or None where it cannot be read."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def plan_machine(
    recipe_batch: int, family: str, pixels: int, cores: int, memory: int | None, user_keys: set[str]
) -> MachinePlan | None:
    """Batch and workers that fit this CPU machine (module notes above); ``None`` when the user set both.

    Args:
        recipe_batch: the family recipe's images per step, an upper bound.
        family: model family, for its memory per pixel.
        pixels: input pixels per image (the planned shorter × longer side).
        cores: usable CPU cores.
        memory: available bytes, or None (the recipe's batch is kept).
        user_keys: config keys the user set (``batch_size`` / ``num_workers`` there are kept).
    """
    if {"batch_size", "num_workers"} <= user_keys:
        return None
    gb = 1024**3
    per_image = pixels * TRAIN_BYTES_PER_PIXEL.get(family, max(TRAIN_BYTES_PER_PIXEL.values()))
    batch, why = recipe_batch, []
    if "batch_size" not in user_keys and memory is not None:
        fits = max(1, int(MEMORY_SHARE * memory // max(per_image, 1)))
        batch = min(recipe_batch, fits)
        why.append(
            f"batch {batch}: a {family} training step needs about {per_image / gb:.2f} GB per image at this size, "
            f"and half of the {memory / gb:.1f} GB available holds {fits}"
            + (f" (the recipe's {recipe_batch} is the most)" if batch == recipe_batch else "")
        )
    # Decoding and resizing an image takes a small fraction of its CPU training step, so one worker
    # per four cores keeps the step fed and leaves the cores to the model's threads.
    workers = 0 if cores <= 1 else min(MAX_CPU_WORKERS, max(1, cores // 4))
    if "num_workers" not in user_keys:
        why.append(
            f"{workers} DataLoader worker{'s' if workers != 1 else ''}: {cores} CPU core{'s' if cores != 1 else ''}, "
            "one worker per 4 cores (at least one with 2+), the rest for the model's threads"
        )
    return MachinePlan(batch, workers, why)


def apply_machine_plan(cfg, user_keys: set[str], family: str, device_type: str) -> list[str]:
    """Set ``cfg.batch_size`` / ``cfg.num_workers`` from :func:`plan_machine` on a CPU unless the user
    set them; return the lines to print (empty when nothing was chosen)."""
    if device_type != "cpu":
        return []
    kw = cfg.model_kwargs
    short = int(kw.get("min_size") or kw.get("size") or 512)
    long = int(kw.get("max_size") or kw.get("size") or short)
    plan = plan_machine(cfg.batch_size, family, short * long, cpu_cores(), available_memory(), user_keys)
    if plan is None:
        return []
    if "batch_size" not in user_keys:
        cfg.batch_size = plan.batch_size
    if "num_workers" not in user_keys:
        cfg.num_workers = plan.num_workers
    return [
        f"batch {cfg.batch_size}, {cfg.num_workers} loader worker{'s' if cfg.num_workers != 1 else ''}, "
        "chosen for this machine:",
        *(f"  {line}" for line in plan.why),
        "  override with --set batch_size=N --set num_workers=N",
    ]
