"""DETR's backbone (a CNN with frozen BatchNorm, its last map feeding the transformer) and the
sine positional encoding of that map, joined under the published ``backbone.0.*`` names.

Legend for shape comments: ``B`` images, ``H``/``W`` padded input size, ``h``/``w`` feature size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from detlab.errors import ConfigError
from detlab.models.backbones import efficientnet_lite0_features, resnet_imagenet_state_dict
from detlab.models.detr.knobs import DetrKnobs
from detlab.models.detr.layers import sine_encoding


class Backbone(nn.Module):
    """A CNN whose last feature map feeds the transformer; BatchNorm frozen.

    Attributes:
        body: ResNet through ``IntermediateLayerGetter`` (``layer4`` only), or a
            timm ``features_only`` network returning its last stage.
        num_channels: channels of the returned map.
    """

    def __init__(self, body: nn.Module, num_channels: int, trainable: list[str] | None):
        super().__init__()
        self.body = body
        self.num_channels = num_channels
        for name, p in self.body.named_parameters():
            if trainable is None or not any(name.startswith(t) for t in trainable):
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out["0"] if isinstance(out, dict) else out[-1]  # [B, num_channels, H/32, W/32]


def resnet_backbone(depth: int, k: DetrKnobs, imagenet: bool) -> Backbone:
    if k.dilation and depth < 50:
        raise ConfigError(
            f"dilation=true: detr_r{depth}'s basic blocks cannot be dilated (torchvision); use detr_r50 or detr_effl0"
        )
    resnet = getattr(torchvision.models, f"resnet{depth}")(
        weights=None, replace_stride_with_dilation=[False, False, k.dilation], norm_layer=FrozenBatchNorm2d
    )
    if imagenet:
        resnet.load_state_dict(resnet_imagenet_state_dict(depth))
    body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})
    trainable = ["layer2", "layer3", "layer4"] if k.train_backbone else []
    return Backbone(body, 2048 if depth == 50 else 512, trainable)


def effl0_backbone(k: DetrKnobs, imagenet: bool) -> Backbone:
    body = efficientnet_lite0_features(
        imagenet, out_indices=(4,), frozen_bn=True, output_stride=16 if k.dilation else 32
    )
    # Stem and the first two stages (stride <= 4) stay frozen, as conv1 + layer1 of ResNet.
    trainable = [f"blocks.{i}" for i in range(2, 7)] if k.train_backbone else []
    return Backbone(body, body.feature_info.channels()[-1], trainable)


class PositionEmbeddingSine(nn.Module):
    """The published sine/cosine encoding of (y, x), normalised over the unpadded area."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, mask: Tensor) -> Tensor:
        """``mask`` ``[B, H, W]`` True on padding → encoding ``[B, 2*num_pos_feats, H, W]``."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # [B, H, W]
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        pos_x = sine_encoding(x_embed, self.num_pos_feats, self.temperature)  # [B, H, W, F]
        pos_y = sine_encoding(y_embed, self.num_pos_feats, self.temperature)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [B, 2F, H, W]


class Joiner(nn.Sequential):
    """``[0]`` backbone, ``[1]`` positional encoding: the published ``backbone.0.body.*`` names."""

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Padded ``images`` ``[B, 3, H, W]`` and ``mask`` ``[B, H, W]`` → feature map, its mask, its encoding."""
        feature = self[0](images)  # [B, Cb, h, w]
        mask = F.interpolate(mask[None].float(), size=feature.shape[-2:])[0].bool()  # [B, h, w]
        return feature, mask, self[1](mask).to(feature.dtype)
