"""SSD300 (VGG-16) and SSDLite (EfficientNet-Lite0) on torchvision's ``SSD``.

:class:`SSDDetector` subclasses torchvision's ``SSD``: ``ssd300_vgg16`` is built
exactly as torchvision's ``ssd300_vgg16`` (its COCO state dict loads by key
name); ``ssdlite_effl0`` puts torchvision's SSDLite extra blocks and
``SSDLiteHead`` on timm's EfficientNet-Lite0 (strides 16 and 32, then four
extra levels), like torchvision's SSDLite320-MobileNetV3.

Label mapping: torchvision's SSD reserves class 0 for background, so the model is
built with ``C + 1`` classes and ``label_offset = 1``: the shared forward
(``contract.py``) passes targets as ``labels + 1`` and returns ``labels - 1``.

Both models resize every image to a fixed square (``size``) and map the boxes
back to each image's own pixels.

Legend for shape comments: ``B`` batch, ``N`` boxes, ``K`` detections, ``C`` classes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn
from torchvision.models import vgg16
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSD300_VGG16_Weights, SSDHead, _vgg_extractor
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init
from torchvision.models.vgg import VGG16_Weights

from detlab.errors import ConfigError
from detlab.models.backbones import efficientnet_lite0_features
from detlab.models.contract import (
    TorchvisionDetector,
    backbone_defaults,
    detector_kwargs,
    finish_build,
    start_build,
)
from detlab.models.weights import filename_from_url, read_pretrained_file, resolve_weights_file

BACKBONES = {"ssd300_vgg16": "vgg16", "ssdlite_effl0": "effl0"}
COCO_WEIGHTS = {"ssd300_vgg16": SSD300_VGG16_Weights.COCO_V1.url}
VGG16_IMAGENET_URL = VGG16_Weights.IMAGENET1K_FEATURES.url
HEAD_PREFIXES = ("head.classification_head.",)
DEFAULT_SIZE = {"ssd300_vgg16": 300, "ssdlite_effl0": 320}


@dataclass
class SSDKnobs:
    """Build options of an SSD; defaults are torchvision's ``ssd300_vgg16`` / ``ssdlite320`` ones."""

    size: int | None = None  # fixed square input side in px; None: 300 (ssd300_vgg16), 320 (ssdlite_effl0)
    score_thresh: float = 0.01  # detections scoring below are dropped before NMS
    nms_thresh: float = 0.45  # IoU of the per-class NMS
    detections_per_img: int = 200  # detections kept after NMS
    topk_candidates: int = 400  # best-scoring boxes kept per class before NMS
    trainable_layers: int | None = None  # VGG stages trained, 0..5; None: 4 when pretrained, else 5
    frozen_bn: bool | None = None  # frozen EfficientNet BatchNorm (ssdlite_effl0); None: when pretrained


_BUILD_ONLY = ("size", "trainable_layers", "frozen_bn")  # knobs the builder uses itself


class SSDDetector(TorchvisionDetector, SSD):
    """torchvision ``SSD`` speaking detlab's model contract (see CONTRIBUTING.md).

    Train mode: ``model(images, targets) -> {"loss_bbox_regression",
    "loss_classification"}``. Eval mode: ``model(images)`` → per image
    ``{"boxes": float32 [K, 4] xyxy in that image's pixels, "scores": [K],
    "labels": int64 [K] in 0..C-1}``.
    """

    transform_recipe = "ssd"
    label_offset = 1  # torchvision's SSD keeps class 0 for background
    # what autocast covers in mixed-precision inference (detlab.models.precision); decoding stays float32
    network_modules = ("backbone", "head")
    # SSDLite's BatchNorm sees 1x1 maps at its last levels: one image gives one
    # value per channel, which BatchNorm cannot normalise in train mode.
    min_train_batch = 1
    pads_batches = False  # every image is resized to size × size: a batch holds no padding

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """:meth:`TorchvisionDetector.forward`, images resized to ``size``; refuses a train batch
        smaller than ``min_train_batch`` with a config error instead of BatchNorm's."""
        if self.training and self.head.training and len(images) < self.min_train_batch:
            raise ConfigError(
                f"{self.name}: training needs at least {self.min_train_batch} images per batch "
                "(its BatchNorm layers see 1x1 maps); set batch_size >= 2"
            )
        return super().forward(images, targets)


class EffL0SSDLiteExtractor(nn.Module):
    """EfficientNet-Lite0 strides 16 and 32, then four SSDLite extra blocks (six maps).

    Args:
        body: timm ``features_only`` EfficientNet-Lite0 with ``out_indices=(3, 4)``.
        norm_layer: BatchNorm of the extra blocks.
        extra_channels: output channels of the four extra levels (as SSDLite320).
    """

    def __init__(
        self, body: nn.Module, norm_layer: Callable[..., nn.Module], extra_channels=(512, 256, 256, 128)
    ) -> None:
        super().__init__()
        self.body = body
        blocks = []
        channels = body.feature_info.channels()[-1]
        for out in extra_channels:
            blocks.append(_extra_block(channels, out, norm_layer))
            channels = out
        self.extra = nn.ModuleList(blocks)
        _normal_init(self.extra)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        output = list(self.body(x))  # [B, 112, H/16, W/16], [B, 320, H/32, W/32]
        x = output[-1]
        for block in self.extra:
            x = block(x)  # halves the side each time
            output.append(x)
        return OrderedDict((str(i), v) for i, v in enumerate(output))


def _vgg16_backbone(pretrained: bool, trainable_layers: int) -> nn.Module:
    vgg = vgg16(weights=None)
    if pretrained:
        path = resolve_weights_file(filename_from_url(VGG16_IMAGENET_URL), VGG16_IMAGENET_URL)
        state = read_pretrained_file(path, VGG16_IMAGENET_URL)
        # only the conv trunk is used by SSD; the file's classifier is not needed
        vgg.features.load_state_dict(
            {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        )
    return _vgg_extractor(vgg, False, trainable_layers)


def _out_channels(name: str, backbone: nn.Module, size: int) -> list[int]:
    try:
        return det_utils.retrieve_out_channels(backbone, (size, size))
    except RuntimeError:
        raise ConfigError(
            f"{name}: size={size} is too small for its feature pyramid; use size >= {DEFAULT_SIZE[name]}"
        ) from None


def _vgg16_parts(pretrained: bool, trainable_layers: int, num_classes: int, size: int):
    """Backbone, default boxes, head and input normalisation of torchvision's ssd300_vgg16."""
    backbone = _vgg16_backbone(pretrained, trainable_layers)
    anchors = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300] if size == 300 else None,  # the paper's steps are for 300 only
    )
    head = SSDHead(
        _out_channels("ssd300_vgg16", backbone, size), anchors.num_anchors_per_location(), num_classes + 1
    )
    # VGG weights expect 0..255 inputs minus the mean: undo ToTensor's scaling
    norm = dict(image_mean=[0.48235, 0.45882, 0.40784], image_std=[1.0 / 255.0] * 3)
    return backbone, anchors, head, norm


def _effl0_parts(pretrained: bool, frozen_bn: bool, num_classes: int, size: int):
    """Backbone, default boxes, head and input normalisation of ssdlite_effl0 (as SSDLite320)."""
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = EffL0SSDLiteExtractor(efficientnet_lite0_features(pretrained, (3, 4), frozen_bn), norm_layer)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    channels = _out_channels("ssdlite_effl0", backbone, size)
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes + 1, norm_layer)
    norm = dict(
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    )  # the ImageNet weights' stats
    return backbone, anchors, head, norm


def build_ssd(
    name: str,
    num_classes: int,
    weights: str = "none",
    *,
    log: Callable[[str], None] | None = print,
    **knobs,
) -> SSDDetector:
    """Build an SSD of the catalogue.

    Args:
        name: one of :data:`BACKBONES`.
        num_classes: ``C``, the number of object classes (no background).
        weights: ``none`` | ``imagenet`` (backbone) | ``coco`` (``ssd300_vgg16``
            only; class head re-initialised for ``C != 90``) | a path to a detlab
            checkpoint or torchvision state dict.
        log: where weight-loading summaries go.
        **knobs: fields of :class:`SSDKnobs`.

    Returns:
        :class:`SSDDetector` with the catalogue attributes set.
    """
    spec, k = start_build(name, BACKBONES, SSDKnobs, weights, knobs, "an SSD model")
    k.size = DEFAULT_SIZE[name] if k.size is None else int(k.size)
    if name == "ssd300_vgg16":
        backbone_defaults(k, pretrained=spec != "none", trainable_when_pretrained=4)
        backbone, anchors, head, norm = _vgg16_parts(
            spec == "imagenet", k.trainable_layers, num_classes, k.size
        )
        prefixes = ("backbone.features.",)
    else:
        backbone_defaults(k, pretrained=spec != "none")
        k.trainable_layers = None  # a ResNet/VGG knob; EfficientNet trains whole or with frozen BN
        backbone, anchors, head, norm = _effl0_parts(spec == "imagenet", k.frozen_bn, num_classes, k.size)
        prefixes = ("backbone.body.",)
    kwargs = detector_kwargs(k, _BUILD_ONLY)
    model = SSDDetector(backbone, anchors, (k.size, k.size), num_classes + 1, head=head, **kwargs, **norm)
    model.backbone_prefixes = prefixes
    model.min_train_batch = 2 if name == "ssdlite_effl0" else 1
    return finish_build(model, name, num_classes, k, spec, COCO_WEIGHTS.get(name), HEAD_PREFIXES, log)
