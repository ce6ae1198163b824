"""RetinaNet (anchor-based one-stage, focal loss) on torchvision's ``RetinaNet``.

:class:`RetinaNetDetector` subclasses torchvision's model, so torchvision's COCO
state dict loads by key name. Labels need no mapping: torchvision's RetinaNet
scores classes ``0..C-1`` with sigmoids and has no background index.

Legend for shape comments: ``N`` boxes, ``K`` detections, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNet_ResNet50_FPN_Weights
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detlab.errors import ConfigError
from detlab.models.backbones import resnet_fpn_backbone
from detlab.models.contract import ValLossesByFlag, loss_targets
from detlab.models.weights import load_detector_weights, parse_weights_spec

BACKBONES = {"retinanet_r50_fpn": "r50"}
COCO_WEIGHTS = {"retinanet_r50_fpn": RetinaNet_ResNet50_FPN_Weights.COCO_V1.url}
HEAD_PREFIXES = ("head.classification_head.cls_logits.",)


class RetinaNetDetector(ValLossesByFlag, RetinaNet):
    """torchvision ``RetinaNet`` speaking detlab's model contract (see CONTRIBUTING.md).

    Train mode: ``model(images, targets) -> {"loss_classification",
    "loss_bbox_regression"}``. Eval mode: ``model(images)`` → per image
    ``{"boxes": float32 [K, 4] xyxy in that image's pixels, "scores": [K],
    "labels": int64 [K] in 0..C-1}``.
    """

    family = "retinanet"
    transform_recipe = "retinanet"
    backbone_prefixes = ("backbone.body.",)
    # what autocast covers in mixed-precision inference (detlab.models.precision); decoding stays float32
    network_modules = ("backbone", "head")

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
            return {f"loss_{k}": v for k, v in out.items()}
        return out


def build_retinanet(
    name: str,
    num_classes: int,
    weights: str = "none",
    *,
    min_size: int = 800,
    max_size: int = 1333,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 300,
    topk_candidates: int = 1000,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    log: Callable[[str], None] | None = print,
) -> RetinaNetDetector:
    """Build a RetinaNet of the catalogue (torchvision's v1 ResNet-50-FPN layout).

    Args:
        name: one of :data:`BACKBONES`.
        num_classes: ``C``, the number of object classes (no background).
        weights: ``none`` | ``imagenet`` | ``coco`` (class head re-initialised
            for ``C != 91``) | a path to a detlab checkpoint or torchvision state dict.
        min_size, max_size: the resize of torchvision's transform, in pixels.
        score_thresh: detections scoring below are dropped before NMS.
        nms_thresh: IoU of the per-class NMS.
        detections_per_img: kept after NMS.
        topk_candidates: best-scoring anchors kept per level before NMS.
        trainable_layers: ResNet stages trained (0..5; default 3 when pretrained, else 5).
        frozen_bn: frozen backbone BatchNorm (default: when pretrained).
        log: where weight-loading summaries go.

    Returns:
        :class:`RetinaNetDetector` with the catalogue attributes set.
    """
    if name not in BACKBONES:
        raise ConfigError(f"{name} is not a RetinaNet model: use one of {', '.join(BACKBONES)}")
    spec = parse_weights_spec(weights)
    pretrained = spec != "none"
    frozen_bn = pretrained if frozen_bn is None else bool(frozen_bn)
    trainable_layers = (3 if pretrained else 5) if trainable_layers is None else int(trainable_layers)
    depth = int(BACKBONES[name][1:])
    backbone = resnet_fpn_backbone(
        depth, spec == "imagenet", trainable_layers, frozen_bn, (2, 3, 4), LastLevelP6P7(256, 256)
    )
    model = RetinaNetDetector(
        backbone,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=topk_candidates,
    )
    model.name = name
    model.num_classes = num_classes
    model.build_kwargs = dict(
        min_size=min_size, max_size=max_size, score_thresh=score_thresh, nms_thresh=nms_thresh,
        detections_per_img=detections_per_img, topk_candidates=topk_candidates,
        trainable_layers=trainable_layers, frozen_bn=frozen_bn,
    )  # fmt: skip
    load_detector_weights(model, spec, COCO_WEIGHTS.get(name), HEAD_PREFIXES, log)
    return model
