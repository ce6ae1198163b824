"""The run folder: its layout, how it is read, and which data trained and validates it.

Every command that opens a run — ``eval``, ``predict``, ``report``, ``compare``,
``export``, ``train --resume`` — reads it through this module, and the trainer
records here what it really used, whichever door the run came through (the CLI
or ``detlab.train``)::

    RUN/
      config.yaml               the resolved config: model, data, val, weights, recipe
      checkpoints/last.pt       every epoch (model, optimizer, scaler, EMA, RNG, class map, config)
      checkpoints/best.pt       the weights the metric picked; what predict and export deploy
      metrics.jsonl             one line per log step and per evaluation
      eval/{before,best,last}.json   evaluations, each naming its protocols
      plots/*.png, report.html

It depends only on the data readers and the checkpoint file reader, so anything
above (engine, evaluation, predict, report) may use it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from detlab.engine.checkpoint import load_checkpoint
from detlab.errors import DataError, DetlabError, WeightsError
from detlab.log import logger
from detlab.torchfile import read_torch_file

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
PROTOCOL_KEYS = ("coco", "voc07", "voc12")
VAL_SPLITS = ("val", "valid", "test")  # looked for, in this order, beside the training data
# Checkpoint fields that are training state or weights, not facts about the run.
_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "rng", "rng_per_rank")


# --- checkpoints -------------------------------------------------------------------


def find_checkpoint(run_or_checkpoint: str | Path, checkpoint: str = "best") -> Path:
    """The checkpoint file a run folder (or a direct path) points at.

    Args:
        run_or_checkpoint: a run folder made by ``detlab train``, or a ``.pt`` file.
        checkpoint: ``best``, ``last`` or a path (absolute, or relative to ``RUN/checkpoints``).
            A run without ``best.pt`` (no evaluation yet) falls back to ``last.pt`` with a note.

    Raises:
        DataError: no such run folder or checkpoint.
    """
    src = Path(run_or_checkpoint)
    if src.is_file():
        return src
    if checkpoint not in ("best", "last"):
        path = Path(checkpoint)
        if not path.is_file():
            path = src / "checkpoints" / checkpoint
        if not path.is_file():
            raise DataError(f"{checkpoint}: checkpoint not found — use best, last or a .pt path")
        return path
    if not src.is_dir():
        raise DataError(
            f"{src}: no such run folder or checkpoint file — give a run folder made by `detlab train`"
        )
    path = src / "checkpoints" / f"{checkpoint}.pt"
    if path.is_file():
        return path
    last = src / "checkpoints" / "last.pt"
    if checkpoint == "best" and last.is_file():
        logger.info(f"note: {path} not found (no evaluation picked a best yet); using {last}")
        return last
    raise DataError(f"{path}: checkpoint not found — train the run first (`detlab train --out {src}`)")


def load_model_checkpoint(path: str | Path) -> dict:
    """A checkpoint that can rebuild its model (``weights_only=True``; the rebuild fields checked).

    Raises:
        WeightsError: unreadable or refused file (one line).
        DataError: weights without the model they belong to.
    """
    ckpt = load_checkpoint(path)
    missing = [k for k in ("model_name", "num_classes") if k not in ckpt]
    if missing:
        raise DataError(
            f"{path}: holds weights but not the model they belong to (checkpoint field "
            f"{', '.join(missing)} missing) — use a checkpoint written by `detlab train`, or start a run "
            f"from these weights with `detlab train --weights {path}`"
        )
    return ckpt


# --- reading a run -------------------------------------------------------------------


@dataclass
class RunInfo:
    """What a run folder holds, read once (not its weights).

    Attributes:
        path: the run folder.
        name: its folder name.
        config: resolved config (``config.yaml``, else the checkpoint's).
        lines: every ``metrics.jsonl`` record, in order.
        final: the last evaluation as a nested result (``{"coco": {...}, "voc07": {...}}``) or ``{}``.
        final_source: where ``final`` came from (for the report).
        before: the evaluation before the first fine-tuning step (``eval/before.json``) or ``{}``.
        checkpoint: ``best.pt`` or ``last.pt`` when present.
        meta: checkpoint fields other than weights and training state (model_name, class_names, …).
    """

    path: Path
    name: str
    config: dict = field(default_factory=dict)
    lines: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    final_source: str = ""
    before: dict = field(default_factory=dict)
    checkpoint: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model_name") or self.config.get("model") or "?")

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])


def unflatten(flat: dict) -> dict:
    """``{"coco/AP": .1, "coco/per_class/cat": .2}`` → ``{"coco": {"AP": .1, "per_class": {"cat": .2}}}``."""
    out: dict = {}
    for key, value in flat.items():
        parts = str(key).split("/")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return out


def as_result(obj) -> dict:
    """Normalise an evaluation JSON (nested, wrapped under ``metrics``/``results``, or flattened) to nested."""
    if not isinstance(obj, dict):
        return {}
    if any(p in obj for p in PROTOCOL_KEYS):
        return obj
    for key in ("metrics", "results", "result"):
        if isinstance(obj.get(key), dict):
            return as_result(obj[key])
    if any("/" in str(k) for k in obj):
        nested = unflatten({k: v for k, v in obj.items() if "/" in str(k)})
        return nested if any(p in nested for p in PROTOCOL_KEYS) else {}
    return {}


def read_jsonl(path: Path) -> list[dict]:
    """Every JSON line of ``path``; a broken line (a run killed mid-write) is reported and skipped."""
    rows = []
    if not path.is_file():
        return rows
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning(f"skipped: {path}: line {n}: not valid JSON — left out")
    return rows


def read_config(run: str | Path) -> dict:
    """``RUN/config.yaml`` as a dict (``{}`` when absent)."""
    path = Path(run) / CONFIG_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _final_eval(run: Path, lines: list[dict], meta: dict) -> tuple[dict, str]:
    """The run's final evaluation: ``eval/best.json`` (the checkpoint predict deploys), else
    ``eval/last.json``, else the newest other ``eval/*.json`` (not before.json), else the last eval line."""
    others = (
        sorted(
            (p for p in (run / "eval").glob("*.json") if p.name != "before.json"),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        if (run / "eval").is_dir()
        else []
    )
    candidates = sorted(others, key=lambda p: {"best.json": 0, "last.json": 1}.get(p.name, 2))
    for path in candidates:
        try:
            result = as_result(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            logger.warning(f"skipped: {path}: not valid JSON — left out of the report")
            continue
        if result:
            return result, str(path.relative_to(run))
    evals = [r for r in lines if r.get("type") == "eval" and as_result(r)]
    if evals:
        return as_result(evals[-1]), f"metrics.jsonl (epoch {evals[-1].get('epoch', '?')})"
    if as_result(meta.get("metrics") or {}):
        return as_result(meta["metrics"]), "checkpoint metrics"
    return {}, ""


def _checkpoint_meta(path: Path) -> dict:
    try:
        ckpt = read_torch_file(path, "cannot load checkpoint", "the report is written without it")
    except WeightsError as e:  # an unreadable checkpoint still leaves the metrics to report
        logger.warning(f"skipped: {e}")
        return {}
    return {k: v for k, v in ckpt.items() if k not in _STATE_KEYS} if isinstance(ckpt, dict) else {}


def load_run(run_dir: str | Path) -> RunInfo:
    """Read a run folder's config, metrics, evaluations and checkpoint metadata (not its weights).

    Raises:
        DataError: not a folder, or nothing in it that ``detlab train`` writes.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: no such run folder — give a folder made by `detlab train`")
    info = RunInfo(path=run, name=run.resolve().name)
    info.checkpoint = next(
        (p for p in (run / "checkpoints" / n for n in ("best.pt", "last.pt")) if p.is_file()), None
    )
    if info.checkpoint is not None:
        info.meta = _checkpoint_meta(info.checkpoint)
    info.config = read_config(run) or dict(info.meta.get("config") or {})
    info.lines = read_jsonl(run / METRICS_FILE)
    info.final, info.final_source = _final_eval(run, info.lines, info.meta)
    if (run / "eval" / "before.json").is_file():
        info.before = as_result(json.loads((run / "eval" / "before.json").read_text()))
    if not (info.config or info.lines or info.final or info.meta):
        raise DataError(
            f"{run}: no config.yaml, metrics.jsonl, eval/*.json or checkpoint — not a detlab run folder"
        )
    return info


# --- which data trains and validates a run ------------------------------------------------


def dataset_spec(dataset) -> str | None:
    """The data spec (``PATH[:split]``) a loaded dataset was read from, for config.yaml; None when in memory."""
    records = getattr(dataset, "records", None)
    root = getattr(records, "root", None)
    if root is None or not Path(root).exists():
        return None
    split = getattr(records, "split", None)
    return f"{root}:{split}" if split and not str(root).endswith(f":{split}") else str(root)


def _strip_split(spec: str) -> str:
    return re.sub(r":[A-Za-z0-9_\-]+$", "", spec)


def default_train_split(data: str) -> str:
    """``data`` with ``:train`` added to each VOC part that names no split but has ``ImageSets/Main/train.txt``.

    A VOC folder read without a split holds every annotated image (validation and
    test too); training on it would leak the evaluation images into training.
    """
    from detlab.data.formats import detect_format, split_spec

    parts = []
    for part in data.split("+"):
        path, split = split_spec(part)
        try:
            fmt = detect_format(path) if split is None else None
        except DetlabError:
            fmt = None  # load_dataset reports it
        years = [path] if fmt == "voc" else sorted(path.iterdir()) if fmt == "vocdevkit" else []
        has_train = any((y / "ImageSets" / "Main" / "train.txt").is_file() for y in years)
        parts.append(f"{part}:train" if has_train else part)
    return "+".join(parts)


def _val_candidates(data: str) -> list[str]:
    """Specs that may hold the validation data beside training data ``data``, in the order tried:
    each part's val / valid / test split, then Roboflow-style sibling split folders."""
    bases = [_strip_split(part) for part in data.split("+")]
    candidates = ["+".join(f"{b}:{split}" for b in bases) for split in VAL_SPLITS]
    if len(bases) == 1 and Path(bases[0]).name in ("train", "training"):
        candidates += [str(Path(bases[0]).parent / name) for name in VAL_SPLITS]
    return candidates


def find_val_split(data: str, train_ds):
    """``(spec, dataset)`` of the first val / valid / test split beside ``data``, or ``(None, None)``.

    Read with the training class list, so label indices agree. A source without splits may
    ignore the split name and hand back the training images: such a "split" is not validation.
    """
    from detlab.data.dataset import load_dataset

    train_files = {str(r.file) for r in train_ds.records.images}
    for spec in _val_candidates(data):
        try:
            ds = load_dataset(spec, classes=list(train_ds.class_names))
        except DetlabError:
            continue
        if len(ds) and {str(r.file) for r in ds.records.images} != train_files:
            return spec, ds
    return None, None


def names_test(spec: str) -> bool:
    """Whether a data spec selects a split (``:test``) or a split folder (``…/test``) named test."""
    from detlab.data.formats import split_spec

    return any(
        (split or Path(path).name).lower() in ("test", "testing")
        for path, split in (split_spec(part) for part in str(spec).split("+"))
    )


def validation_spec(config: dict, data: str | None = None) -> str:
    """What validates a run: ``data`` when given, else the run's ``val``, else its training source's split.

    Raises:
        DataError: none of them exists (the message says to pass ``--data``).
    """
    if data:
        return str(data)
    if config.get("val"):
        return str(config["val"])
    train = config.get("data")
    if not train:
        raise DataError(f"{CONFIG_FILE}: neither `val` nor `data` is set — pass --data DATA")
    from detlab.data.formats import read_records

    for spec in _val_candidates(str(train)):
        try:
            read_records(spec)
        except DetlabError:
            continue
        return spec
    raise DataError(f"{CONFIG_FILE}: data {train!r} has no val, valid or test split — pass --data DATA")


def holds_out(config: dict, data: str | None = None) -> bool:
    """Whether a run validated on images ``val_fraction`` held out of its training data (no ``val``)."""
    return data is None and not config.get("val") and float(config.get("val_fraction") or 0) > 0


def held_out_dataset(config: dict, classes: list[str] | None = None):
    """The images ``val_fraction`` held out of the run's training data, as training picked them.

    The same seeded, class-stratified :func:`detlab.data.split.holdout` of the same records (the
    saved ``data``, ``val_fraction`` and ``seed``), so ``eval``, ``report`` and ``compare`` score
    what the run was selected on, never its training images.
    """
    from detlab.data.dataset import DetectionDataset, load_dataset
    from detlab.data.split import holdout

    train = load_dataset(str(config["data"]), classes=classes)
    _, val = holdout(train.records, float(config["val_fraction"]), int(config.get("seed") or 0))
    return DetectionDataset(val, train.transforms)


def held_out_name(config: dict) -> str:
    """How messages name a held-out validation set."""
    return (
        f"{config['data']} (val_fraction {config['val_fraction']} held out, seed {config.get('seed') or 0})"
    )


def validation_dataset(config: dict, data: str | None = None, classes: list[str] | None = None):
    """The dataset :func:`validation_spec` names (or :func:`held_out_dataset`), loaded with the run's classes."""
    from detlab.data.dataset import load_dataset

    if holds_out(config, data):
        return held_out_dataset(config, classes)
    return load_dataset(validation_spec(config, data), classes=classes)
