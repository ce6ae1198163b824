"""The search space of ``detlab tune``: ``--space`` items and the default space, as dimensions.

A :class:`Dimension` is one searched config key (a range or choices) checked against the config
as ``--set`` would check it, before anything trains. The default space is the family recipe's
``base_lr`` (log-uniform over ×0.25..×4) and the family's input-size knob around its data-aware
default; see :mod:`detlab.tune` for the whole study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from detlab.config import FIELDS, TrainConfig, apply_overrides, resolve, yaml_scalar
from detlab.errors import ConfigError

LR_FACTORS = (0.25, 4.0)  # the default base_lr range, around the recipe's
SIZE_FACTORS = (0.8, 1.0, 1.2)  # the default input sizes, around the data-aware one
SIZE_KEYS = ("min_size", "max_size", "size")
# Keys a study does not search, and why (the one-line error says it).
NOT_SEARCHED = {
    "epochs": "epochs are planned from each trial's share of --time; search what decides them instead",
    "time_budget": "each trial's time budget is its share of --time",
    "out": "each trial trains into OUT/trial_NNN",
    "data": "one study tunes on one --data",
    "val": "one study scores on one --val",
    "model": "one study tunes one --model; tune each and `detlab compare` their best runs",
}


@dataclass
class Dimension:
    """One searched config key: ``choices``, or a range ``low``..``high`` (``log``, ``integer``).

    ``follow`` sets other keys from the sampled value: ``{key: ratio}``, the value times the ratio
    rounded up to a multiple of 32 (``max_size`` following ``min_size``).
    """

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list | None = None
    follow: dict = field(default_factory=dict)
    default: Any = None  # what `detlab train` uses without a search (the default space's baseline trial)

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, self.choices)
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def bounds(self) -> list:
        """The values that must pass the config's checks: every choice, or both ends."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]

    def values(self, value) -> dict:
        """The config keys a sampled value sets: this one and those that follow it."""
        return {self.key: value, **{k: math.ceil(value * r / 32) * 32 for k, r in self.follow.items()}}

    def spec(self) -> str:
        """As ``--space`` writes it (``256,320,384`` / ``0.0025:0.04:log``)."""
        if self.choices is not None:
            return ",".join(yaml_scalar(c) for c in self.choices)
        ends = [int(self.low), int(self.high)] if self.integer else [f"{self.low:.4g}", f"{self.high:.4g}"]
        return f"{ends[0]}:{ends[1]}" + (":log" if self.log else "")


def _choice(raw: str, where: str):
    try:
        value = yaml.safe_load(raw.strip())
    except yaml.YAMLError:
        raise ConfigError(f"{where}: choice {raw.strip()!r} is not valid YAML; quote it") from None
    if isinstance(value, str):  # YAML reads 1e-3 as a string; a number was meant
        try:
            value = float(value)
        except ValueError:
            pass
    if not (value is None or isinstance(value, (bool, int, float, str))):
        raise ConfigError(f"{where}: choice {raw.strip()!r} is not a single value (number, word, true/false)")
    return value


def _annotation(key: str, model: str) -> str:
    """A key's annotated type: a TrainConfig field's, or a model knob's for ``model_kwargs.NAME``."""
    head, _, rest = key.partition(".")
    if not rest:
        return str(FIELDS[head].type)
    if head == "transform_kwargs":
        return "int"
    from detlab.models.catalogue import knobs

    return next((str(k.type) for k in knobs(model) if k.name == rest), "")


def _parse_spec(key: str, spec: str, where: str, annotation: str) -> Dimension:
    if "," in spec:
        choices = [_choice(c, where) for c in spec.split(",") if c.strip()]
        if len({repr(c) for c in choices}) < 2:
            raise ConfigError(
                f"{where}: give two or more different choices, or fix it with --set {key}=VALUE"
            )
        return Dimension(key, choices=choices)
    if ":" not in spec:
        raise ConfigError(
            f"{where}: one value is no search; fix it with --set {key}={spec}, or give LOW:HIGH or A,B,C"
        )
    parts = [p.strip() for p in spec.split(":")]
    log = len(parts) == 3 and parts[2].lower() == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise ConfigError(f"{where}: expected LOW:HIGH, LOW:HIGH:log or A,B,C")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"{where}: the bounds are not numbers; e.g. --space {key}=0.001:0.05") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"{where}: LOW must be a number below HIGH")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs LOW > 0")
    names = {a.strip() for a in annotation.split("|")}
    integer = "int" in names and "float" not in names
    if integer and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}: {key} takes integers; give whole-number bounds")
    if not integer and "float" not in names:
        raise ConfigError(f"{where}: {key} is not a number ({annotation}); search it as choices KEY=A,B")
    return Dimension(key, low, high, log=log, integer=integer)


def parse_space(items: list[str], user: dict) -> list[Dimension]:
    """``--space`` items → dimensions, each key and value checked as ``--set``'s would be.

    Args:
        items: ``KEY=LOW:HIGH``, ``KEY=LOW:HIGH:log`` or ``KEY=A,B,C``.
        user: the keys every trial fixes (``--set`` and the flags, with ``model``).

    Raises:
        ConfigError: one line naming the item, what is wrong and the fix.
    """
    dims: list[Dimension] = []
    for item in items:
        key, sep, spec = (s.strip() for s in item.partition("="))
        where = f"--space {item!r}"
        if not sep or not key or not spec:
            raise ConfigError(
                f"{where}: expected KEY=LOW:HIGH or KEY=A,B,C (e.g. --space base_lr=0.002:0.05:log)"
            )
        if key in NOT_SEARCHED:
            raise ConfigError(f"{where}: {NOT_SEARCHED[key]}")
        apply_overrides(TrainConfig().to_dict(), {key: 0}, where)  # an unknown key, named with the nearest
        if key in user:
            raise ConfigError(f"{where}: {key} is also fixed by --set or a flag; drop one of them")
        if any(d.key == key for d in dims):
            raise ConfigError(f"{where}: {key} is searched twice; give it one --space")
        dim = _parse_spec(key, spec, where, _annotation(key, user["model"]))
        for value in dim.bounds():
            try:
                resolve({**user, key: value})
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        dims.append(dim)
    return dims


def _sizes_around(default: int) -> list[int]:
    """``default`` and its ×0.8 / ×1.2 neighbours rounded to multiples of 32 (at least 64)."""
    near = {max(64, int(default * f / 32 + 0.5) * 32) for f in SIZE_FACTORS if f != 1.0}
    return sorted(near | {int(default)})


def size_dimension(model: str, cfg: TrainConfig, records, device_type: str) -> Dimension | None:
    """The family's input-size knob around its default for this data and device (module docstring)."""
    from detlab.engine.plan import MIN_OBJECT_PX, plan_input_size
    from detlab.models.catalogue import knobs
    from detlab.models.families import family_of

    family = family_of(model)
    if family == "ssd":
        from detlab.models.ssd import DEFAULT_SIZE

        size = DEFAULT_SIZE[model]
        return Dimension("model_kwargs.size", choices=_sizes_around(size), default=size)
    if family in MIN_OBJECT_PX:
        plan = plan_input_size(records, family, device_type)
        if plan is None:
            return None
        short, long = plan.min_size, plan.max_size
    else:  # DETR: its recipe's size
        defaults = {k.name: k.default for k in knobs(model)}
        short = int(cfg.model_kwargs.get("min_size") or defaults["min_size"])
        long = int(cfg.model_kwargs.get("max_size") or defaults["max_size"])
    return Dimension(
        "model_kwargs.min_size",
        choices=_sizes_around(short),
        follow={"model_kwargs.max_size": long / short},
        default=short,
    )


def default_space(
    model: str, cfg: TrainConfig, fixed: dict, records, device_type: str
) -> tuple[list[Dimension], list[str]]:
    """The default search space (module docstring) and a note per default left out.

    Args:
        model: catalogue name.
        cfg: the study's resolved config (recipe and ``--set``), for the recipe's ``base_lr``.
        fixed: the ``--set`` keys (a searched key must not be one).
        records: the training records, for the data-aware input size.
        device_type: ``cpu`` | ``cuda``, as the size plan needs.
    """
    dims, notes = [], []
    if {"lr", "base_lr"} & set(fixed):
        notes.append("learning rate fixed by --set: not searched")
    else:
        low, high = cfg.base_lr * LR_FACTORS[0], cfg.base_lr * LR_FACTORS[1]
        dims.append(Dimension("base_lr", low, high, log=True, default=cfg.base_lr))
    given = apply_overrides(TrainConfig().to_dict(), fixed, "--set")["model_kwargs"]
    size = None if any(k in given for k in SIZE_KEYS) else size_dimension(model, cfg, records, device_type)
    if size is not None:
        dims.append(size)
    else:
        notes.append("input size fixed by --set or by the model: not searched")
    notes.append(
        "augmentation not searched: the config has no strength key (augment names a recipe; "
        "--space augment=A,B searches recipes)"
    )
    return dims, notes
