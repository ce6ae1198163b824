"""A deterministic synthetic shapes dataset in VOC layout: the demo's embedded data.

Classes are shapes (``circle``, ``square``, ``triangle``); colour and size vary
independently of the class, so a detector must learn shape. Backgrounds are smooth
colour gradients plus noise and random faint stripes; objects range from small
(~10 px) to large, and may partly cover each other (overlap capped so every object
stays mostly visible). The same ``seed`` writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detlab.data.convert import voc_xml
from detlab.data.records import ImageRecord

CLASSES = ("circle", "square", "triangle")
PALETTE = (
    (220, 40, 40),
    (40, 170, 60),
    (40, 80, 220),
    (230, 200, 40),
    (200, 60, 200),
    (30, 200, 210),
    (240, 240, 240),
    (20, 20, 20),
)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth two-colour gradient, faint stripes and pixel noise: ``uint8 [size, size, 3]``."""
    t = np.linspace(0, 1, size, dtype=np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]  # [S, S]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    a, b = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    img = a * (1 - ramp[..., None]) + b * ramp[..., None]  # [S, S, 3]
    period = rng.uniform(6, 30)
    img += 12 * np.sin(2 * np.pi * (t[None, :, None] * size) / period)
    img += rng.normal(0, 10, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(others) - inter)


def _draw_shape(
    draw: ImageDraw.ImageDraw, label: int, box: np.ndarray, colour: tuple[int, int, int]
) -> np.ndarray:
    """Draw one shape filling ``box`` (xyxy); return its tight xyxy box in continuous pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if label == 0:
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=colour)
    elif label == 1:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
    else:
        draw.polygon([((x1 + x2 - 1) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=colour)
    return np.array([x1, y1, x2, y2], np.float32)


def make_image(
    rng: np.random.Generator, size: int, max_objects: int = 4
) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """One image with 1..max_objects shapes.

    Returns:
        ``(image, boxes float32 [N, 4] xyxy continuous px, labels int64 [N])``.
    """
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            # Small shapes stay >= ~10 px: COCO-small (area < 32²) yet learnable in the demo's few CPU minutes.
            side = int(size * (rng.uniform(0.08, 0.14) if rng.random() < 0.25 else rng.uniform(0.14, 0.4)))
            side = max(side, 10)
            x, y = rng.integers(0, size - side, 2)
            box = np.array([x, y, x + side, y + side], np.float32)
            if len(boxes) == 0 or _iou(box, boxes).max() < 0.25:
                break
        else:
            continue
        label = int(rng.integers(len(CLASSES)))
        colour = PALETTE[int(rng.integers(len(PALETTE)))]
        boxes = np.vstack([boxes, _draw_shape(draw, label, box, colour)])
        labels = np.append(labels, label)
    return image, boxes, labels


def write_shapes_dataset(
    root: str | Path, num_train: int = 160, num_val: int = 40, size: int = 256, seed: int = 0
) -> Path:
    """Write the shapes dataset as a VOC year folder.

    Args:
        root: folder to write into; the year folder is ``root/shapes``.
        num_train, num_val: images per split (``trainval`` lists both).
        size: square image side in pixels.
        seed: the same seed writes the same files.

    Returns:
        The year folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{train,val,trainval}.txt``);
        classes ``circle``, ``square``, ``triangle`` (sorted order is the label order).
    """
    year = Path(root) / "shapes"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = sorted(CLASSES)
    to_sorted = np.asarray([names.index(c) for c in CLASSES], np.int64)
    ids = {"train": [], "val": []}
    for i in range(num_train + num_val):
        split = "train" if i < num_train else "val"
        stem = f"{split}_{i:05d}"
        image, boxes, labels = make_image(rng, size)
        image.save(year / "JPEGImages" / f"{stem}.jpg", quality=92)
        n = len(labels)
        rec = ImageRecord(
            i,
            year / "JPEGImages" / f"{stem}.jpg",
            size,
            size,
            boxes,
            to_sorted[labels],
            np.zeros(n, bool),
            np.zeros(n, bool),
        )
        voc_xml(rec, f"{stem}.jpg", names).write(year / "Annotations" / f"{stem}.xml", encoding="unicode")
        ids[split].append(stem)
    for split, stems in (
        ("train", ids["train"]),
        ("val", ids["val"]),
        ("trainval", ids["train"] + ids["val"]),
    ):
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return year
