"""Optimizer with parameter groups, and the per-iteration learning-rate schedule.

Parameter groups: backbone vs the rest (``model.backbone_prefixes`` gets
``backbone_lr_mult``), and decayed weights vs norm weights and biases (which get
``norm_weight_decay``, 0 by default, as in the torchvision references and DETR).

Schedule: linear warmup from ``warmup_factor`` to 1, then ``step`` (multiply by
``gamma`` at each milestone fraction of the run), ``cosine`` (down to
``min_lr_factor``) or ``constant``. It is a ``LambdaLR`` stepped once per
optimizer step; the lambda is a small object so its state saves with the
scheduler's ``state_dict`` as plain numbers.

Re-planning (``--time`` on resume, ``--resume --set epochs=N``): :func:`stretch_schedule` maps the
steps still to come onto the part of the schedule still to run, so a longer or shorter run still
goes through its remaining milestones (or its remaining cosine) and ends at the final rate.
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
        # [at, old_end, new_end] per re-plan, oldest first: from step ``at`` on, the steps up to
        # ``new_end`` replay the schedule's steps up to ``old_end`` at an even pace.
        self.remaps: list[list[float]] = []

    @property
    def planned_total(self) -> int:
        """The step at which the (re-planned) schedule ends."""
        return int(self.remaps[-1][2]) if self.remaps else self.total_iters

    def __call__(self, it: int) -> float:
        return self._base(self._virtual(it))

    def _virtual(self, it: float) -> float:
        """The step of the first plan that step ``it`` of the latest plan replays."""
        for at, old_end, new_end in reversed(self.remaps):
            if it > at:
                it = at + (min(it, new_end) - at) * (old_end - at) / (new_end - at)
        return it

    def _base(self, it: float) -> float:
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


def stretch_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, at: int, new_total: int) -> bool:
    """Re-plan the rest of a :func:`build_scheduler` schedule so it ends at step ``new_total``.

    The steps from ``at`` (the current step) to ``new_total`` replay, evenly spread, what the
    schedule still had to run from ``at`` to its planned end: its remaining milestones or cosine,
    ending at its final rate. The rate at ``at`` itself is unchanged, so nothing jumps.

    Args:
        scheduler: the run's LambdaLR (one :class:`WarmupSchedule` shared by its groups).
        at: optimizer steps taken so far.
        new_total: the step the run now ends at; must be > ``at``.

    Returns:
        False (nothing changed) when the schedule had already ended by ``at`` — nothing is left
        to stretch — or when it already ends at ``new_total``; True when it was re-planned.
    """
    fns = {id(f): f for f in scheduler.lr_lambdas}
    if len(fns) != 1 or not isinstance(scheduler.lr_lambdas[0], WarmupSchedule):
        raise TypeError("stretch_schedule expects a scheduler from build_scheduler")
    fn = scheduler.lr_lambdas[0]
    old_end = fn.planned_total
    if new_total == old_end or at >= old_end or new_total <= at:
        return False
    fn.remaps.append([int(at), int(old_end), int(new_total)])
    return True
