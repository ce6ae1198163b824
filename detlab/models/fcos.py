"""FCOS (anchor-free one-stage) on torchvision's ``FCOS``.

:class:`FCOSDetector` subclasses torchvision's model, so torchvision's COCO state
dict loads by key name, and inference runs torchvision's code unchanged. Labels
need no mapping: torchvision's FCOS scores classes ``0..C-1`` with sigmoids and
has no background index, which is detlab's contract already.

Legend for shape comments: ``B`` batch, ``N`` boxes, ``K`` detections, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchvision.models.detection import FCOS
from torchvision.models.detection.fcos import FCOS_ResNet50_FPN_Weights
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detlab.models.contract import (
    TorchvisionDetector,
    backbone_defaults,
    detector_kwargs,
    finish_build,
    fpn_backbone,
    start_build,
)

# name -> backbone: "r<depth>" is a torchvision ResNet, "effl0" timm's EfficientNet-Lite0.
BACKBONES = {
    "fcos_r18_fpn": "r18",
    "fcos_r34_fpn": "r34",
    "fcos_r50_fpn": "r50",
    "fcos_r101_fpn": "r101",
    "fcos_effl0_fpn": "effl0",
}
COCO_WEIGHTS = {"fcos_r50_fpn": FCOS_ResNet50_FPN_Weights.COCO_V1.url}
HEAD_PREFIXES = ("head.classification_head.cls_logits.",)


@dataclass
class FCOSKnobs:
    """Build options of an FCOS; defaults are torchvision's ``fcos_resnet50_fpn``."""

    min_size: int = 800  # shorter side after torchvision's resize, in pixels
    max_size: int = 1333  # cap on the longer side after the resize
    center_sampling_radius: float = 1.5  # positives lie within this many strides of a box centre
    score_thresh: float = 0.05  # detections scoring below are dropped before NMS
    nms_thresh: float = 0.6  # IoU of the per-class NMS
    detections_per_img: int = 100  # detections kept after NMS
    topk_candidates: int = 1000  # best-scoring locations kept per pyramid level before NMS
    # channels of the FPN and of the head's conv towers: 256 as published (and as `coco` weights
    # need); smaller is several times cheaper on CPU
    fpn_channels: int = 256
    trainable_layers: int | None = None  # ResNet stages trained, 0..5; None: 3 when pretrained, else 5
    frozen_bn: bool | None = None  # frozen backbone BatchNorm; None: when pretrained


_BUILD_ONLY = ("fpn_channels", "trainable_layers", "frozen_bn")  # knobs the builder uses itself


class FCOSDetector(TorchvisionDetector, FCOS):
    """torchvision ``FCOS`` speaking detlab's model contract (see CONTRIBUTING.md).

    Train mode: ``model(images, targets) -> {"loss_classification",
    "loss_bbox_regression", "loss_bbox_ctrness"}``. Eval mode: ``model(images)``
    → per image ``{"boxes": float32 [K, 4] xyxy in that image's pixels,
    "scores": [K], "labels": int64 [K] in 0..C-1}``.
    """

    transform_recipe = "fcos"
    backbone_prefixes = ("backbone.body.",)
    # what autocast covers in mixed-precision inference (detlab.models.precision); decoding stays float32
    network_modules = ("backbone", "head")


def build_fcos(
    name: str,
    num_classes: int,
    weights: str = "none",
    *,
    log: Callable[[str], None] | None = print,
    **knobs,
) -> FCOSDetector:
    """Build an FCOS of the catalogue.

    Args:
        name: one of :data:`BACKBONES`.
        num_classes: ``C``, the number of object classes (no background).
        weights: ``none`` | ``imagenet`` (backbone) | ``coco`` (``fcos_r50_fpn``
            only; the class head is re-initialised for ``C != 91``) | a path to a
            detlab checkpoint or torchvision state dict.
        log: where weight-loading summaries go.
        **knobs: fields of :class:`FCOSKnobs`.

    Returns:
        :class:`FCOSDetector` with the catalogue attributes set.
    """
    spec, k = start_build(name, BACKBONES, FCOSKnobs, weights, knobs, "an FCOS model")
    backbone_defaults(k, pretrained=spec != "none")
    extra = LastLevelP6P7(k.fpn_channels, k.fpn_channels)  # P6/P7 from P5, as torchvision's fcos_resnet50_fpn
    backbone = fpn_backbone(BACKBONES[name], spec == "imagenet", k, (2, 3, 4), extra, k.fpn_channels)
    model = FCOSDetector(backbone, num_classes, **detector_kwargs(k, _BUILD_ONLY))
    return finish_build(model, name, num_classes, k, spec, COCO_WEIGHTS.get(name), HEAD_PREFIXES, log)
