"""Training configuration: one flat dataclass, per-family default recipes, YAML, ``--set``.

Resolution order (later wins)::

    TrainConfig defaults  <  family recipe (RECIPES)  <  model recipe (MODEL_RECIPES)
    <  YAML file (--config)  <  --set key=value  <  explicit CLI flags (--data, --model, …)

The config is flat on purpose (STYLE.md: "flat YAML configs"); the only nested
values are the two pass-through dicts ``model_kwargs`` and ``transform_kwargs``,
which ``--set`` reaches with a dotted key (``--set model_kwargs.min_size=320``).
The resolved config is saved as ``RUN/config.yaml`` and inside every checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detlab.errors import ConfigError, writing
from detlab.models.families import family_of, has_family


@dataclass
class TrainConfig:
    """Everything ``detlab train`` needs; one comment per field says what it does."""

    # --- what to train -------------------------------------------------------
    data: str | None = None  # training data: DATA or DATA:split (default split: train)
    val: str | None = None  # validation data; None = auto (same source's val, else test, else none)
    val_fraction: float = 0.0  # without a validation split: hold out this seeded, class-stratified share
    model: str | None = None  # catalogue name (see `detlab models`)
    weights: str = "none"  # none | imagenet | coco | PATH: what build_model starts from
    model_kwargs: dict = field(default_factory=dict)  # extra build_model knobs (e.g. image size)
    out: str | None = None  # run folder

    # --- schedule length and batches -----------------------------------------
    epochs: int = 12  # passes over the training data
    time_budget: str | float | None = None  # --time: wall time for the whole run (90s, 10m, 2h); plans epochs
    batch_size: int = 4  # images per step per process
    accumulate: int = (
        1  # batches summed into one optimizer step (effective batch = batch_size·accumulate·world)
    )
    num_workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    transform_kwargs: dict = field(
        default_factory=dict
    )  # size knobs for build_transforms; {} = the model's size
    augment: str | None = (
        None  # training transforms recipe (data.transforms); None = the model's transform_recipe
    )

    # --- optimizer -----------------------------------------------------------
    optimizer: str = "sgd"  # sgd | adamw
    lr: float | None = None  # absolute learning rate; None = base_lr scaled by effective batch / base_batch
    base_lr: float = 0.01  # learning rate at base_batch images per step
    base_batch: int = 16  # batch base_lr is quoted for; 0 = do not scale base_lr with the batch
    momentum: float = 0.9  # SGD momentum (AdamW: beta1)
    weight_decay: float = 1e-4  # on weights of convolutions / linears
    norm_weight_decay: float = 0.0  # on norm-layer weights and on every bias (0: standard practice)
    backbone_lr_mult: float = 1.0  # learning-rate multiplier for parameters under model.backbone_prefixes
    clip_grad_norm: float = 0.0  # max global gradient norm; 0 = no clipping

    # --- learning-rate schedule (per iteration) ------------------------------
    schedule: str = "step"  # step | cosine | constant (after warmup)
    warmup_iters: int = 500  # linear warmup length, capped at a fifth of the run so short runs reach full lr
    warmup_factor: float = 0.001  # lr multiplier at iteration 0 of the warmup
    milestones: list = field(
        default_factory=lambda: [0.67, 0.89]
    )  # step: fractions of the run where lr drops
    gamma: float = 0.1  # step: lr multiplier at each milestone
    min_lr_factor: float = 0.0  # cosine: final lr as a fraction of the peak

    # --- numerics ------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    precision: str = (
        "auto"  # auto (bf16, else fp16, on CUDA; fp32 on CPU) | fp32 | bf16 (CPU: if native) | fp16
    )
    ema: bool = False  # keep an exponential moving average of the weights; evaluate and save it
    ema_decay: float = 0.9998  # EMA decay per optimizer step
    seed: int = 0  # seeds python, numpy, torch, the sampler and the per-sample augmentation
    deterministic: bool = False  # torch.use_deterministic_algorithms (warn_only) + cudnn deterministic
    ddp_find_unused: bool = False  # DDP find_unused_parameters (set when a model skips some parameters)

    # --- evaluation and checkpoints ------------------------------------------
    eval_every: int = 1  # evaluate every N epochs (and always after the last); 0 = only after the last
    eval_before: str = "auto"  # auto (when weights != none) | true | false: evaluate before the first step
    protocols: list = field(default_factory=lambda: ["coco", "voc07"])  # evaluation protocols
    eval_batch_size: int = 4  # images per evaluation batch
    metric: str = (
        "coco/AP50"  # flattened metric that picks checkpoints/best.pt (higher is better; val/* lower)
    )
    patience: int = 0  # early stopping: evaluations without improvement before stopping; 0 = never
    checkpoint_every: int = (
        0  # also write checkpoints/last.pt every N iterations (mid-epoch resume); 0 = per epoch
    )

    # --- logging -------------------------------------------------------------
    log_every: int = 20  # iterations between metrics.jsonl train lines (window means)
    quiet: bool = False  # no progress bar and no per-log lines
    tensorboard: bool = False  # also log to RUN/tensorboard when tensorboard is installed
    plots: bool = True  # refresh RUN/plots/*.png at every evaluation
    report: bool = True  # write RUN/report.html at the end

    def to_dict(self) -> dict:
        """Plain-dict copy (lists and dicts copied), as saved in YAML and checkpoints."""
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_DICT_FIELDS = {"model_kwargs", "transform_kwargs"}

# Per-family defaults a user does not have to know. Learning rates are quoted at
# base_batch images per step and scaled linearly with the effective batch.
RECIPES: dict[str, dict[str, Any]] = {
    # torchvision references / Detectron2 1x: SGD 0.02 at 16 images, step at 8/12 and 11/12.
    # Clipping: short runs cap the warmup at a fifth of the run, and without it the RoI
    # classifier of a fresh head diverged on BCCD (loss 650 then NaN at iteration 22).
    "faster_rcnn": dict(
        optimizer="sgd",
        base_lr=0.02,
        base_batch=16,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="step",
        warmup_iters=500,
        warmup_factor=0.001,
        clip_grad_norm=10.0,
        epochs=12,
        batch_size=4,
    ),
    # FCOS / RetinaNet papers: SGD 0.01 at 16 images; gradient clipping keeps early centerness stable.
    "fcos": dict(
        optimizer="sgd",
        base_lr=0.01,
        base_batch=16,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="step",
        warmup_iters=500,
        warmup_factor=1 / 3,
        clip_grad_norm=35.0,
        epochs=12,
        batch_size=4,
    ),
    "retinanet": dict(
        optimizer="sgd",
        base_lr=0.01,
        base_batch=16,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="step",
        warmup_iters=500,
        warmup_factor=0.001,
        clip_grad_norm=35.0,
        epochs=12,
        batch_size=4,
    ),
    # torchvision SSD300 reference: SGD 0.002 at 32 images, wd 5e-4, cosine, long schedule.
    "ssd": dict(
        optimizer="sgd",
        base_lr=0.002,
        base_batch=32,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_iters=1000,
        warmup_factor=0.001,
        epochs=60,
        batch_size=8,
    ),
    # DETR for small data (hundreds of images). The paper's recipe (AdamW 1e-4 without linear
    # scaling, backbone x0.1, wd 1e-4, clip 0.1, 500 epochs on COCO with one lr drop) trains a
    # 6+6-layer transformer with learned queries, which on small data collapse to image-independent
    # prior boxes: measured by benchmarks/detr_small_data.py on BCCD (205 training images,
    # transformer from scratch), each query's box moves 0.07 % of the image between val images (the
    # script prints this "spread") and val AP50 stays about 0.02 whatever the schedule (100 epochs:
    # 0.025), no-object weight (0.5, 1.0) or stride (16). Queries selected from the encoder's tokens
    # with box refinement (query_selection) break the collapse: val AP50 0.43 (AP 0.18) at 384 px
    # after 40 epochs (0.29 at 256 px without the refinement; 60 epochs: 0.42). Through `detlab
    # train` (40 epochs, the recipe's augmentation): BCCD test AP50 0.408, AP 0.179. Hence: a
    # pretrained, frozen backbone (train_backbone=false; EfficientNet-Lite0's ImageNet weights are
    # offline), a narrow 3+3-layer transformer, 40 queries (above BCCD's 30 boxes per image), AdamW
    # 5e-4 (absolute: base_batch 0) without dropout, clipping at 0.1, the lr x0.1 at 30 of 40
    # epochs. With a trainable backbone, backbone_lr_mult scales its lr (published: 1e-5 / 1e-4).
    "detr": dict(
        optimizer="adamw",
        base_lr=5e-4,
        base_batch=0,
        momentum=0.9,
        weight_decay=1e-4,
        backbone_lr_mult=0.1,
        clip_grad_norm=0.1,
        schedule="step",
        milestones=[0.75],
        warmup_iters=0,
        epochs=40,
        batch_size=2,
        model_kwargs=dict(
            num_queries=40,
            query_selection=True,
            min_size=384,
            max_size=512,
            enc_layers=3,
            dec_layers=3,
            hidden_dim=128,
            dim_feedforward=512,
            dropout=0.0,
            train_backbone=False,
        ),
    ),
}

# Model-specific changes to the family recipe (the lighter SSDLite recipe from torchvision).
MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "ssdlite_effl0": dict(base_lr=0.15, base_batch=192, weight_decay=4e-5),
}

# The family of a model name: detlab.models.families.family_of (imported above, one rule for all).


def family_recipe(family: str, model_name: str | None = None) -> dict[str, Any]:
    """Default overrides for one family (and model), as a plain dict of TrainConfig fields.

    A copy: a run that changes its ``model_kwargs`` leaves the recipe as it is.
    """
    recipe = copy.deepcopy(RECIPES.get(family, {}))
    recipe.update(copy.deepcopy(MODEL_RECIPES.get(model_name or "", {})))
    return recipe


def nearest_key(key: str) -> str:
    """``; did you mean 'x'?`` hint for an unknown key, or a list hint when nothing is close."""
    close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return "valid keys: " + ", ".join(FIELDS)


def apply_overrides(base: dict, overrides: dict, source: str) -> dict:
    """Merge ``overrides`` (flat, dotted keys allowed for dict fields) into a config dict.

    Args:
        base: plain dict of TrainConfig fields.
        overrides: ``{key: value}``; ``model_kwargs.min_size`` sets one entry of a dict field.
        source: where the overrides came from, for error messages (``--set``, a YAML path…).

    Returns:
        A new dict. Raises ConfigError naming the unknown key and the nearest valid one.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in overrides.items():
        if key == OLD_PRECISION_KEY:
            key, value = "precision", precision_word(value, f"{source}: config key {OLD_PRECISION_KEY!r}")
        head, _, rest = key.partition(".")
        if head not in FIELDS:
            raise ConfigError(f"{source}: unknown config key {key!r}; {nearest_key(head)}")
        if rest:
            if head not in _DICT_FIELDS:
                raise ConfigError(f"{source}: key {key!r}: {head!r} is not a dict; use --set {head}=VALUE")
            out[head] = {**out.get(head, {}), rest: value}
        elif head in _DICT_FIELDS and not isinstance(value, dict):
            raise ConfigError(
                f"{source}: key {head!r} must be a mapping, got {value!r}; use {head}.NAME=VALUE"
            )
        else:
            out[head] = value
    return out


def yaml_scalar(value) -> str:
    """A value as ``--set`` reads it back (``1.0e-05``, ``true``, ``null``, ``[1, 2]``), on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def parse_set(items: list[str]) -> dict:
    """``["a=1", "b.c=x"]`` → ``{"a": 1, "b.c": "x"}``; values parsed with ``yaml.safe_load``."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. --set lr=0.01)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(
                f"--set {item!r}: value is not valid YAML ({e.__class__.__name__}); quote it"
            ) from None
    apply_overrides(TrainConfig().to_dict(), out, "--set")  # unknown keys fail here, named as --set
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a flat YAML config into a dict (keys validated by :func:`apply_overrides`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found; give the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys, got {type(data).__name__}")
    apply_overrides(TrainConfig().to_dict(), data, str(path))  # unknown keys fail here, named with the file
    return data


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, in field order."""
    with writing(path, "config"):
        Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def resolve(user: dict, family: str | None = None, model_name: str | None = None) -> TrainConfig:
    """Build a validated TrainConfig: defaults < family recipe < ``user`` overrides.

    Args:
        user: overrides already merged from YAML, ``--set`` and CLI flags (flat or dotted keys).
        family: model family; default: from ``user["model"]`` or ``model_name``.
        model_name: catalogue name, for model-specific recipe changes.

    Returns:
        The resolved config (``lr`` still None when it is to be scaled; see :func:`effective_lr`).
    """
    model_name = model_name or user.get("model")
    family = family or (family_of(model_name) if model_name else None)
    merged = TrainConfig().to_dict()
    if family:
        merged = apply_overrides(merged, family_recipe(family, model_name), f"recipe for {family}")
    merged = apply_overrides(merged, user, "config")
    cfg = TrainConfig(**merged)
    validate(cfg, family)
    return cfg


# One set of words for every place detlab takes a precision: the config key ``precision``,
# ``--precision`` on train / eval / predict / bench, and the Python API (meanings:
# :func:`detlab.models.precision.amp_dtype`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Words earlier versions wrote — the config key ``amp`` (``amp: off``), ``--precision amp``,
# bench's ``--amp`` — still read, because saved run folders and scripts hold them.
OLD_PRECISION_KEY = "amp"
_OLD_PRECISION_WORDS = {"off": "fp32", "amp": "auto"}


def precision_word(word: str, source: str = "precision") -> str:
    """``word`` in :data:`PRECISIONS`, an older word translated; ConfigError naming ``source`` otherwise."""
    word = str(word).lower()
    word = _OLD_PRECISION_WORDS.get(word, word)
    if word not in PRECISIONS:
        raise ConfigError(f"{source}: {word!r} is not one of {', '.join(PRECISIONS)}")
    return word


_CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("step", "cosine", "constant"),
    "precision": PRECISIONS,
    "eval_before": ("auto", "true", "false"),
}

# The names detlab.evaluation.evaluator.PROTOCOLS accepts (a test keeps them equal); kept here so a
# config is checked without importing the evaluation stack.
PROTOCOLS = ("coco", "voc07", "voc12")


def _at_least(lo: float) -> Callable[[Any], bool]:
    return lambda v: v >= lo


def _within(lo: float, hi: float, hi_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: lo <= v < hi if hi_open else lo <= v <= hi


# Beyond its annotated type, what a field accepts: (test on a well-typed value, what the message expects).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{
        k: (_at_least(1), "an integer ≥ 1")
        for k in ("epochs", "batch_size", "accumulate", "eval_batch_size", "log_every")
    },
    **{
        k: (_at_least(0), "an integer ≥ 0")
        for k in (
            "num_workers",
            "warmup_iters",
            "checkpoint_every",
            "patience",
            "eval_every",
            "base_batch",
            "seed",
        )
    },
    **{
        k: (_at_least(0), "a number ≥ 0")
        for k in (
            "base_lr",
            "weight_decay",
            "norm_weight_decay",
            "backbone_lr_mult",
            "clip_grad_norm",
            "gamma",
        )
    },
    "lr": (lambda v: v is None or v > 0, "a positive number, or null to scale base_lr"),
    "time_budget": (
        lambda v: v is None or duration_seconds(v, check=False) is not None,
        "a duration such as 90s, 10m, 2h or 1h30m (or seconds), or null",
    ),
    "val_fraction": (_within(0, 1, hi_open=True), "a number in [0, 1), e.g. 0.2"),
    "momentum": (_within(0, 1, hi_open=True), "a number in [0, 1)"),
    "warmup_factor": (_within(0, 1), "a number in [0, 1]"),
    "min_lr_factor": (_within(0, 1), "a number in [0, 1]"),
    "ema_decay": (_within(0, 1, hi_open=True), "a number in [0, 1)"),
    "milestones": (
        lambda v: all(_is_number(m) and 0 < m < 1 for m in v),
        "a list of fractions of the run in (0, 1), e.g. [0.67, 0.89]",
    ),
    "protocols": (lambda v: bool(v) and all(p in PROTOCOLS for p in v), f"a list of {', '.join(PROTOCOLS)}"),
    "transform_kwargs": (
        lambda v: set(v) <= {"min_size", "max_size", "size"},
        "a mapping of min_size, max_size or size",
    ),
    **{k: (lambda v, c=c: v in c, "one of " + ", ".join(c)) for k, c in _CHOICES.items()},
}

_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
    "tuple": "a list",
    "dict": "a mapping",
    "None": "null",
}
_PY_TYPES = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "list": list,
    "tuple": (list, tuple),
    "dict": dict,
    "None": type(None),
}


_DURATION = re.compile(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*")


def duration_seconds(value: str | float | int | None, check: bool = True) -> float | None:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"1h30m"``, ``"600"`` or a number of seconds → seconds (> 0).

    Returns None for None; an unreadable or non-positive value raises ConfigError (``check``) or
    gives None (``check=False``, for validation).
    """
    if value is None:
        return None
    seconds = None
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value.lower())
        if value.strip() and m and any(m.groups()):
            h, mins, s = (float(g) if g else 0.0 for g in m.groups())
            seconds = 3600 * h + 60 * mins + s
        else:
            try:
                seconds = float(value)
            except ValueError:
                seconds = None
    if seconds is not None and (not math.isfinite(seconds) or seconds <= 0):
        seconds = None
    if seconds is None and check:
        raise ConfigError(f"time budget {value!r}: not a duration; use e.g. --time 90s, 10m, 2h or 1h30m")
    return seconds


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(value: Any) -> str:
    """A value as the user typed it in YAML (``true``, ``null``) or as Python's repr."""
    if value is None or isinstance(value, bool):
        return yaml.safe_dump(value).split("\n")[0]
    return repr(value)


def check_typed(key: str, value: Any, annotation: str, expected: str | None = None) -> Any:
    """``value`` checked against a field annotation (``"float | None"``); returns it, numeric strings as floats.

    ``bool`` is not an ``int`` here (``epochs=true`` is refused); an ``int`` is a ``float``; a string
    that reads as a finite number is one for a float field (YAML reads ``1e-4`` as a string).
    Annotations naming other types (``Callable``) are not checked.

    Raises:
        ConfigError: ``config key 'KEY': VALUE is not …`` (``expected`` or the annotation in words).
    """
    names = [a.strip().split("[")[0] for a in annotation.split("|")]
    if any(n not in _PY_TYPES for n in names):
        return value
    wanted = expected or " or ".join(dict.fromkeys(_WORDS[n] for n in names))
    if isinstance(value, str) and "float" in names and "str" not in names:
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool):
        ok = "bool" in names
    elif isinstance(value, int):
        ok = "int" in names or "float" in names
    elif isinstance(value, float):
        ok = "float" in names and math.isfinite(value)
    else:
        ok = any(isinstance(value, _PY_TYPES[n]) for n in names)
    if not ok:
        raise ConfigError(f"config key {key!r}: {_show(value)} is not {wanted}")
    return value


def validate(cfg: TrainConfig, family: str | None = None) -> None:
    """Check every field by its annotated type and rule, and the rules across fields.

    Runs at start-up, before any data is loaded (``resolve``, ``--resume``), so a bad value costs
    nothing. Each failure is one ConfigError naming the key, the value and what is expected.

    Args:
        cfg: the config; ``eval_before`` (a YAML bool), ``protocols`` (a comma string) and
            numeric strings of float fields are normalised in place.
        family: model family, for the loss parts ``metric=val/loss_<part>`` may name; default:
            from ``cfg.model``.
    """
    if isinstance(cfg.eval_before, bool):  # YAML parses `true` as a bool
        cfg.eval_before = str(cfg.eval_before).lower()
    if isinstance(cfg.protocols, str):
        cfg.protocols = [p.strip() for p in cfg.protocols.split(",") if p.strip()]
    if isinstance(cfg.precision, str):  # older words (off) read as today's (fp32)
        cfg.precision = precision_word(cfg.precision, "config key 'precision'")
    unknown = [p for p in cfg.protocols if p not in PROTOCOLS] if isinstance(cfg.protocols, list) else []
    if unknown:
        raise ConfigError(
            f"config key 'protocols': {unknown[0]!r} is not a protocol; use a list of {', '.join(PROTOCOLS)}"
        )
    for name, f in FIELDS.items():
        test, expected = _RULES.get(name, (None, None))
        value = check_typed(name, getattr(cfg, name), str(f.type), expected)
        if test is not None and not test(value):
            raise ConfigError(f"config key {name!r}: {_show(value)} is not {expected}")
        setattr(cfg, name, value)
    cfg.protocols = list(dict.fromkeys(cfg.protocols))
    if cfg.weights == "none" and cfg.model_kwargs.get("train_backbone") is False:
        raise ConfigError(
            "config: weights=none with model_kwargs.train_backbone=false (DETR's small-data recipe) "
            "would train on a frozen random backbone — use --weights imagenet (offline for "
            "detr_effl0) or --set model_kwargs.train_backbone=true"
        )
    if family is None and cfg.model and has_family(cfg.model):
        family = family_of(cfg.model)
    validate_metric(cfg.metric, cfg.protocols, family)
    _validate_device(cfg.device, cfg.precision)
    _validate_model_kwargs(cfg.model, cfg.model_kwargs)


# Metrics that can pick the best checkpoint (evaluator.flatten_metrics names; val/* from the engine).
_METRICS = [f"coco/{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")] + [
    "voc07/mAP",
    "voc12/mAP",
    "val/loss",
]

# The loss parts each family's model returns (its docstring's train-mode keys), so that
# metric=val/loss_<part> is checked before training instead of after the first evaluation.
_LOSS_PARTS = {
    "faster_rcnn": r"classifier|box_reg|objectness|rpn_box_reg",
    "fcos": r"classification|bbox_regression|bbox_ctrness",
    "retinanet": r"classification|bbox_regression",
    "ssd": r"classification|bbox_regression",
    "detr": r"(ce|bbox|giou)(_\d+|_enc)?",
}


def validate_metric(metric: str, protocols: list, family: str | None) -> None:
    head = metric.split("/")[0]
    if metric in _METRICS:
        if head not in (*protocols, "val"):
            raise ConfigError(
                f"config key 'metric': {metric!r} needs protocol {head!r}, which is not in protocols "
                f"{protocols}; add it or pick e.g. metric={protocols[0]}/{'AP50' if protocols[0] == 'coco' else 'mAP'}"
            )
        return
    part = metric.removeprefix("val/loss_") if metric.startswith("val/loss_") else None
    if part is not None and (family not in _LOSS_PARTS or re.fullmatch(_LOSS_PARTS[family], part)):
        return
    if part is not None:
        parts = ", ".join(f"val/loss_{p}" for p in _LOSS_PARTS[family].split("|") if p.isidentifier())
        raise ConfigError(
            f"config key 'metric': {metric!r} is not a loss part of {family} models; use val/loss "
            f"or one of {parts}"
        )
    close = difflib.get_close_matches(metric, _METRICS, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(_METRICS)} or val/loss_<part>"
    raise ConfigError(f"config key 'metric': {metric!r} is not a metric detlab computes; {hint}")


def _validate_device(device: str, precision: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"config key 'device': {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if device in ("auto", "cpu"):
        if precision == "bf16":
            _validate_cpu_bf16(device)
        return
    import torch

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                "config key 'device': 'mps' is not available: no Apple GPU here; use device=cpu or auto"
            )
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise ConfigError(
            f"config key 'device': {device!r} is not available: torch sees no CUDA GPU here; use "
            "device=cpu or auto"
        )
    if index >= count:
        raise ConfigError(
            f"config key 'device': {device!r} is not available: torch sees {count} CUDA GPU(s), "
            f"cuda:0..cuda:{count - 1}"
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"config key 'precision': 'bf16' is not supported by {torch.cuda.get_device_name(index)}; "
            "use precision=fp16 or auto"
        )


def _validate_cpu_bf16(device: str) -> None:
    """precision=bf16 on a CPU: only where oneDNN runs bf16 natively. Emulated it runs, but slower than
    float32 (benchmarks/bf16_train.py --emulated measures it), so it is refused, not run."""
    import torch

    from detlab import device as devices

    if device == "auto" and torch.cuda.is_available():
        return  # auto is the GPU there
    if not devices.cpu_has_native_bf16():
        raise ConfigError(
            "config key 'precision': this CPU has no native bf16 (no AVX512-BF16 / AMX), so bf16 training "
            "would run emulated and slower than float32; use precision=fp32 (or auto) here"
        )


def _validate_model_kwargs(model: str | None, knobs: dict) -> None:
    """Each ``model_kwargs`` entry against the model's knobs dataclass: its name and annotated type."""
    if not knobs or not model:
        return
    from detlab.models.catalogue import MODELS
    from detlab.models.catalogue import knobs as model_knobs
    from detlab.models.knobs import nearest

    if model not in MODELS:  # a model built outside the catalogue (the Python API) takes what it takes
        return
    annotations = {k.name: k.type for k in model_knobs(model)}
    for key, value in knobs.items():
        if key not in annotations:
            raise ConfigError(
                f"config key 'model_kwargs.{key}': not a knob of {model}; {nearest(key, list(annotations))}"
                f"knobs: {', '.join(annotations)}"
            )
        knobs[key] = check_typed(f"model_kwargs.{key}", value, annotations[key])


def effective_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The learning rate to use: ``lr`` when set, else ``base_lr`` scaled by the effective batch."""
    if cfg.lr is not None:
        return float(cfg.lr)
    if cfg.base_batch == 0:
        return float(cfg.base_lr)
    return float(cfg.base_lr) * cfg.batch_size * cfg.accumulate * world_size / cfg.base_batch
