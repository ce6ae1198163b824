"""FCOS (anchor-free one-stage) on torchvision's ``FCOS``.

:class:`FCOSDetector` subclasses torchvision's model, so torchvision's COCO state
dict loads by key name, and inference runs torchvision's code unchanged. Labels
need no mapping: torchvision's FCOS scores classes ``0..C-1`` with sigmoids and
has no background index, which is detlab's contract already.

Legend for shape comments: ``B`` batch, ``N`` boxes, ``K`` detections, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchvision.models.detection import FCOS
from torchvision.models.detection.fcos import FCOS_ResNet50_FPN_Weights
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detlab.errors import ConfigError
from detlab.models.backbones import effl0_fpn_backbone, resnet_fpn_backbone
from detlab.models.contract import ValLossesByFlag, loss_targets
from detlab.models.weights import load_detector_weights, parse_weights_spec

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


class FCOSDetector(ValLossesByFlag, FCOS):
    """torchvision ``FCOS`` speaking detlab's model contract (see CONTRIBUTING.md).

    Train mode: ``model(images, targets) -> {"loss_classification",
    "loss_bbox_regression", "loss_bbox_ctrness"}``. Eval mode: ``model(images)``
    → per image ``{"boxes": float32 [K, 4] xyxy in that image's pixels,
    "scores": [K], "labels": int64 [K] in 0..C-1}``.
    """

    family = "fcos"
    transform_recipe = "fcos"
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


def build_fcos(
    name: str,
    num_classes: int,
    weights: str = "none",
    *,
    min_size: int = 800,
    max_size: int = 1333,
    center_sampling_radius: float = 1.5,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
    fpn_channels: int = 256,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    log: Callable[[str], None] | None = print,
) -> FCOSDetector:
    """Build an FCOS of the catalogue.

    Args:
        name: one of :data:`BACKBONES`.
        num_classes: ``C``, the number of object classes (no background).
        weights: ``none`` | ``imagenet`` (backbone) | ``coco`` (``fcos_r50_fpn``
            only; the class head is re-initialised for ``C != 91``) | a path to a
            detlab checkpoint or torchvision state dict.
        min_size, max_size: the resize of torchvision's transform (shorter side,
            longer-side cap), in pixels.
        center_sampling_radius: positives lie within this many strides of a box centre.
        score_thresh: detections scoring below are dropped before NMS.
        nms_thresh: IoU of the per-class NMS.
        detections_per_img: kept after NMS.
        topk_candidates: best-scoring locations kept per pyramid level before NMS.
        fpn_channels: channels of the FPN and of the head's conv towers; 256 as published
            (and as ``coco`` weights need), smaller is several times cheaper on CPU.
        trainable_layers: ResNet stages trained (0..5; default 3 when pretrained, else 5).
        frozen_bn: frozen backbone BatchNorm (default: when pretrained).
        log: where weight-loading summaries go.

    Returns:
        :class:`FCOSDetector` with the catalogue attributes set.
    """
    if name not in BACKBONES:
        raise ConfigError(f"{name} is not an FCOS model: use one of {', '.join(BACKBONES)}")
    spec = parse_weights_spec(weights)
    pretrained = spec != "none"
    frozen_bn = pretrained if frozen_bn is None else bool(frozen_bn)
    trainable_layers = (3 if pretrained else 5) if trainable_layers is None else int(trainable_layers)
    backbone_id = BACKBONES[name]
    extra = LastLevelP6P7(fpn_channels, fpn_channels)  # P6/P7 from P5, as torchvision's fcos_resnet50_fpn
    if backbone_id == "effl0":
        backbone = effl0_fpn_backbone(spec == "imagenet", (2, 3, 4), extra, frozen_bn, fpn_channels)
    else:
        depth = int(backbone_id[1:])
        backbone = resnet_fpn_backbone(
            depth, spec == "imagenet", trainable_layers, frozen_bn, (2, 3, 4), extra, fpn_channels
        )
    model = FCOSDetector(
        backbone,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        center_sampling_radius=center_sampling_radius,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=topk_candidates,
    )
    model.name = name
    model.num_classes = num_classes
    model.build_kwargs = dict(
        min_size=min_size, max_size=max_size, center_sampling_radius=center_sampling_radius,
        score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
        topk_candidates=topk_candidates, fpn_channels=fpn_channels, trainable_layers=trainable_layers,
        frozen_bn=frozen_bn,
    )  # fmt: skip
    load_detector_weights(model, spec, COCO_WEIGHTS.get(name), HEAD_PREFIXES, log)
    return model
