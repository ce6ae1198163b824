"""DETR: detection as set prediction with a transformer (Carion et al., 2020).

detlab's own implementation of the published architecture, with the published
module names so the official checkpoints (``detr-r50-e632da11.pth``) load
unchanged: a CNN backbone with frozen BatchNorm, sine positional encoding, a
post-norm encoder/decoder transformer, learned object queries, a class head
with a trailing no-object slot and a 3-layer box MLP. Losses live in
``detr_matcher.py``, checkpoint loading in ``detr_weights.py``, and the
optional query selection (off in the published architecture; on in the
small-data recipe) in ``detr_query_selection.py``.

Stages, visible in :meth:`DETR.forward`: ``forward_raw`` = ``encode`` (normalise,
resize, pad with a mask, backbone) then ``decode`` (transformer, heads) →
``criterion`` (train) or ``postprocess`` (eval).

Legend for shape comments: ``B`` images, ``Q`` queries, ``C`` classes, ``L``
decoder layers, ``D`` model width, ``H``/``W`` padded input or feature size,
``N`` boxes of one image.

Box frames: inputs and outputs are ``xyxy`` in absolute pixels of each input
image (the data contract); inside DETR boxes are ``cxcywh`` normalised to the
unpadded image. The conversion happens in :meth:`DETR.targets_to_detr` and
:meth:`DETR.postprocess`, and only there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d, box_convert

from detlab.errors import ConfigError
from detlab.models.backbones import efficientnet_lite0_features, resnet_imagenet_state_dict
from detlab.models.detr_layers import MLP, sine_encoding
from detlab.models.detr_matcher import HungarianMatcher, SetCriterion
from detlab.models.detr_query_selection import QuerySelection
from detlab.models.detr_weights import load_detr_weights
from detlab.models.weights import parse_weights_spec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: DETR's default schedule for small data (hundreds of images), used by the engine;
#: ``model_knobs`` go to :func:`build_detr`. A pretrained, frozen backbone (EfficientNet-Lite0's
#: offline ImageNet weights), a narrow 3+3-layer transformer, 40 queries (above BCCD's 30 boxes
#: per image), AdamW 5e-4 without dropout, gradient clipping at 0.1 — and query selection.
#: With a trainable backbone, ``backbone_lr_mult`` scales its learning rate (published: 1e-5 / 1e-4).
#: Measured by ``benchmarks/detr_small_data.py`` on BCCD (205 training images, transformer from
#: scratch): with DETR's learned queries the decoder collapses to image-independent prior boxes
#: (each query's box moves 0.07 % of the image between val images; the script prints this
#: "spread") and val AP50 stays about 0.02 whatever the schedule (100 epochs: 0.025), no-object
#: weight (0.5, 1.0) or stride (16). Queries selected from the encoder's tokens with box
#: refinement (``query_selection``) break the collapse: val AP50 0.43 (AP 0.18) at 384 px after
#: 40 epochs (0.29 at 256 px without the refinement; 60 epochs: 0.42). Through ``detlab train``
#: (40 epochs, the recipe's augmentation): BCCD test AP50 0.408, AP 0.179.
DETR_SMALL_DATA_RECIPE: dict = {
    "model": "detr_effl0",
    "weights": "imagenet",
    "optimizer": "adamw",
    "lr": 5e-4,
    "backbone_lr_mult": 0.1,
    "weight_decay": 1e-4,
    "clip_grad_norm": 0.1,
    "epochs": 40,
    "lr_drop_epoch": 30,  # lr × 0.1 from this epoch on
    "batch_size": 2,
    "model_knobs": {
        "num_queries": 40,
        "query_selection": True,
        "min_size": 384,
        "max_size": 512,
        "enc_layers": 3,
        "dec_layers": 3,
        "hidden_dim": 128,
        "dim_feedforward": 512,
        "dropout": 0.0,
        "train_backbone": False,
    },
}


@dataclass
class DetrKnobs:
    """Build options of a DETR model; defaults are the published DETR-R50 ones."""

    min_size: int = 800  # shorter side after the internal resize (eval and default train)
    max_size: int = 1333  # cap on the longer side after the resize
    train_min_sizes: tuple[int, ...] | None = None  # multi-scale training: a shorter side drawn per image
    num_queries: int = 100  # object queries = most detections per image
    hidden_dim: int = 256  # transformer width D
    nheads: int = 8  # attention heads
    enc_layers: int = 6  # encoder layers
    dec_layers: int = 6  # decoder layers
    dim_feedforward: int = 2048  # FFN width inside each layer
    dropout: float = 0.1  # dropout inside the transformer
    aux_loss: bool = True  # losses on every decoder layer, not only the last
    dilation: bool = False  # DC5: dilate the last stage (ResNet layer4, EfficientNet stages 5-6): stride 16
    train_backbone: bool = True  # False freezes the whole backbone (stem and first stage are always frozen)
    eos_coef: float = 0.1  # CE weight of the no-object class
    cost_class: float = 1.0  # matcher weight of -p(class)
    cost_bbox: float = 5.0  # matcher weight of L1
    cost_giou: float = 2.0  # matcher weight of -GIoU
    loss_ce: float = 1.0  # loss weight of CE
    loss_bbox: float = 5.0  # loss weight of L1
    loss_giou: float = 2.0  # loss weight of 1-GIoU
    reset_class_head: bool | None = None  # re-initialise class_embed on load; None: when class counts differ
    # decoder queries from the top encoder tokens, boxes refined from theirs (detr_query_selection.py);
    # adds query_selection.* weights and *_enc losses — off in the published architecture
    query_selection: bool = False


# --- backbone and positional encoding ----------------------------------------------


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


def _resnet_backbone(depth: int, k: DetrKnobs, imagenet: bool) -> Backbone:
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


def _effl0_backbone(k: DetrKnobs, imagenet: bool) -> Backbone:
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


# --- transformer -------------------------------------------------------------------


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: self-attention, then FFN, each followed by add & norm."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, key_padding_mask: Tensor, pos: Tensor) -> Tensor:
        q = k = src + pos  # positions go into queries and keys, never values
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, key_padding_mask=key_padding_mask)[0]))
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, cross-attention to the memory, FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)[0]))
        attn = self.multihead_attn(tgt + query_pos, memory + pos, memory, key_padding_mask=memory_mask)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerEncoder(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src: Tensor, key_padding_mask: Tensor, pos: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src


class TransformerDecoder(nn.Module):
    """Decoder returning every layer's (normed) output, for the auxiliary losses."""

    def __init__(self, layers: list[nn.Module], d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_mask, pos, query_pos)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)  # [L, Q, B, D]


class Transformer(nn.Module):
    """Encoder over the flattened feature map, decoder over the object queries."""

    def __init__(self, k: DetrKnobs):
        super().__init__()
        d = k.hidden_dim
        self.encoder = TransformerEncoder(
            [TransformerEncoderLayer(d, k.nheads, k.dim_feedforward, k.dropout) for _ in range(k.enc_layers)]
        )
        self.decoder = TransformerDecoder(
            [TransformerDecoderLayer(d, k.nheads, k.dim_feedforward, k.dropout) for _ in range(k.dec_layers)],
            d,
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> Tensor:
        """``src``/``pos`` ``[B, D, h, w]``, ``mask`` ``[B, h, w]``, ``query_embed`` ``[Q, D]`` → ``[L, B, Q, D]``."""
        memory = self.encode(src, mask, pos)  # [h*w, B, D]
        query_pos = query_embed.unsqueeze(1).repeat(1, src.shape[0], 1)  # [Q, B, D]
        pos = pos.flatten(2).permute(2, 0, 1)  # [h*w, B, D]
        hs = self.decoder(
            torch.zeros_like(query_pos), memory, mask.flatten(1), pos, query_pos
        )  # [L, Q, B, D]
        return hs.transpose(1, 2)

    def encode(self, src: Tensor, mask: Tensor, pos: Tensor) -> Tensor:
        """Encoder memory ``[h*w, B, D]`` of ``src``/``pos`` ``[B, D, h, w]`` with ``mask`` ``[B, h, w]``."""
        return self.encoder(src.flatten(2).permute(2, 0, 1), mask.flatten(1), pos.flatten(2).permute(2, 0, 1))


# --- the model -----------------------------------------------------------------------


class DETR(nn.Module):
    """DETR under detlab's model contract (see CONTRIBUTING.md, "Models").

    Args:
        name: catalogue name (``detr_r50`` …).
        num_classes: ``C``; the class head has ``C + 1`` outputs, the last being no-object.
        backbone: a :class:`Backbone`.
        knobs: build options.
    """

    family = "detr"
    transform_recipe = "detr"
    backbone_prefixes = ("backbone.",)

    def __init__(self, name: str, num_classes: int, backbone: Backbone, knobs: DetrKnobs):
        super().__init__()
        self.name = name
        self.num_classes = num_classes
        self.knobs = knobs
        self.build_kwargs: dict = {}
        d = knobs.hidden_dim
        self.backbone = Joiner(backbone, PositionEmbeddingSine(d // 2))
        self.transformer = Transformer(knobs)
        self.class_embed = nn.Linear(d, num_classes + 1)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.input_proj = nn.Conv2d(backbone.num_channels, d, kernel_size=1)
        # Learned queries, or (query_selection) queries taken from the encoder's tokens; never both,
        # so that every parameter gets a gradient (DDP requires it).
        self.query_embed = None if knobs.query_selection else nn.Embedding(knobs.num_queries, d)
        self.query_selection = (
            QuerySelection(d, num_classes, knobs.num_queries) if knobs.query_selection else None
        )
        matcher = HungarianMatcher(knobs.cost_class, knobs.cost_bbox, knobs.cost_giou)
        self.criterion = SetCriterion(
            num_classes, matcher, knobs.eos_coef, knobs.loss_ce, knobs.loss_bbox, knobs.loss_giou
        )
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    @property
    def network_modules(self) -> tuple[str, ...]:
        """What autocast covers in mixed-precision inference (:mod:`detlab.models.precision`):
        decoder layers one by one, as query selection calls them so; the rest stays float32."""
        layers = tuple(f"transformer.decoder.layers.{i}" for i in range(len(self.transformer.decoder.layers)))
        return ("backbone", "input_proj", "transformer.encoder", *layers, "class_embed", "bbox_embed")

    # -- stages ----------------------------------------------------------------------

    def resized_size(self, height: int, width: int, min_size: int) -> tuple[int, int]:
        """Published DETR resize rule: shorter side ``min_size``, longer side at most ``max_size``."""
        size = min_size
        short, long = min(height, width), max(height, width)
        if long / short * size > self.knobs.max_size:
            size = int(round(self.knobs.max_size * short / long))
        if width < height:
            return int(size * height / width), size
        return size, int(size * width / height)

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Normalise, resize and pad images into one batch.

        Args:
            images: ``B`` tensors ``float [3, H_i, W_i]`` in 0..1 RGB, any sizes.

        Returns:
            ``batch`` ``[B, 3, H, W]`` (zero-padded at the bottom/right) and ``mask``
            ``[B, H, W]``, True on padding.
        """
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("DETR expects a non-empty list of image tensors [3, H, W]")
        resized = []
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"DETR expects images as [3, H, W] tensors, got shape {tuple(img.shape)}")
            min_size = self.knobs.min_size
            if self.training and self.knobs.train_min_sizes:
                sizes = self.knobs.train_min_sizes
                min_size = sizes[int(torch.randint(len(sizes), ()).item())]
            img = (img.to(self.pixel_mean) - self.pixel_mean) / self.pixel_std
            h, w = self.resized_size(img.shape[-2], img.shape[-1], min_size)
            img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[
                0
            ]
            resized.append(img)
        max_h = max(img.shape[1] for img in resized)
        max_w = max(img.shape[2] for img in resized)
        batch = resized[0].new_zeros(len(resized), 3, max_h, max_w)
        mask = torch.ones(len(resized), max_h, max_w, dtype=torch.bool, device=batch.device)
        for i, img in enumerate(resized):
            batch[i, :, : img.shape[1], : img.shape[2]] = img
            mask[i, : img.shape[1], : img.shape[2]] = False
        return batch, mask

    def encode(self, images: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Preprocess and backbone: feature map ``[B, Cb, h, w]``, its padding mask ``[B, h, w]``
        and positional encoding ``[B, D, h, w]``. With a frozen backbone these can be cached."""
        batch, mask = self.preprocess(images)
        return self.backbone(batch, mask)

    def forward_raw(self, images: list[Tensor]) -> dict:
        """Raw outputs: ``pred_logits`` ``[B, Q, C+1]``, ``pred_boxes`` ``[B, Q, 4]`` cxcywh
        normalised to each unpadded image, and ``aux_outputs`` (earlier decoder layers)."""
        return self.decode(*self.encode(images))

    def decode(self, feature: Tensor, mask: Tensor, pos: Tensor) -> dict:
        """Transformer and heads on :meth:`encode`'s outputs; returns what :meth:`forward_raw` does."""
        src = self.input_proj(feature)  # [B, D, h, w]
        out = {}
        if self.query_selection is None:
            hs = self.transformer(src, mask, self.query_embed.weight, pos)  # [L, B, Q, D]
            boxes = self.bbox_embed(hs).sigmoid()  # [L, B, Q, 4]
        else:
            memory = self.transformer.encode(src, mask, pos)  # [h*w, B, D]
            out["enc_outputs"], content, ref = self.query_selection(memory, mask)
            # [L, B, Q, D], [L, B, Q, 4]: each decoder layer refines the previous layer's boxes
            hs, boxes = self.query_selection.refine(
                self.transformer.decoder, self.bbox_embed, memory, mask, pos, content, ref
            )
        logits = self.class_embed(hs)  # [L, B, Q, C+1]
        out.update(pred_logits=logits[-1], pred_boxes=boxes[-1])
        if self.knobs.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ]
        return out

    def targets_to_detr(
        self, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> list[dict[str, Tensor]]:
        """Contract targets (``boxes`` ``[N, 4]`` xyxy absolute px) → cxcywh normalised by each
        image's size, on the model's device."""
        device, converted = self.pixel_mean.device, []
        for img, t in zip(images, targets):
            h, w = img.shape[-2:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
            boxes = (t["boxes"].to(device, torch.float32) / scale).clamp(0, 1)  # [N, 4] xyxy normalised
            converted.append(
                {"boxes": box_convert(boxes, "xyxy", "cxcywh"), "labels": t["labels"].to(device)}
            )
        return converted

    def postprocess(self, outputs: dict, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Raw outputs → per-image detections in the contract's frame.

        Args:
            outputs: ``pred_logits`` ``[B, Q, C+1]``, ``pred_boxes`` ``[B, Q, 4]`` cxcywh normalised.
            image_sizes: ``(H, W)`` of each input image.

        Returns:
            Per image: ``boxes`` float32 ``[Q, 4]`` xyxy absolute pixels of that image,
            ``scores`` ``[Q]`` (best non-no-object probability), ``labels`` int64 ``[Q]``
            in ``0..C-1``; sorted by descending score.
        """
        prob = outputs["pred_logits"].float().softmax(-1)[..., :-1]  # [B, Q, C]
        scores, labels = prob.max(-1)  # [B, Q]
        boxes = box_convert(outputs["pred_boxes"].float(), "cxcywh", "xyxy")  # [B, Q, 4] normalised
        results = []
        for i, (h, w) in enumerate(image_sizes):
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
            order = scores[i].argsort(descending=True)
            results.append(
                {"boxes": boxes[i][order] * scale, "scores": scores[i][order], "labels": labels[i][order]}
            )
        return results

    # -- the contract ----------------------------------------------------------------

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Train mode: ``dict`` of weighted ``loss_*`` plus logged ``class_error`` and
        ``cardinality_error``. Eval mode: per-image detections (see :meth:`postprocess`).

        Args:
            images: ``B`` tensors ``float [3, H_i, W_i]`` in 0..1 RGB.
            targets: train mode only; per image ``boxes`` float32 ``[N, 4]`` xyxy absolute
                pixels and ``labels`` int64 ``[N]`` in ``0..C-1`` (``N`` may be 0).
        """
        if self.training:
            if targets is None:
                raise ValueError("DETR in train mode needs targets; call model.eval() for detections")
            return self.criterion(self.forward_raw(images), self.targets_to_detr(images, targets))
        outputs = self.forward_raw(images)
        return self.postprocess(outputs, [tuple(img.shape[-2:]) for img in images])

    def val_losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The training losses, computed in whatever mode the model is in (eval: no dropout)."""
        return self.criterion(self.forward_raw(images), self.targets_to_detr(images, targets))


# --- builder -------------------------------------------------------------------------

_BACKBONES = {
    "detr_r50": lambda k, imagenet: _resnet_backbone(50, k, imagenet),
    "detr_r18": lambda k, imagenet: _resnet_backbone(18, k, imagenet),
    "detr_effl0": _effl0_backbone,
}


def parse_knobs(knobs: dict) -> DetrKnobs:
    """Knob dict → :class:`DetrKnobs`; unknown names or bad values raise a one-line ``ConfigError``."""
    valid = {f.name for f in fields(DetrKnobs)}
    unknown = sorted(set(knobs) - valid)
    if unknown:
        raise ConfigError(
            f"DETR knob(s) {', '.join(unknown)} unknown — valid knobs: {', '.join(sorted(valid))}"
        )
    k = DetrKnobs(**knobs)
    if k.train_min_sizes is not None:
        k.train_min_sizes = tuple(int(s) for s in k.train_min_sizes)
    for name in (
        "min_size",
        "max_size",
        "num_queries",
        "hidden_dim",
        "nheads",
        "dec_layers",
        "dim_feedforward",
    ):
        if int(getattr(k, name)) < 1:
            raise ConfigError(f"DETR knob {name}={getattr(k, name)} must be at least 1")
    if k.hidden_dim % k.nheads or k.hidden_dim % 2:
        raise ConfigError(
            f"DETR knob hidden_dim={k.hidden_dim} must be even and divisible by nheads={k.nheads}"
        )
    return k


def build_detr(name: str, num_classes: int, weights: str = "none", **knobs) -> DETR:
    """Build a DETR model, optionally with pretrained weights.

    Args:
        name: ``detr_r50``, ``detr_r18`` or ``detr_effl0``.
        num_classes: ``C`` (labels ``0..C-1``); the class head gets ``C + 1`` outputs.
        weights: ``none``; ``coco`` (official DETR checkpoint: ``detr_r50`` only);
            ``imagenet`` (backbone only); or a path to a detlab checkpoint, an official
            DETR checkpoint (``{"model": state_dict}``) or a plain state dict. A class
            count that differs from the checkpoint's re-initialises ``class_embed``
            only, keeping the no-object row.
        **knobs: fields of :class:`DetrKnobs`.

    Returns:
        A :class:`DETR` following the model contract.

    Raises:
        ConfigError: unknown name or knob. WeightsError: weights not found or not loadable.
    """
    if name not in _BACKBONES:
        raise ConfigError(f"model {name!r} is not a DETR model — choose one of {', '.join(_BACKBONES)}")
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes={num_classes} for {name}: a detector needs at least one class")
    k = parse_knobs(dict(knobs))
    weights = parse_weights_spec(weights)
    model = DETR(name, int(num_classes), _BACKBONES[name](k, weights == "imagenet"), k)
    model.build_kwargs = {key: value for key, value in knobs.items() if key != "reset_class_head"}
    if weights not in ("none", "imagenet"):
        load_detr_weights(model, weights, reset_class_head=k.reset_class_head)
    return model
