"""DETR: detection as set prediction with a transformer (Carion et al., 2020).

detlab's own implementation of the published architecture, with the published
module names so the official checkpoints (``detr-r50-e632da11.pth``) load
unchanged: a CNN backbone with frozen BatchNorm, sine positional encoding, a
post-norm encoder/decoder transformer, learned object queries, a class head
with a trailing no-object slot and a 3-layer box MLP. This module holds the model and its
builder; the package's other modules hold its parts: ``knobs.py`` (:class:`DetrKnobs`),
``backbone.py`` (CNN and positional encoding), ``transformer.py``, ``layers.py`` (MLP, sine
encoding), ``criterion.py`` (Hungarian matcher and set criterion: the losses), ``weights.py``
(checkpoint loading) and ``query_selection.py`` (off in the published architecture; on in the
small-data recipe, ``detlab.config.RECIPES["detr"]``).

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from detlab.errors import ConfigError
from detlab.models.contract import run_by_size, sizes_differ
from detlab.models.detr.backbone import (
    Backbone,
    Joiner,
    PositionEmbeddingSine,
    effl0_backbone,
    resnet_backbone,
)
from detlab.models.detr.criterion import HungarianMatcher, SetCriterion
from detlab.models.detr.knobs import DetrKnobs, parse_knobs
from detlab.models.detr.layers import MLP
from detlab.models.detr.query_selection import QuerySelection
from detlab.models.detr.transformer import Transformer
from detlab.models.detr.weights import load_detr_weights
from detlab.models.families import family_of
from detlab.models.weights import parse_weights_spec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DETR(nn.Module):
    """DETR under detlab's model contract (see CONTRIBUTING.md, "Models").

    Args:
        name: catalogue name (``detr_r50`` …).
        num_classes: ``C``; the class head has ``C + 1`` outputs, the last being no-object.
        backbone: a :class:`Backbone`.
        knobs: build options.
    """

    transform_recipe = "detr"
    backbone_prefixes = ("backbone.",)

    def __init__(self, name: str, num_classes: int, backbone: Backbone, knobs: DetrKnobs):
        super().__init__()
        self.name = name
        self.family = family_of(name)
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
        if sizes_differ(images):  # the mask hides padding from attention, not from the backbone's borders
            return run_by_size(self.forward, images)
        outputs = self.forward_raw(images)
        return self.postprocess(outputs, [tuple(img.shape[-2:]) for img in images])

    def val_losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The training losses, computed in whatever mode the model is in (eval: no dropout)."""
        return self.criterion(self.forward_raw(images), self.targets_to_detr(images, targets))


# --- builder -------------------------------------------------------------------------

_BACKBONES = {
    "detr_r50": lambda k, imagenet: resnet_backbone(50, k, imagenet),
    "detr_r18": lambda k, imagenet: resnet_backbone(18, k, imagenet),
    "detr_effl0": effl0_backbone,
}


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
    k = parse_knobs(dict(knobs), name)
    weights = parse_weights_spec(weights)
    model = DETR(name, int(num_classes), _BACKBONES[name](k, weights == "imagenet"), k)
    model.build_kwargs = {key: value for key, value in knobs.items() if key != "reset_class_head"}
    if weights not in ("none", "imagenet"):
        load_detr_weights(model, weights, reset_class_head=k.reset_class_head)
    return model
