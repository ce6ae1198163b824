"""Shared test fixtures: paths to the real datasets beside the repo, torch threads, tiny models.

The tiny models keep engine, export and bench tests fast and independent of the catalogue's
real models: :class:`TinyFCOS` (64-px FCOS on detlab's model contract, dropout so it draws
from the torch RNG) with :class:`ShapesDataset` (in-memory squares), and
:func:`tiny_fcos` / :func:`tiny_faster_rcnn` on :class:`TwoLevelBackbone` (no BatchNorm,
cheap to trace and export).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import MultiScaleRoIAlign

from detlab.data.records import ImageRecord, Records

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BCCD = SHARED / "datasets" / "bccd" / "BCCD"
CHESS = SHARED / "datasets" / "chess"
FIXTURES = SHARED / "fixtures"

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _header_cache_in_tmp(tmp_path_factory):
    """Image header facts cached by the load-time check go to a folder of this session, not to ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DETLAB_CACHE_DIR", str(tmp_path_factory.mktemp("detlab_cache")))
    yield
    mp.undo()


@pytest.fixture
def bccd() -> Path:
    if not BCCD.is_dir():
        pytest.skip(f"real dataset not found at {BCCD} (../shared/datasets/bccd)")
    return BCCD


@pytest.fixture
def chess() -> Path:
    if not CHESS.is_dir():
        pytest.skip(f"real dataset not found at {CHESS} (../shared/datasets/chess)")
    return CHESS


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"fixtures not found at {FIXTURES} (../shared/fixtures)")
    return FIXTURES


# --- tiny models and in-memory data -------------------------------------------------

SIZE = 64


class DropoutBackbone(nn.Module):
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
            DropoutBackbone(),
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


def state_equal(a: dict, b: dict) -> bool:
    """Bitwise equality of two state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class TwoLevelBackbone(nn.Module):
    """Two levels (strides 4, 8) of 32 channels: cheap to trace, no BatchNorm, distinct scores."""

    out_channels = 32

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, stride=4, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, stride=2, padding=1)

    def forward(self, x):
        a = torch.relu(self.c1(x))  # [B, 32, H/4, W/4]
        return OrderedDict([("0", a), ("1", torch.relu(self.c2(a)))])


def tiny_fcos(num_classes: int = 3) -> nn.Module:
    """A seeded FCOS on :class:`TwoLevelBackbone` at 96-128 px, in eval mode."""
    torch.manual_seed(0)
    anchors = AnchorGenerator(((8,), (16,)), ((1.0,), (1.0,)))
    model = FCOS(
        TwoLevelBackbone(),
        num_classes,
        min_size=96,
        max_size=128,
        anchor_generator=anchors,
        score_thresh=0.05,
        detections_per_img=50,
    )
    model.head = FCOSHead(32, 1, num_classes, num_convs=1)
    return model.eval()


def tiny_faster_rcnn(num_classes: int = 4) -> nn.Module:
    """A seeded Faster R-CNN on :class:`TwoLevelBackbone` at 96-128 px, in eval mode."""
    torch.manual_seed(0)
    anchors = AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2)
    pool = MultiScaleRoIAlign(["0", "1"], output_size=7, sampling_ratio=2)
    model = FasterRCNN(
        TwoLevelBackbone(),
        num_classes,
        min_size=96,
        max_size=128,
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        representation_size=32,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        box_score_thresh=0.05,
        box_detections_per_img=50,
    )
    return model.eval()
