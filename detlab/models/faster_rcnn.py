"""Faster R-CNN (two-stage) on torchvision's ``FasterRCNN``.

:class:`FasterRCNNDetector` subclasses torchvision's model, so torchvision's COCO
state dict loads by key name and inference runs torchvision's code unchanged.

Label mapping: torchvision's box predictor reserves index 0 for background, so
the model is built with ``C + 1`` classes and ``label_offset = 1``: the shared
forward (``contract.py``) passes targets as ``labels + 1`` and returns detections
as ``labels - 1`` (detlab's ``0..C-1``).

Legend for shape comments: ``N`` boxes, ``K`` detections, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FasterRCNN_ResNet50_FPN_Weights
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detlab.models.contract import (
    TorchvisionDetector,
    backbone_defaults,
    detector_kwargs,
    finish_build,
    fpn_backbone,
    start_build,
)

BACKBONES = {
    "faster_rcnn_r50_fpn": "r50",
    "faster_rcnn_r18_fpn": "r18",
    "faster_rcnn_effl0_fpn": "effl0",
}
COCO_WEIGHTS = {"faster_rcnn_r50_fpn": FasterRCNN_ResNet50_FPN_Weights.COCO_V1.url}
# cls_score [C+1, 1024] and bbox_pred [4(C+1), 1024] both depend on the class count.
HEAD_PREFIXES = ("roi_heads.box_predictor.",)


@dataclass
class FasterRCNNKnobs:
    """Build options of a Faster R-CNN; defaults are torchvision's ``fasterrcnn_resnet50_fpn``."""

    min_size: int = 800  # shorter side after torchvision's resize, in pixels
    max_size: int = 1333  # cap on the longer side after the resize
    score_thresh: float = 0.05  # box-head detections scoring below are dropped
    nms_thresh: float = 0.5  # IoU of the box head's per-class NMS
    detections_per_img: int = 100  # detections kept after NMS
    # RPN proposals kept per image in training; the box head's cost grows with them
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000  # RPN proposals per image in evaluation
    box_batch_size_per_image: int = 512  # proposals sampled per image for the box-head loss
    trainable_layers: int | None = None  # ResNet stages trained, 0..5; None: 3 when pretrained, else 5
    frozen_bn: bool | None = None  # frozen backbone BatchNorm; None: when pretrained


# knobs the builder uses itself, and those torchvision's FasterRCNN names after its box head
_BUILD_ONLY = ("trainable_layers", "frozen_bn")
_RENAMED = {
    "score_thresh": "box_score_thresh",
    "nms_thresh": "box_nms_thresh",
    "detections_per_img": "box_detections_per_img",
}


class FasterRCNNDetector(TorchvisionDetector, FasterRCNN):
    """torchvision ``FasterRCNN`` speaking detlab's model contract (see CONTRIBUTING.md).

    Train mode: ``model(images, targets) -> {"loss_classifier", "loss_box_reg",
    "loss_objectness", "loss_rpn_box_reg"}``. Eval mode: ``model(images)`` →
    per image ``{"boxes": float32 [K, 4] xyxy in that image's pixels,
    "scores": [K], "labels": int64 [K] in 0..C-1}``.
    """

    transform_recipe = "faster_rcnn"
    backbone_prefixes = ("backbone.body.",)
    # torchvision branches on these flags for losses and proposal sampling; the RoI
    # heads sample proposals at random as in training, so two val-loss calls differ slightly.
    loss_flag_modules = ("rpn", "roi_heads")
    label_offset = 1  # torchvision's Faster R-CNN keeps class 0 for background
    # what autocast covers in mixed-precision inference (detlab.models.precision); decoding stays float32
    network_modules = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor")


def build_faster_rcnn(
    name: str,
    num_classes: int,
    weights: str = "none",
    *,
    log: Callable[[str], None] | None = print,
    **knobs,
) -> FasterRCNNDetector:
    """Build a Faster R-CNN of the catalogue.

    Args:
        name: one of :data:`BACKBONES`.
        num_classes: ``C``, the number of object classes (no background).
        weights: ``none`` | ``imagenet`` (backbone) | ``coco``
            (``faster_rcnn_r50_fpn`` only; the box predictor is re-initialised
            for ``C != 90``) | a path to a detlab checkpoint or torchvision state dict.
        log: where weight-loading summaries go.
        **knobs: fields of :class:`FasterRCNNKnobs`.

    Returns:
        :class:`FasterRCNNDetector` with the catalogue attributes set.
    """
    spec, k = start_build(name, BACKBONES, FasterRCNNKnobs, weights, knobs, "a Faster R-CNN model")
    backbone_defaults(k, pretrained=spec != "none")
    # strides 4..32 + max-pooled P6: the five levels torchvision's default anchors expect
    backbone = fpn_backbone(BACKBONES[name], spec == "imagenet", k, (1, 2, 3, 4), LastLevelMaxPool())
    model = FasterRCNNDetector(backbone, num_classes + 1, **detector_kwargs(k, _BUILD_ONLY, _RENAMED))
    return finish_build(model, name, num_classes, k, spec, COCO_WEIGHTS.get(name), HEAD_PREFIXES, log)
