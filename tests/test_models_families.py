"""Every torchvision-based catalogue model: the output contract, val_losses, and "loss goes down".

Tiny synthetic images (48x64, resized by each model to 45x60, or a square for SSD),
weights "none", so nothing is read from disk. DETR is tested in its own file.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from detlab.errors import ConfigError
from detlab.models.catalogue import build_model, list_models

NUM_CLASSES = 3
FPN_TINY = dict(min_size=48, max_size=60)  # the 48x64 scenes become 45x60: resized, not square
FRCNN_TINY = dict(
    FPN_TINY, rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32
)
TINY = {
    "faster_rcnn_r50_fpn": FRCNN_TINY,
    "faster_rcnn_r18_fpn": FRCNN_TINY,
    "faster_rcnn_effl0_fpn": FRCNN_TINY,
    "fcos_r18_fpn": FPN_TINY,
    "fcos_r34_fpn": FPN_TINY,
    "fcos_r50_fpn": FPN_TINY,
    "fcos_r101_fpn": FPN_TINY,
    "fcos_effl0_fpn": FPN_TINY,
    "retinanet_r50_fpn": FPN_TINY,
    "ssd300_vgg16": dict(
        size=300, trainable_layers=0
    ),  # its VGG pyramid needs ~300 px; frozen trunk: cheap steps
    "ssdlite_effl0": dict(size=64),
}
FAMILY = {
    "faster": "faster_rcnn",
    "fcos": "fcos",
    "retinanet": "retinanet",
    "ssd300": "ssd",
    "ssdlite": "ssd",
}


def _scene(height: int = 48, width: int = 64) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A non-square image with a red and a blue rectangle, and their boxes (xyxy px)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, height, width, generator=g) * 0.2
    image[:, 10:40, 8:30] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    image[:, 5:30, 40:60] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]
    target = {
        "boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0], [40.0, 5.0, 60.0, 30.0]]),
        "labels": torch.tensor([0, 2]),
        "iscrowd": torch.tensor([False, False]),
    }
    return image, target


def _empty_target() -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "iscrowd": torch.zeros(0, dtype=torch.bool),
    }


def _norm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


# (name, AdamW learning rate, seed, boxes). Every model halves its training loss
# within 30 optimizer steps on one image (it stops at the step that does, to keep
# the suite fast); one model per family (boxes=True) runs all 30 steps and must
# then find the boxes. fcos_r50_fpn uses seed 1: with seed 0 its from-scratch
# box-regression ReLUs start dead (GIoU loss stays at 1.0), a known property of
# torchvision's FCOS head without pretrained weights, not of detlab.
SCHEDULE = [
    ("fcos_r18_fpn", 5e-4, 0, True),
    ("faster_rcnn_r18_fpn", 1e-4, 0, True),
    ("ssdlite_effl0", 3e-3, 0, True),
    ("fcos_effl0_fpn", 1e-3, 0, False),
    ("faster_rcnn_effl0_fpn", 3e-4, 0, False),
    ("fcos_r34_fpn", 5e-4, 0, False),
    ("fcos_r50_fpn", 5e-4, 1, False),
    ("fcos_r101_fpn", 5e-4, 0, False),
    ("faster_rcnn_r50_fpn", 1e-4, 0, False),
    ("retinanet_r50_fpn", 3e-4, 0, False),
    ("ssd300_vgg16", 1e-4, 0, False),
]


def test_schedule_covers_every_torchvision_model():
    assert {s[0] for s in SCHEDULE} == set(TINY) == {n for n in list_models() if not n.startswith("detr_")}


def _check_contract(model: nn.Module, name: str) -> None:
    """Train-mode losses (with an empty image), eval detections, and val_losses leaving state alone."""
    assert model.name == name and model.num_classes == NUM_CLASSES
    assert model.family == FAMILY[name.split("_")[0]] and model.transform_recipe == model.family
    assert all(any(k.startswith(p) for k in model.state_dict()) for p in model.backbone_prefixes)
    image, target = _scene()
    other = torch.rand(3, 56, 40)
    model.train()
    with torch.no_grad():
        losses = model([image, other], [target, _empty_target()])
        batch = getattr(model, "min_train_batch", 1)
        empty = model([other] * batch, [_empty_target()] * batch)  # an image without boxes is normal data
    assert losses and all(k.startswith("loss_") for k in losses)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in [*losses.values(), *empty.values()])
    model.eval()
    with torch.no_grad():
        before = _norm_state(model)
        detections = model([image, other])
        val = model.val_losses([image, other], [target, _empty_target()])
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in _norm_state(model).items())
    assert set(val) == set(losses) and all(torch.isfinite(v) for v in val.values())
    assert len(detections) == 2
    for det, img in zip(detections, [image, other]):
        k = det["boxes"].shape[0]
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape == (k, 4)
        assert (
            det["scores"].shape == (k,) and det["labels"].dtype == torch.int64 and det["labels"].shape == (k,)
        )
        assert k == 0 or (0 <= int(det["labels"].min()) and int(det["labels"].max()) < NUM_CLASSES)
        height, width = img.shape[-2:]
        assert k == 0 or (
            float(det["boxes"][:, 2].max()) <= width + 1e-3
            and float(det["boxes"][:, 3].max()) <= height + 1e-3
        )


@pytest.mark.parametrize("name, lr, seed, boxes", SCHEDULE)
def test_contract_then_loss_halves_in_30_steps_and_boxes_come_back_in_the_image_frame(name, lr, seed, boxes):
    torch.manual_seed(seed)
    model = build_model(name, NUM_CLASSES, **TINY[name])
    _check_contract(model, name)
    image, target = _scene()
    images, targets = (
        ([image, image], [target, target]) if name.startswith("ssdlite") else ([image], [target])
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    history = []
    for _ in range(30):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if not boxes and history[-1] < 0.5 * history[0]:
            break
    assert history[-1] < 0.5 * history[0], history
    if boxes:  # overfit enough to find the boxes, which must be in the 48x64 image's frame
        model.eval()
        with torch.no_grad():
            det = model([image])[0]
        assert box_iou(target["boxes"], det["boxes"][:20]).max(dim=1).values.min() > 0.5, det


def test_ssdlite_refuses_a_one_image_training_batch():
    model = build_model("ssdlite_effl0", NUM_CLASSES, size=64).train()
    image, target = _scene()
    with pytest.raises(ConfigError, match="at least 2 images"):
        model([image], [target])


def test_val_losses_keep_batchnorm_statistics_that_training_would_change():
    model = build_model("fcos_r18_fpn", NUM_CLASSES, **FPN_TINY)
    image, target = _scene()
    model.eval()
    before = _norm_state(model)
    with torch.no_grad():
        model.val_losses([image], [target])
    assert all(torch.equal(before[k], v) for k, v in _norm_state(model).items())
    model.train()
    with torch.no_grad():
        model([image], [target])
    changed = _norm_state(model)
    assert not torch.equal(
        before["backbone.body.bn1.running_mean"], changed["backbone.body.bn1.running_mean"]
    )


def test_crowd_boxes_are_left_out_of_the_loss():
    torch.manual_seed(0)
    model = build_model("fcos_r18_fpn", NUM_CLASSES, **FPN_TINY).eval()
    image, target = _scene()
    crowd = dict(target, iscrowd=torch.tensor([False, True]))
    alone = {k: v[:1] for k, v in target.items()}
    with torch.no_grad():
        with_crowd = model.val_losses([image], [crowd])
        without = model.val_losses([image], [alone])
    assert all(torch.allclose(with_crowd[k], without[k]) for k in without)


@pytest.mark.parametrize(
    "name, shift", [("faster_rcnn_r18_fpn", 1), ("fcos_r18_fpn", 0), ("ssdlite_effl0", 1)]
)
def test_eval_is_torchvision_with_labels_shifted(name, shift):
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, **TINY[name]).eval()
    torchvision_cls = next(c for c in type(model).__mro__ if c.__module__.startswith("torchvision."))
    torchvision_forward = torchvision_cls.forward  # the torchvision class it extends
    images = [_scene()[0], torch.rand(3, 56, 40)]
    with torch.no_grad():
        ours = model(images)  # two sizes: each runs in its own call (contract.run_by_size)
        if model.pads_batches:
            reference = [torchvision_forward(model, [im])[0] for im in images]
        else:  # SSD resizes every image to one square: one batch, as torchvision runs it
            reference = torchvision_forward(model, images)
    assert ours[0]["boxes"].shape[0] > 0  # random weights still give low-score boxes to compare
    for a, b in zip(ours, reference):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
        assert torch.equal(a["labels"], b["labels"] - shift)
