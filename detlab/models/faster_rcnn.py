"""Faster R-CNN (two-stage) on torchvision's ``FasterRCNN``.

:class:`FasterRCNNDetector` subclasses torchvision's model, so torchvision's COCO
state dict loads by key name and inference runs torchvision's code unchanged.

Label mapping (this file only): torchvision's box predictor reserves index 0
for background, so the model is built with ``C + 1`` classes; targets go in as
``labels + 1`` and detections come out as ``labels - 1`` (detlab's ``0..C-1``).

Legend for shape comments: ``N`` boxes, ``K`` detections, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FasterRCNN_ResNet50_FPN_Weights
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detlab.errors import ConfigError
from detlab.models.backbones import effl0_fpn_backbone, resnet_fpn_backbone
from detlab.models.contract import ValLossesByFlag, loss_targets
from detlab.models.weights import load_detector_weights, parse_weights_spec

BACKBONES = {
    "faster_rcnn_r50_fpn": "r50",
    "faster_rcnn_r18_fpn": "r18",
    "faster_rcnn_effl0_fpn": "effl0",
}
COCO_WEIGHTS = {"faster_rcnn_r50_fpn": FasterRCNN_ResNet50_FPN_Weights.COCO_V1.url}
# cls_score [C+1, 1024] and bbox_pred [4(C+1), 1024] both depend on the class count.
HEAD_PREFIXES = ("roi_heads.box_predictor.",)


class FasterRCNNDetector(ValLossesByFlag, FasterRCNN):
    """torchvision ``FasterRCNN`` speaking detlab's model contract (see CONTRIBUTING.md).

    Train mode: ``model(images, targets) -> {"loss_classifier", "loss_box_reg",
    "loss_objectness", "loss_rpn_box_reg"}``. Eval mode: ``model(images)`` →
    per image ``{"boxes": float32 [K, 4] xyxy in that image's pixels,
    "scores": [K], "labels": int64 [K] in 0..C-1}``.
    """

    family = "faster_rcnn"
    transform_recipe = "faster_rcnn"
    backbone_prefixes = ("backbone.body.",)
    # torchvision branches on these flags for losses and proposal sampling; the RoI
    # heads sample proposals at random as in training, so two val-loss calls differ slightly.
    loss_flag_modules = ("rpn", "roi_heads")
    label_offset = 1  # torchvision's Faster R-CNN keeps class 0 for background
    # what autocast covers in mixed-precision inference (detlab.models.precision); decoding stays float32
    network_modules = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor")

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Losses (train mode) or detections (eval mode); see the class docstring.

        Args:
            images: ``[3, H, W]`` float images in 0..1, any sizes.
            targets: per image ``boxes`` float32 ``[N, 4]`` xyxy absolute pixels and
                ``labels`` int64 ``[N]`` in ``0..C-1``; ``iscrowd`` boxes, when
                flagged, are left out of the loss.
        """
        if targets is not None:
            targets = loss_targets(targets, self.label_offset)
        out = super().forward(images, targets)
        if self.training:
            return out  # torchvision's keys already start with "loss_"
        for det in out:
            det["labels"] = det["labels"] - self.label_offset  # [K], background 0 never comes out
        return out


def build_faster_rcnn(
    name: str,
    num_classes: int,
    weights: str = "none",
    *,
    min_size: int = 800,
    max_size: int = 1333,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    box_batch_size_per_image: int = 512,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    log: Callable[[str], None] | None = print,
) -> FasterRCNNDetector:
    """Build a Faster R-CNN of the catalogue.

    Args:
        name: one of :data:`BACKBONES`.
        num_classes: ``C``, the number of object classes (no background).
        weights: ``none`` | ``imagenet`` (backbone) | ``coco``
            (``faster_rcnn_r50_fpn`` only; the box predictor is re-initialised
            for ``C != 90``) | a path to a detlab checkpoint or torchvision state dict.
        min_size, max_size: the resize of torchvision's transform, in pixels.
        score_thresh: box-head detections scoring below are dropped.
        nms_thresh: IoU of the per-class NMS of the box head.
        detections_per_img: kept after NMS.
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: proposals per image
            kept by the RPN; the box head's cost grows with them.
        box_batch_size_per_image: proposals sampled per image for the box-head loss.
        trainable_layers: ResNet stages trained (0..5; default 3 when pretrained, else 5).
        frozen_bn: frozen backbone BatchNorm (default: when pretrained).
        log: where weight-loading summaries go.

    Returns:
        :class:`FasterRCNNDetector` with the catalogue attributes set.
    """
    if name not in BACKBONES:
        raise ConfigError(f"{name} is not a Faster R-CNN model: use one of {', '.join(BACKBONES)}")
    spec = parse_weights_spec(weights)
    pretrained = spec != "none"
    frozen_bn = pretrained if frozen_bn is None else bool(frozen_bn)
    trainable_layers = (3 if pretrained else 5) if trainable_layers is None else int(trainable_layers)
    backbone_id = BACKBONES[name]
    if backbone_id == "effl0":
        # strides 4..32 + max-pooled P6: the five levels torchvision's default anchors expect
        backbone = effl0_fpn_backbone(spec == "imagenet", (1, 2, 3, 4), LastLevelMaxPool(), frozen_bn)
    else:
        depth = int(backbone_id[1:])
        backbone = resnet_fpn_backbone(
            depth, spec == "imagenet", trainable_layers, frozen_bn, (1, 2, 3, 4), LastLevelMaxPool()
        )
    model = FasterRCNNDetector(
        backbone,
        num_classes + 1,
        min_size=min_size,
        max_size=max_size,
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_batch_size_per_image=box_batch_size_per_image,
    )
    model.name = name
    model.num_classes = num_classes
    model.build_kwargs = dict(
        min_size=min_size, max_size=max_size, score_thresh=score_thresh, nms_thresh=nms_thresh,
        detections_per_img=detections_per_img, rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test, box_batch_size_per_image=box_batch_size_per_image,
        trainable_layers=trainable_layers, frozen_bn=frozen_bn,
    )  # fmt: skip
    load_detector_weights(model, spec, COCO_WEIGHTS.get(name), HEAD_PREFIXES, log)
    return model
