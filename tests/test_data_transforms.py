"""Transforms: boxes move with the image (hand-computed), sanitize keeps flags aligned, recipes run."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from detlab.data.transforms import RECIPES, RandomSizeCrop, build_transforms, sanitize
from detlab.errors import ConfigError


def sample(boxes, h=100, w=200):
    n = len(boxes)
    image = tv_tensors.Image(torch.rand(3, h, w))
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
        ),
        "labels": torch.arange(n, dtype=torch.int64),
        "difficult": torch.tensor([i % 2 == 1 for i in range(n)]),
        "iscrowd": torch.tensor([i % 3 == 2 for i in range(n)]),
        "image_id": 5,
        "orig_size": (h, w),
    }
    return image, target


def test_flip_moves_boxes():
    image, target = sample([[10, 20, 50, 60]])
    out_img, out = v2.RandomHorizontalFlip(p=1.0)(image, target)
    assert out["boxes"].tolist() == [[150, 20, 190, 60]]  # x → W - x, W = 200
    assert torch.equal(out_img, image.flip(-1))


def test_resize_shorter_side_with_max_size():
    image, target = sample([[10, 20, 50, 60]])
    out_img, out = build_transforms("faster_rcnn", train=False, min_size=50, max_size=1000)(image, target)
    assert out_img.shape == (3, 50, 100)
    torch.testing.assert_close(out["boxes"], torch.tensor([[5.0, 10.0, 25.0, 30.0]]))
    out_img, out = build_transforms("faster_rcnn", train=False, min_size=80, max_size=120)(image, target)
    assert out_img.shape == (3, 60, 120)  # longer side capped: scale 0.6
    torch.testing.assert_close(out["boxes"], torch.tensor([[6.0, 12.0, 30.0, 36.0]]))


def test_square_resize_ssd_eval():
    image, target = sample([[10, 20, 50, 60]])
    out_img, out = build_transforms("ssd", train=False, size=50)(image, target)
    assert out_img.shape == (3, 50, 50)
    torch.testing.assert_close(out["boxes"], torch.tensor([[2.5, 10.0, 12.5, 30.0]]))


def test_sanitize_drops_degenerate_and_keeps_flags_aligned():
    image, target = sample(
        [
            [10, 10, 10, 50],
            [0, 0, 20, 20],
            [30, 30, 30.5, 80],
            [-50, 5, -10, 9],
            [190, 90, 260, 130],
            [5, 5, 9, 9],
        ]
    )
    out_img, out = v2.Compose(sanitize())(image, target)
    # kept: #1, #4 (clamped to 190..200, 90..100), #5; dropped: zero width, 0.5 px wide, fully left of the image
    assert out["labels"].tolist() == [1, 4, 5]
    assert out["difficult"].tolist() == [True, False, True]
    assert out["iscrowd"].tolist() == [False, False, True]
    assert out["boxes"].tolist() == [[0, 0, 20, 20], [190, 90, 200, 100], [5, 5, 9, 9]]
    assert out["image_id"] == 5 and out["orig_size"] == (100, 200)


def test_random_size_crop_keeps_boxes_in_the_crop():
    torch.manual_seed(0)
    image, target = sample([[0, 0, 200, 100]])
    for _ in range(5):
        out_img, out = RandomSizeCrop(30, 60)(image, target)
        h, w = out_img.shape[-2:]
        assert 30 <= h <= 60 and 30 <= w <= 60
        assert out["boxes"].tolist() == [[0, 0, w, h]]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_train_and_eval_keep_the_contract(recipe):
    torch.manual_seed(0)
    for train in (True, False):
        t = (
            build_transforms(recipe, train, min_size=[48, 64], max_size=96)
            if recipe != "ssd"
            else build_transforms(recipe, train, size=64)
        )
        for boxes in ([[10, 20, 50, 60], [100, 10, 190, 90], [60, 60, 61, 61.5]], []):
            img, out = t(*sample(boxes))
            n = out["boxes"].shape[0]
            assert out["labels"].shape == out["difficult"].shape == out["iscrowd"].shape == (n,)
            assert img.shape[0] == 3 and max(img.shape[-2:]) <= 96
            if n:
                b = out["boxes"]
                assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
                assert b[:, 2].max() <= img.shape[-1] and b[:, 3].max() <= img.shape[-2]


def test_unknown_recipe_or_size_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown"):
        build_transforms("yolo", True)
    with pytest.raises(ConfigError, match="min_size, max_size or size"):
        build_transforms("fcos", True, shorter=3)
