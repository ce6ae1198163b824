"""What the torchvision-based families share to speak detlab's model contract.

The contract (CONTRIBUTING.md): labels ``0..C-1`` in and out, ``iscrowd`` boxes
left out of the loss, loss keys starting with ``loss_``, and validation losses
in eval mode. torchvision's detectors branch on their ``training`` flag for the
loss, so :class:`ValLossesByFlag` raises that flag on the model (and on the
submodules named in ``loss_flag_modules``) only: BatchNorm, GroupNorm and the
resize transform keep their eval behaviour.

Legend for shape comments: ``N`` boxes of one image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn


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


class ValLossesByFlag:
    """Mixin: ``val_losses(images, targets)``, the training losses computed in eval mode."""

    #: names of submodules that also branch on their own ``training`` flag for losses
    loss_flag_modules: tuple[str, ...] = ()
    #: added to contract labels for torchvision's losses: 1 where class 0 is background
    label_offset: int = 0

    def val_losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The training losses, computed in eval mode (see the module docstring); flags restored after."""
        modules = [self, *(getattr(self, name) for name in self.loss_flag_modules)]
        with own_flags_training(modules):
            return self.forward(images, targets)
