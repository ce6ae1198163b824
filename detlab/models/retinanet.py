"""RetinaNet (anchor-based one-stage, focal loss) on torchvision's ``RetinaNet``.

:class:`RetinaNetDetector` subclasses torchvision's model, so torchvision's COCO
state dict loads by key name. Labels need no mapping: torchvision's RetinaNet
scores classes ``0..C-1`` with sigmoids and has no background index.

Legend for shape comments: ``N`` boxes, ``K`` detections, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNet_ResNet50_FPN_Weights
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detlab.models.contract import (
    TorchvisionDetector,
    backbone_defaults,
    detector_kwargs,
    finish_build,
    fpn_backbone,
    start_build,
)

BACKBONES = {"retinanet_r50_fpn": "r50"}
COCO_WEIGHTS = {"retinanet_r50_fpn": RetinaNet_ResNet50_FPN_Weights.COCO_V1.url}
HEAD_PREFIXES = ("head.classification_head.cls_logits.",)


@dataclass
class RetinaNetKnobs:
    """Build options of a RetinaNet; defaults are torchvision's ``retinanet_resnet50_fpn``."""

    min_size: int = 800  # shorter side after torchvision's resize, in pixels
    max_size: int = 1333  # cap on the longer side after the resize
    score_thresh: float = 0.05  # detections scoring below are dropped before NMS
    nms_thresh: float = 0.5  # IoU of the per-class NMS
    detections_per_img: int = 300  # detections kept after NMS
    topk_candidates: int = 1000  # best-scoring anchors kept per level before NMS
    trainable_layers: int | None = None  # ResNet stages trained, 0..5; None: 3 when pretrained, else 5
    frozen_bn: bool | None = None  # frozen backbone BatchNorm; None: when pretrained


_BUILD_ONLY = ("trainable_layers", "frozen_bn")  # knobs the builder uses itself


class RetinaNetDetector(TorchvisionDetector, RetinaNet):
    """torchvision ``RetinaNet`` speaking detlab's model contract (see CONTRIBUTING.md).

    Train mode: ``model(images, targets) -> {"loss_classification",
    "loss_bbox_regression"}``. Eval mode: ``model(images)`` → per image
    ``{"boxes": float32 [K, 4] xyxy in that image's pixels, "scores": [K],
    "labels": int64 [K] in 0..C-1}``.
    """

    transform_recipe = "retinanet"
    backbone_prefixes = ("backbone.body.",)
    # what autocast covers in mixed-precision inference (detlab.models.precision); decoding stays float32
    network_modules = ("backbone", "head")


def build_retinanet(
    name: str,
    num_classes: int,
    weights: str = "none",
    *,
    log: Callable[[str], None] | None = print,
    **knobs,
) -> RetinaNetDetector:
    """Build a RetinaNet of the catalogue (torchvision's v1 ResNet-50-FPN layout).

    Args:
        name: one of :data:`BACKBONES`.
        num_classes: ``C``, the number of object classes (no background).
        weights: ``none`` | ``imagenet`` | ``coco`` (class head re-initialised
            for ``C != 91``) | a path to a detlab checkpoint or torchvision state dict.
        log: where weight-loading summaries go.
        **knobs: fields of :class:`RetinaNetKnobs`.

    Returns:
        :class:`RetinaNetDetector` with the catalogue attributes set.
    """
    spec, k = start_build(name, BACKBONES, RetinaNetKnobs, weights, knobs, "a RetinaNet model")
    backbone_defaults(k, pretrained=spec != "none")
    backbone = fpn_backbone(BACKBONES[name], spec == "imagenet", k, (2, 3, 4), LastLevelP6P7(256, 256))
    model = RetinaNetDetector(backbone, num_classes, **detector_kwargs(k, _BUILD_ONLY))
    return finish_build(model, name, num_classes, k, spec, COCO_WEIGHTS.get(name), HEAD_PREFIXES, log)
