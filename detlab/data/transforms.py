"""Box-aware transforms per detector family, built from torchvision.transforms.v2.

Every transform takes and returns ``(image, target)`` with ``image`` a
``tv_tensors.Image`` ``float32 [3, H, W]`` and ``target["boxes"]`` a
``tv_tensors.BoundingBoxes`` (XYXY absolute pixels, ``canvas_size=(H, W)``).
After every geometric step boxes are clamped to the image and degenerate ones
removed by ``SanitizeBoundingBoxes``, which also drops the matching ``labels``,
``difficult`` and ``iscrowd`` entries so they stay aligned.

Size arguments (``**size`` of :func:`build_transforms`; all optional):

- ``min_size``: shorter side in pixels (an int, or a list to pick from at random
  in training — multi-scale); ``max_size``: cap on the longer side.
- ``size``: a fixed square side (SSD).

Models resize inside too, so evaluation transforms resize only when a size is
given; training transforms may resize to the model's size to save memory.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from detlab.errors import ConfigError

RECIPES = ("faster_rcnn", "fcos", "retinanet", "ssd", "detr")
IMAGENET_MEAN = (0.485, 0.456, 0.406)

# The published DETR schedule (shorter side 480..800 step 32, longer ≤ 1333; crop branch
# resizes to 400/500/600 then crops 384..600); scaled by min_size / 800 when a size is given.
DETR_SCALES = tuple(range(480, 801, 32))
DETR_PRE_CROP = (400, 500, 600)
DETR_CROP = (384, 600)


def target_labels(inputs: Any) -> tuple[torch.Tensor, ...]:
    """``labels_getter`` for SanitizeBoundingBoxes: every per-box tensor that must stay aligned."""
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "difficult", "iscrowd") if k in target)


def sanitize() -> list[v2.Transform]:
    """Clamp to the image, then drop boxes under 1 px (and their labels/difficult/iscrowd)."""
    return [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=target_labels)]


def _canvas(flat_inputs: list[Any]) -> tuple[int, int]:
    for x in flat_inputs:
        if isinstance(x, tv_tensors.Image):
            return tuple(x.shape[-2:])
    for x in flat_inputs:
        if isinstance(x, tv_tensors.BoundingBoxes):
            return tuple(x.canvas_size)
    raise TypeError("no tv_tensors.Image or BoundingBoxes in the input")


class RandomSizeCrop(v2.Transform):
    """DETR's crop: a random ``h × w`` window with each side in ``[min_size, min(max_size, side)]``."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size, self.max_size = int(min_size), int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _canvas(flat_inputs)
        cw = random.randint(min(self.min_size, w), min(w, self.max_size))
        ch = random.randint(min(self.min_size, h), min(h, self.max_size))
        return dict(top=random.randint(0, h - ch), left=random.randint(0, w - cw), height=ch, width=cw)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class IfBoxes(v2.Transform):
    """Apply a box-driven transform (SSD's IoU crop) only to images that have boxes."""

    def __init__(self, inner: v2.Transform) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: Any) -> Any:
        inputs = inputs if len(inputs) > 1 else inputs[0]
        has_boxes = inputs[1]["boxes"].shape[0] > 0
        return self.inner(inputs) if has_boxes else inputs


def _resize(
    min_size: int | list[int] | None, max_size: int | None, size: int | None, train: bool
) -> list[v2.Transform]:
    if size is not None:
        return [v2.Resize((int(size), int(size)))] + sanitize()
    if min_size is None:
        return []
    if isinstance(min_size, (list, tuple)):
        sizes = [int(s) for s in min_size] if train else [int(max(min_size))]
    else:
        sizes = [int(min_size)]
    return [v2.RandomShortestSize(sizes, max_size=max_size)] + sanitize()


def _two_stage(train: bool, min_size=None, max_size=None, size=None) -> list[v2.Transform]:
    """Faster R-CNN / FCOS / RetinaNet: flip and an optional (multi-scale) resize."""
    steps = [v2.RandomHorizontalFlip(0.5)] if train else []
    return steps + _resize(min_size, max_size, size, train)


def _ssd(train: bool, min_size=None, max_size=None, size=None) -> list[v2.Transform]:
    """SSD: zoom-out, IoU crop, flip, fixed square resize, photometric distortion."""
    if min_size is not None and size is None:
        size = max(min_size) if isinstance(min_size, (list, tuple)) else min_size
    if not train:
        return _resize(None, None, size, False)
    # Colour distortion runs after the resize: same effect, far fewer pixels than the zoomed-out canvas.
    return [
        v2.RandomZoomOut(fill={tv_tensors.Image: IMAGENET_MEAN, "others": 0}, side_range=(1.0, 4.0), p=0.5),
        IfBoxes(v2.RandomIoUCrop()),
        *sanitize(),
        v2.RandomHorizontalFlip(0.5),
        *_resize(None, None, size, True),
        v2.RandomPhotometricDistort(p=0.5),
    ]


def _detr(train: bool, min_size=None, max_size=None, size=None) -> list[v2.Transform]:
    """DETR: flip, multi-scale shorter side, or resize → random crop → multi-scale (published, scaled)."""
    top = int(max(min_size) if isinstance(min_size, (list, tuple)) else (min_size or size or DETR_SCALES[-1]))
    scale = top / DETR_SCALES[-1]
    max_size = int(max_size or round(1333 * scale))
    scales = sorted({max(1, round(s * scale)) for s in DETR_SCALES})
    if not train:
        return [v2.Resize(top, max_size=max_size)] + sanitize() if (min_size or size) else []
    pre = [max(1, round(s * scale)) for s in DETR_PRE_CROP]
    crop = RandomSizeCrop(max(1, round(DETR_CROP[0] * scale)), max(1, round(DETR_CROP[1] * scale)))
    return [
        v2.RandomHorizontalFlip(0.5),
        v2.RandomChoice(
            [
                v2.RandomShortestSize(scales, max_size=max_size),
                v2.Compose(
                    [
                        v2.RandomShortestSize(pre),
                        crop,
                        *sanitize(),
                        v2.RandomShortestSize(scales, max_size=max_size),
                    ]
                ),
            ]
        ),
        *sanitize(),
    ]


BUILDERS: dict[str, Callable[..., list[v2.Transform]]] = {
    "faster_rcnn": _two_stage,
    "fcos": _two_stage,
    "retinanet": _two_stage,
    "ssd": _ssd,
    "detr": _detr,
}


def build_transforms(recipe: str, train: bool, **size: Any) -> v2.Compose:
    """The transform pipeline of one detector family.

    Args:
        recipe: one of :data:`RECIPES` (a model's ``transform_recipe``).
        train: training augmentation (random) or evaluation (deterministic).
        **size: ``min_size`` (int or list), ``max_size`` (int), ``size`` (int, square);
            see the module docstring.

    Returns:
        A callable ``(image, target) -> (image, target)``: image ``tv_tensors.Image``
        ``float32 [3, H, W]``; target boxes ``BoundingBoxes`` XYXY in the new image's pixels.

    Raises:
        ConfigError: unknown recipe or size argument.
    """
    if recipe not in BUILDERS:
        raise ConfigError(f"transform recipe {recipe!r} unknown — use one of {', '.join(RECIPES)}")
    unknown = set(size) - {"min_size", "max_size", "size"}
    if unknown:
        raise ConfigError(
            f"build_transforms: unknown size argument(s) {sorted(unknown)} — use min_size, max_size or size"
        )
    size = {k: v for k, v in size.items() if v is not None}
    return v2.Compose(BUILDERS[recipe](train, **size))
