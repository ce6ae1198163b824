"""What the torchvision-based families share: the forward contract and the build steps.

The contract (CONTRIBUTING.md): labels ``0..C-1`` in and out, ``iscrowd`` boxes left out of
the loss, loss keys starting with ``loss_``, and validation losses in eval mode.
:class:`TorchvisionDetector` wraps a torchvision detector's ``forward`` to speak it; each
family's file only says what differs (its label offset, which submodules branch on their
``training`` flag, its loss keys).

A builder (``build_fcos`` …) runs the same steps for every family: :func:`start_build`
(name, weights, knobs dataclass), :func:`backbone_defaults`, :func:`fpn_backbone`, the
torchvision constructor with :func:`detector_kwargs`, then :func:`finish_build` (catalogue
attributes and the pretrained weights with class-head surgery).

torchvision's detectors branch on their ``training`` flag for the loss, so ``val_losses``
raises that flag on the model (and on the submodules named in ``loss_flag_modules``) only:
BatchNorm, GroupNorm and the resize transform keep their eval behaviour.

Legend for shape comments: ``N`` boxes of one image, ``K`` detections.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from detlab.errors import ConfigError
from detlab.models.backbones import effl0_fpn_backbone, resnet_fpn_backbone
from detlab.models.families import family_of
from detlab.models.knobs import parse_knobs
from detlab.models.weights import load_detector_weights, parse_weights_spec

K = TypeVar("K")


@contextlib.contextmanager
def own_flags_training(modules: list[nn.Module]) -> Iterator[None]:
    """Set only these modules' own ``training`` flags (not their children's); restore them after."""
    saved = [m.training for m in modules]
    try:
        for m in modules:
            m.training = True
        yield
    finally:
        for m, flag in zip(modules, saved):
            m.training = flag


def loss_targets(targets: list[dict[str, Tensor]], label_offset: int) -> list[dict[str, Tensor]]:
    """The targets torchvision's losses take: ``iscrowd`` boxes dropped, labels shifted by ``label_offset``.

    ``label_offset`` is 1 for the families with a background class 0 (Faster R-CNN, SSD).
    Returns per image ``boxes`` float32 ``[N, 4]`` and ``labels`` int64 ``[N]``.
    """
    out = []
    for t in targets:
        keep = ~t["iscrowd"].bool() if "iscrowd" in t else slice(None)
        out.append({"boxes": t["boxes"][keep].float(), "labels": t["labels"][keep] + label_offset})
    return out


def sizes_differ(images: Sequence[Tensor]) -> bool:
    """Whether an eval batch mixes image sizes (never while tracing or exporting one image)."""
    if len(images) < 2 or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return len({tuple(im.shape[-2:]) for im in images}) > 1


def run_by_size(detect: Callable[[list[Tensor]], list[dict]], images: Sequence[Tensor]) -> list[dict]:
    """``detect(images)`` run once per image size, results in input order.

    torchvision pads a batch to its largest image. Padding changes what a detector computes: the
    GroupNorm of FCOS's and RetinaNet's heads normalises over the padded map, so every score moves,
    and convolutions near the padded borders see zeros instead of the image's edge. So a batch of
    images of one size gives each image's own detections, and a mixed batch is split by size.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape[-2:]), []).append(i)
    out: list[dict | None] = [None] * len(images)
    for indices in groups.values():
        for i, det in zip(indices, detect([images[i] for i in indices])):
            out[i] = det
    return out


class TorchvisionDetector:
    """Mixin, listed before the torchvision class: detlab's contract around its ``forward``.

    Train mode: ``model(images, targets)`` → torchvision's losses, each key starting with
    ``loss_``. Eval mode: ``model(images)`` → per image ``{"boxes": float32 [K, 4] xyxy in that
    image's pixels, "scores": [K], "labels": int64 [K] in 0..C-1}``.
    """

    #: whether a mixed-size batch is padded to one size (see :func:`run_by_size`); SSD resizes every
    #: image to one square, so its batches have no padding
    pads_batches: bool = True
    #: added to contract labels for torchvision's losses: 1 where class 0 is background
    label_offset: int = 0
    #: names of submodules that also branch on their own ``training`` flag for losses
    loss_flag_modules: tuple[str, ...] = ()

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Losses (train mode) or detections (eval mode); see the class docstring.

        Args:
            images: ``[3, H, W]`` float images in 0..1, any sizes.
            targets: per image ``boxes`` float32 ``[N, 4]`` xyxy absolute pixels and
                ``labels`` int64 ``[N]`` in ``0..C-1``; ``iscrowd`` boxes, when
                flagged, are left out of the loss.
        """
        if targets is None and not self.training and self.pads_batches and sizes_differ(images):
            return run_by_size(self.forward, images)
        if targets is not None:
            targets = loss_targets(targets, self.label_offset)
        out = super().forward(images, targets)
        if self.training:  # Faster R-CNN's keys already start with "loss_", the others' do not
            return {k if k.startswith("loss_") else f"loss_{k}": v for k, v in out.items()}
        if self.label_offset:
            for det in out:
                det["labels"] = det["labels"] - self.label_offset  # [K], background 0 never comes out
        return out

    def val_losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The training losses, computed in eval mode (see the module docstring); flags restored after."""
        modules = [self, *(getattr(self, name) for name in self.loss_flag_modules)]
        with own_flags_training(modules):
            return self.forward(images, targets)


# --- build steps -------------------------------------------------------------------------


def start_build(
    name: str, backbones: dict[str, str], knobs_class: type[K], weights: str, knobs: dict[str, Any], kind: str
) -> tuple[str, K]:
    """Check the name against the family's ``backbones``; parse ``weights`` and ``knobs``.

    Args:
        kind: the family in words for the message, e.g. ``an FCOS model``.

    Returns:
        The weights spec (``none`` | ``imagenet`` | ``coco`` | a path) and the knobs dataclass.
    """
    if name not in backbones:
        raise ConfigError(f"{name} is not {kind}: use one of {', '.join(backbones)}")
    return parse_weights_spec(weights), parse_knobs(knobs_class, name, knobs)


def backbone_defaults(knobs: Any, pretrained: bool, trainable_when_pretrained: int = 3) -> None:
    """Fill ``frozen_bn`` and ``trainable_layers`` left at ``None``, in place.

    Pretrained backbones keep their BatchNorm statistics frozen and their early stages fixed
    (torchvision's references: 3 trainable ResNet stages); a random backbone trains whole.
    """
    knobs.frozen_bn = pretrained if knobs.frozen_bn is None else bool(knobs.frozen_bn)
    if knobs.trainable_layers is None:
        knobs.trainable_layers = trainable_when_pretrained if pretrained else 5
    knobs.trainable_layers = int(knobs.trainable_layers)


def fpn_backbone(
    backbone_id: str,
    imagenet: bool,
    knobs: Any,
    returned_layers: Sequence[int],
    extra_blocks: ExtraFPNBlock | None,
    channels: int = 256,
) -> nn.Module:
    """The family's FPN on a torchvision ResNet (``r<depth>``) or timm's EfficientNet-Lite0 (``effl0``).

    ``returned_layers`` counts stages as torchvision's ResNet does (1 = stride 4 … 4 = stride 32);
    EfficientNet-Lite0 returns the stages of the same strides. ``trainable_layers`` applies to
    ResNets only: EfficientNet trains whole, or with frozen BatchNorm.
    """
    if backbone_id == "effl0":
        return effl0_fpn_backbone(imagenet, returned_layers, extra_blocks, knobs.frozen_bn, channels)
    return resnet_fpn_backbone(
        int(backbone_id[1:]),
        imagenet,
        knobs.trainable_layers,
        knobs.frozen_bn,
        returned_layers,
        extra_blocks,
        channels,
    )


def detector_kwargs(
    knobs: Any, build_only: tuple[str, ...], renamed: dict[str, str] | None = None
) -> dict[str, Any]:
    """The knobs the torchvision constructor takes, under its argument names.

    Args:
        knobs: the family's knobs dataclass.
        build_only: knobs the builder itself uses (backbone, sizes of parts), not passed on.
        renamed: knob name → torchvision's argument name where they differ.
    """
    renamed = renamed or {}
    return {
        renamed.get(f.name, f.name): getattr(knobs, f.name)
        for f in dataclasses.fields(knobs)
        if f.name not in build_only
    }


def finish_build(
    model: nn.Module,
    name: str,
    num_classes: int,
    knobs: Any,
    weights: str,
    coco_url: str | None,
    head_prefixes: tuple[str, ...],
    log: Callable[[str], None] | None,
) -> nn.Module:
    """Set the catalogue attributes and load ``weights`` (class head re-initialised where it differs).

    ``build_kwargs`` are the knobs as resolved (``trainable_layers`` and ``frozen_bn`` filled), so
    a checkpoint rebuilds the same architecture with ``weights="none"``.
    """
    model.name = name
    model.family = family_of(name)
    model.num_classes = num_classes
    model.build_kwargs = dataclasses.asdict(knobs)
    load_detector_weights(model, weights, coco_url, head_prefixes, log)
    return model
