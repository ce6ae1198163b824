"""Optimizer with parameter groups, and the per-iteration learning-rate schedule.

Parameter groups: backbone vs the rest (``model.backbone_prefixes`` gets
``backbone_lr_mult``), and decayed weights vs norm weights and biases (which get
``norm_weight_decay``, 0 by default, as in the torchvision references and DETR).

Schedule: linear warmup from ``warmup_factor`` to 1, then ``step`` (multiply by
``gamma`` at each milestone fraction of the run), ``cosine`` (down to
``min_lr_factor``) or ``constant``. It is a ``LambdaLR`` stepped once per
optimizer step; the lambda is a small object so its state saves with the
scheduler's ``state_dict`` as plain numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from detlab.config import TrainConfig, effective_lr


def _no_decay_ids(model: nn.Module) -> set[int]:
    """ids of parameters that should not decay: norm-layer weights, biases and other 1-d tensors."""
    ids = set()
    for module in model.modules():
        is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) or (
            "Norm" in type(module).__name__
        )
        for name, p in module.named_parameters(recurse=False):
            if is_norm or name.endswith("bias") or p.ndim <= 1:
                ids.add(id(p))
    return ids


def param_groups(model: nn.Module, cfg: TrainConfig, lr: float) -> list[dict]:
    """Split trainable parameters into up to four groups (backbone × decay).

    Args:
        model: the unwrapped model; ``model.backbone_prefixes`` (tuple of state-dict
            name prefixes) marks backbone parameters; missing means none.
        cfg: supplies ``backbone_lr_mult``, ``weight_decay``, ``norm_weight_decay``.
        lr: the base learning rate (non-backbone parameters).

    Returns:
        Optimizer parameter groups with ``name``, ``params``, ``lr``, ``weight_decay``;
        empty groups are left out.
    """
    prefixes = tuple(getattr(model, "backbone_prefixes", ()) or ())
    no_decay = _no_decay_ids(model)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (bool(prefixes) and name.startswith(prefixes), id(p) in no_decay)
        groups.setdefault(key, []).append(p)
    out = []
    for (is_backbone, is_no_decay), params in sorted(groups.items()):
        out.append(
            {
                "name": ("backbone" if is_backbone else "head") + ("_no_decay" if is_no_decay else ""),
                "params": params,
                "lr": lr * (cfg.backbone_lr_mult if is_backbone else 1.0),
                "weight_decay": cfg.norm_weight_decay if is_no_decay else cfg.weight_decay,
            }
        )
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int = 1) -> torch.optim.Optimizer:
    """SGD (Nesterov off) or AdamW over :func:`param_groups` at :func:`effective_lr`."""
    lr = effective_lr(cfg, world_size)
    groups = param_groups(model, cfg, lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class WarmupSchedule:
    """Learning-rate multiplier for iteration ``it`` (a picklable, state-saving LambdaLR lambda).

    Args:
        total_iters: optimizer steps in the whole run.
        warmup_iters: linear warmup length; capped at ``total_iters // 5`` so a short
            run still spends most of its steps at the full rate.
        warmup_factor: multiplier at iteration 0.
        kind: ``step`` | ``cosine`` | ``constant`` after the warmup.
        milestones: ``step``: fractions of ``total_iters`` where the rate is multiplied by ``gamma``.
        gamma: ``step`` decay factor.
        min_lr_factor: ``cosine`` final multiplier.
    """

    def __init__(
        self,
        total_iters: int,
        warmup_iters: int,
        warmup_factor: float,
        kind: str,
        milestones: list,
        gamma: float,
        min_lr_factor: float,
    ) -> None:
        self.total_iters = max(1, int(total_iters))
        self.warmup_iters = min(int(warmup_iters), self.total_iters // 5)
        self.warmup_factor = float(warmup_factor)
        self.kind = kind
        self.milestones = [int(round(m * self.total_iters)) for m in milestones]
        self.gamma = float(gamma)
        self.min_lr_factor = float(min_lr_factor)

    def __call__(self, it: int) -> float:
        warm = 1.0
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            warm = self.warmup_factor * (1 - alpha) + alpha
        if self.kind == "step":
            return warm * self.gamma ** sum(it >= m for m in self.milestones)
        if self.kind == "cosine":
            progress = min(1.0, it / self.total_iters)
            cos = 0.5 * (1 + math.cos(math.pi * progress))
            return warm * (self.min_lr_factor + (1 - self.min_lr_factor) * cos)
        return warm


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_iters: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR; call ``scheduler.step()`` after every optimizer step."""
    fn = WarmupSchedule(
        total_iters,
        cfg.warmup_iters,
        cfg.warmup_factor,
        cfg.schedule,
        cfg.milestones,
        cfg.gamma,
        cfg.min_lr_factor,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
