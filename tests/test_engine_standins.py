"""Small stand-ins for the engine tests: a tiny FCOS on the model contract and an in-memory dataset.

They keep the engine tests fast (64-pixel images, a two-layer backbone) and independent
of the catalogue's real models. A tiny evaluator stands in only when
``detlab.evaluation.evaluator`` is not importable.
"""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

from detlab.data.records import ImageRecord, Records

SIZE = 64


class TinyBackbone(nn.Module):
    """Two feature levels (strides 4 and 8), with dropout so the model draws from the torch RNG."""

    out_channels = 32

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.ReLU(),
            nn.Dropout2d(0.1),
        )
        self.down = nn.Conv2d(32, 32, 3, 2, 1)

    def forward(self, x):
        c = self.body(x)  # [B, 32, H/4, W/4]
        return OrderedDict([("0", c), ("1", self.down(c))])


class TinyFCOS(FCOS):
    """torchvision FCOS at 64 px speaking detlab's model contract."""

    name = "tiny_fcos"
    family = "fcos"
    transform_recipe = "fcos"
    backbone_prefixes = ("backbone.body.",)

    def __init__(self, num_classes: int = 2) -> None:
        anchors = AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((1.0,), (1.0,)))
        super().__init__(
            TinyBackbone(),
            num_classes,
            min_size=SIZE,
            max_size=SIZE,
            anchor_generator=anchors,
            head=FCOSHead(32, 1, num_classes, num_convs=1),
            score_thresh=0.05,
            detections_per_img=20,
        )
        self.num_classes = num_classes
        self.build_kwargs = {}

    def forward(self, images, targets=None):
        if targets is not None:
            targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        out = super().forward(images, targets)
        return {f"loss_{k}": v for k, v in out.items()} if self.training else out

    def val_losses(self, images, targets):
        was = self.training
        self.training = True
        try:
            return self.forward(images, targets)
        finally:
            self.training = was


def shapes_records(n: int, seed: int = 0) -> Records:
    """``n`` records of 64x64 images with one or two squares of class 0 (bright) or 1 (dark)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        k = int(rng.integers(1, 3))
        xy = rng.integers(2, SIZE - 26, size=(k, 2)).astype(np.float32)
        wh = rng.integers(14, 24, size=(k, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, 2, size=k).astype(np.int64)
        images.append(
            ImageRecord(
                image_id=i + 1,
                file=Path(f"/mem/{seed}_{i}.png"),
                width=SIZE,
                height=SIZE,
                boxes=boxes,
                labels=labels,
                difficult=np.zeros(k, bool),
                iscrowd=np.zeros(k, bool),
            )
        )
    return Records(
        images=images,
        class_names=["bright", "dark"],
        source_ids=["bright", "dark"],
        format="voc",
        root=Path("/mem"),
        split="train",
    )


class ShapesDataset(torch.utils.data.Dataset):
    """In-memory dataset on the data contract; ``augment`` adds a random flip and noise (torch RNG)."""

    def __init__(self, n: int, seed: int = 0, augment: bool = False) -> None:
        self.records = shapes_records(n, seed)
        self.augment = augment
        self.transforms = "in-memory"  # the engine adds training transforms only when this is None

    @property
    def class_names(self) -> list[str]:
        return self.records.class_names

    @property
    def num_classes(self) -> int:
        return self.records.num_classes

    def __len__(self) -> int:
        return len(self.records.images)

    def __getitem__(self, index: int):
        r = self.records.images[index]
        image = torch.full((3, SIZE, SIZE), 0.5)
        for (x1, y1, x2, y2), label in zip(r.boxes.astype(int), r.labels):
            image[:, y1:y2, x1:x2] = 1.0 if label == 0 else 0.0
        boxes = torch.from_numpy(r.boxes.copy())
        if self.augment:
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
                boxes = torch.stack([SIZE - boxes[:, 2], boxes[:, 1], SIZE - boxes[:, 0], boxes[:, 3]], 1)
            image = (image + 0.02 * torch.randn_like(image)).clamp(0, 1)
        target = {
            "boxes": boxes,
            "labels": torch.from_numpy(r.labels.copy()),
            "difficult": torch.from_numpy(r.difficult.copy()),
            "iscrowd": torch.from_numpy(r.iscrowd.copy()),
            "image_id": r.image_id,
            "orig_size": (SIZE, SIZE),
        }
        return image, target


def install_evaluator_standin() -> None:
    """Register a tiny ``detlab.evaluation.evaluator`` when the real one is not importable yet."""
    try:
        import detlab.evaluation.evaluator  # noqa: F401

        return
    except ImportError:
        pass
    from torchvision.ops import box_iou

    def evaluate_detections(records, detections, protocols=("coco",), **opts):
        hits, total, score_sum = 0, 0, 0.0
        for r in records.images:
            d = detections.get(r.image_id, {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)})
            total += r.num_boxes
            if len(d["boxes"]) and r.num_boxes:
                iou = box_iou(torch.as_tensor(r.boxes), torch.as_tensor(d["boxes"], dtype=torch.float32))
                hits += int((iou.max(1).values >= 0.5).sum())
            score_sum += float(np.sum(d["scores"]))
        return {"coco": {"AP50": hits / max(total, 1), "AP": score_sum}}

    def flatten_metrics(result):
        return {f"{p}/{k}": v for p, d in result.items() for k, v in d.items() if not isinstance(v, dict)}

    module = types.ModuleType("detlab.evaluation.evaluator")
    module.evaluate_detections, module.flatten_metrics = evaluate_detections, flatten_metrics
    sys.modules["detlab.evaluation.evaluator"] = module


def state_equal(a: dict, b: dict) -> bool:
    """Bitwise equality of two state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
