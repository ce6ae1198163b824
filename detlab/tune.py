"""``detlab tune``: hyper-parameter search on Optuna, every trial a normal ``detlab train`` run.

    detlab tune --data DATA --model NAME --out OUT --time 10m [--trials N] [--space KEY=SPEC …]
                [--weights W] [--val V] [--set KEY=VALUE …] [--seed S]

Time. ``--time`` is the whole study's. Each trial starts with an equal share of what is left
(time a pruned or failed trial leaves goes to the later ones) as its own ``time_budget``, so the
budget planner (:mod:`detlab.engine.budget`) picks that trial's epochs to end on time: the
study searches the learning rate and the input size, and the epochs follow from them. Without
``--trials``: one trial per ``DEFAULT_TRIAL_S`` seconds of ``--time`` (2 to ``MAX_DEFAULT_TRIALS``).
Fewer, longer trials when the data asks for it: once a trial has measured its costs, a share that
cannot hold ``MIN_TRIAL_EPOCHS`` epochs makes the study run only as many trials as can, that trial
already with the larger share (:func:`_share_from_costs`); a completed trial that still ran more
than ``OVERRUN`` times its share cuts the count again (:func:`_fewer_if_overrun`).

Default space (``--space`` replaces it; :mod:`detlab.search_space`):

- ``base_lr``: log-uniform over ×0.25..×4 the family recipe's (``detlab config --model NAME``);
  left out when ``--set`` fixes ``lr`` or ``base_lr``.
- input size: the family's size knob at ×0.8, ×1 and ×1.2 its default, rounded to multiples of
  32: ``model_kwargs.min_size`` around the data-aware size of :mod:`detlab.engine.plan`
  (Faster R-CNN, FCOS, RetinaNet) or the recipe's (DETR), ``max_size`` following at the
  default's aspect; SSD's ``model_kwargs.size`` (its default kept as it is). Left out when
  ``--set`` gives a size.
- augmentation: the config has no augmentation-strength key (``augment`` names a transform
  recipe), so the default space leaves it alone; ``--space augment=fcos,ssd`` searches recipes.

``--space KEY=LOW:HIGH`` (uniform; ``LOW:HIGH:log`` log-uniform; an integer key samples
integers) or ``KEY=A,B,C`` (choices, read as YAML), repeatable. Keys and values are checked
as ``--set``'s are, before anything trains; ``epochs`` and ``time_budget`` are the planner's.

Sampling and pruning: Optuna's ``TPESampler(seed=--seed)`` (its first 10 trials are seeded
random samples); training keeps config key ``seed``, so trials differ by their values only.
After each epoch's evaluation the run's ``metric`` (``coco/AP50`` unless ``--set metric=…``) is
reported to a ``MedianPruner``: once ``PRUNER_STARTUP`` trials completed, a trial worse than
their median at the same epoch stops there, its folder kept (checkpoints, ``eval/``,
``metrics.jsonl``) and marked pruned. A trial that fails with a DetlabError (a non-finite loss
at a high learning rate, say) or runs out of GPU memory is recorded as failed with its
one-line reason, and the study goes on; Ctrl-C keeps the finished trials and writes the table.

Writes::

    OUT/trial_NNN/   a `detlab train` run folder (eval, report, compare work on it), + tune.json
    OUT/trials.csv   one row per trial: state, searched values, AP50, AP, epochs, CPU/wall seconds
    OUT/study.json   space, seed, budget, and every trial's values, state, reports and reason
    OUT/best.yaml    the best trial's resolved config, out: OUT/best (`detlab train --config` it)
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import yaml

from detlab.config import TrainConfig, duration_seconds, parse_set, resolve, yaml_scalar
from detlab.errors import ConfigError, DataError, DetlabError, writing
from detlab.log import logger
from detlab.search_space import NOT_SEARCHED, Dimension, default_space, parse_space

DEFAULT_TRIAL_S = 120  # without --trials: one trial per this many seconds of --time
MAX_DEFAULT_TRIALS = 10
MIN_SHARE = 0.5  # a trial needs at least this part of an even share of --time, or the study stops
PRUNER_STARTUP = 2  # completed trials before MedianPruner prunes (Optuna's 5 outlast short studies)
TRIAL_FOLDER = "trial_{:03d}"
OVERRUN = 1.1  # a completed trial this many times its share: fewer trials follow
MIN_TRIAL_EPOCHS = 2  # a trial's share holds this many epochs at the measured costs, or fewer trials run


@dataclass
class TrialRecord:
    """One trial as the table, trials.csv and study.json show it."""

    number: int
    folder: str
    params: dict  # the searched values
    derived: dict = field(default_factory=dict)  # keys set from them (max_size)
    state: str = "running"  # complete | pruned | failed | interrupted
    value: float | None = None  # best metric over its evaluations (what best.pt holds)
    ap50: float | None = None  # coco/AP50 and coco/AP of that evaluation
    ap: float | None = None
    epochs: int = 0  # epochs trained (the last evaluated)
    reports: list = field(default_factory=list)  # [epoch, metric] told to the pruner
    budget_s: float = 0.0
    cpu_s: float = 0.0  # this process and its loader workers
    wall_s: float = 0.0
    reason: str = ""


@dataclass
class TuneResult:
    """What :func:`tune` returns (and study.json holds)."""

    out: Path
    model: str
    metric: str
    direction: str
    seed: int
    budget_s: float
    planned_trials: int
    space: list[Dimension]
    trials: list[TrialRecord] = field(default_factory=list)
    baseline: bool = False  # trial 000 trains detlab's defaults (the default space's values)
    min_trial_s: float | None = None  # the cheapest MIN_TRIAL_EPOCHS-epoch trial measured so far

    @property
    def best(self) -> TrialRecord | None:
        done = [t for t in self.trials if t.state == "complete" and t.value is not None]
        sign = -1 if self.direction == "maximize" else 1
        return min(done, key=lambda t: (sign * t.value, t.number)) if done else None


# --- one trial ---------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    t = os.times()  # children: loader workers, once they are joined
    return t.user + t.system + t.children_user + t.children_system


def _report(trial, rec: TrialRecord, metric: str, direction: str, optuna, epoch: int, metrics: dict) -> None:
    """``fit``'s on_eval: keep the trial's best evaluation, tell the pruner, stop the run if pruned."""
    rec.epochs = epoch
    value = metrics.get(metric)
    if value is None or not math.isfinite(value):
        return
    rec.reports.append([epoch, value])
    better = rec.value is None or (value > rec.value if direction == "maximize" else value < rec.value)
    if better:
        rec.value, rec.ap50, rec.ap = value, metrics.get("coco/AP50"), metrics.get("coco/AP")
    trial.report(value, epoch)
    if trial.should_prune():
        raise optuna.TrialPruned(
            f"pruned after epoch {epoch}: {metric} {value:.3f} is worse than the median of the earlier "
            "trials there"
        )


def _share_from_costs(
    result: TuneResult,
    rec: TrialRecord,
    left_s: float,
    timing,
    steps_per_epoch: int,
    spent_s: float,
    budget_s: float,
) -> float:
    """``fit``'s on_plan: the trial's budget, larger when ``MIN_TRIAL_EPOCHS`` epochs do not fit its share.

    The trial's measured costs (a step, an epoch's extras, an evaluation, the finish) say what a
    trial of ``MIN_TRIAL_EPOCHS`` epochs takes here; when that is more than the share, the study
    runs as many trials as fit in ``left_s`` (what was left when this trial started, at least
    one) and this trial gets an even share of it. A trial of less than an epoch or two ranks
    learning rates by noise.
    """
    from detlab.engine.budget import hms

    per_epoch = steps_per_epoch * timing.s_iter + timing.s_epoch + timing.s_eval
    need = spent_s + MIN_TRIAL_EPOCHS * per_epoch + timing.s_finish
    result.min_trial_s = need if result.min_trial_s is None else min(result.min_trial_s, need)
    trials_left = result.planned_trials - rec.number
    fit = max(1, int(left_s // need))
    if need <= budget_s or fit >= trials_left:
        return budget_s
    result.planned_trials = rec.number + fit
    rec.budget_s = left_s / fit
    logger.info(
        f"tune: {MIN_TRIAL_EPOCHS} epochs take about {hms(need)} here (measured in trial {rec.number + 1}), more "
        f"than its share of {hms(budget_s)}: {fit} trials from here on instead of {trials_left}, "
        f"{hms(rec.budget_s)} each"
    )
    return rec.budget_s


def _train_args(folder: Path, values: dict, budget_s: float, setup: dict) -> argparse.Namespace:
    """The ``detlab train`` namespace of one trial: the study's flags and --set, then its values."""
    items = [*setup["set"], *(f"{k}={yaml_scalar(v)}" for k, v in values.items())]
    flags = {k: setup[k] for k in ("data", "val", "model", "weights")}
    time_s = f"{max(1, round(budget_s))}s"
    return argparse.Namespace(
        **flags, out=str(folder), set=items, time=time_s, config=None, resume=None, precision=None
    )


def run_trial(study, optuna, number: int, budget_s: float, result: TuneResult, setup: dict) -> TrialRecord:
    """Sample a trial, train it as ``detlab train`` into ``OUT/trial_NNN``, tell Optuna how it ended."""
    import torch

    from detlab.engine.budget import hms
    from detlab.engine.train import train_command

    trial = study.ask()
    params = {d.key: d.suggest(trial) for d in result.space}
    values = {k: v for d in result.space for k, v in d.values(params[d.key]).items()}
    folder = result.out / TRIAL_FOLDER.format(number)
    rec = TrialRecord(number, str(folder), params, {k: v for k, v in values.items() if k not in params})
    rec.budget_s = budget_s
    shown = ", ".join(f"{k} {_show(v)}" for k, v in values.items())
    logger.info(f"tune: trial {number + 1}/{result.planned_trials} → {folder}: {shown}; {hms(budget_s)}")
    wall, cpu = time.perf_counter(), _cpu_seconds()
    on_eval = partial(_report, trial, rec, result.metric, result.direction, optuna)
    on_plan = partial(_share_from_costs, result, rec, budget_s * (result.planned_trials - number))
    try:
        train_command(_train_args(folder, values, budget_s, setup), on_eval=on_eval, on_plan=on_plan)
        rec.state = "complete" if rec.value is not None else "failed"
        if rec.value is None:
            rec.reason = f"no evaluation defined {result.metric} (no validation box of the classes?)"
    except optuna.TrialPruned as e:
        rec.state, rec.reason = "pruned", str(e)
    except DetlabError as e:
        rec.state, rec.reason = "failed", str(e)
    except torch.cuda.OutOfMemoryError:
        rec.state, rec.reason = "failed", "out of GPU memory at these values; search smaller sizes or batches"
    except KeyboardInterrupt:
        rec.state, rec.reason = "interrupted", "stopped by Ctrl-C"
    rec.wall_s, rec.cpu_s = time.perf_counter() - wall, _cpu_seconds() - cpu
    states = {"complete": None, "pruned": optuna.trial.TrialState.PRUNED}
    state = states.get(rec.state, optuna.trial.TrialState.FAIL)
    study.tell(trial, rec.value if state is None else None, state=state)
    if rec.state != "complete":
        logger.info(f"tune: trial {number + 1} {rec.state}: {rec.reason}")
    if folder.is_dir():
        with writing(folder / "tune.json", "trial record"):
            (folder / "tune.json").write_text(json.dumps(asdict(rec), indent=1))
    gc.collect()  # the trial's model and loaders, before the next one is built
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rec


# --- the study ---------------------------------------------------------------------------------


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("tune needs Optuna: pip install 'detlab[tune]'") from None
    return optuna


def _setup(data, model, out: Path, weights, val, set_overrides) -> tuple[dict, dict, TrainConfig]:
    """The study's fixed keys checked once: ``(fixed --set keys, user dict, resolved config)``."""
    from detlab.models.catalogue import knobs

    fixed = parse_set(list(set_overrides))
    for key in ("time_budget", "out", "epochs"):
        if key in fixed:
            raise ConfigError(f"--set {key}: {NOT_SEARCHED[key]}; drop it")
    knobs(model)  # an unknown model name stops here, with the nearest
    flags = {k: v for k, v in dict(data=data, model=model, weights=weights, val=val).items() if v is not None}
    user = {**fixed, **flags}
    cfg = resolve({**user, "out": str(out / TRIAL_FOLDER.format(0))})
    if (out / "study.json").exists() or any(out.glob("trial_*")):
        raise ConfigError(
            f"--out {out}: already holds a tune study (study.json, trial_*); choose another --out"
        )
    return fixed, user, cfg


def _training_records(cfg: TrainConfig):
    """The training records (for the input size), and a check that trials will be scored."""
    from detlab.data.formats import read_records
    from detlab.runfolder import default_train_split, validation_spec

    data = default_train_split(cfg.data)
    records = read_records(data)
    if not cfg.val and cfg.val_fraction == 0:
        try:
            validation_spec({"data": data})
        except DataError:
            raise ConfigError(
                f"--data {cfg.data}: no val, valid or test split to score the trials on; pass --val DATA "
                "or --set val_fraction=0.2"
            ) from None
    return records


def tune(
    data: str,
    model: str,
    out: str | Path,
    time_budget: str | float,
    trials: int | None = None,
    space: list[str] | None = None,
    weights: str | None = None,
    val: str | None = None,
    seed: int = 0,
    set_overrides: list[str] = (),
    sampler=None,
    pruner=None,
) -> TuneResult:
    """Search hyper-parameters of ``model`` on ``data`` within ``time_budget``; the Python face of ``detlab tune``.

    Args:
        data, model, weights, val: as ``detlab train``'s flags (weights/val None: the config's).
        out: the study folder (``trial_NNN/``, ``trials.csv``, ``study.json``, ``best.yaml``).
        time_budget: the whole study's wall time (``10m``, ``2h``, or seconds).
        trials: number of trials (default: one per ``DEFAULT_TRIAL_S`` of the budget, 2..10).
        space: ``--space`` items (default: :func:`default_space`).
        seed: the sampler's seed.
        set_overrides: ``--set KEY=VALUE`` items every trial gets.
        sampler, pruner: Optuna's (default ``TPESampler(seed=seed)``, ``MedianPruner``).

    Returns:
        The :class:`TuneResult`; the files are written after each trial and at the end.
    """
    optuna = _optuna()
    started = time.monotonic()
    total_s = duration_seconds(time_budget)
    out = Path(out)
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials}: give 1 or more")
    fixed, user, cfg = _setup(data, model, out, weights, val, set_overrides)
    records = _training_records(cfg)
    from detlab.device import pick_device

    dims, notes = (
        (parse_space(list(space), user), [])
        if space
        else default_space(model, cfg, fixed, records, pick_device(cfg.device).type)
    )
    if not dims:
        raise ConfigError("tune: nothing left to search (--set fixes the defaults); give --space KEY=SPEC")
    n = trials or max(2, min(MAX_DEFAULT_TRIALS, int(total_s // DEFAULT_TRIAL_S)))
    direction = "minimize" if cfg.metric.startswith("val/") else "maximize"
    result = TuneResult(out, model, cfg.metric, direction, seed, total_s, n, dims)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # detlab says what happens, in its own lines
    study = optuna.create_study(
        direction=direction,
        sampler=sampler or optuna.samplers.TPESampler(seed=seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP),
    )
    if not space and all(d.default is not None for d in dims):  # the baseline every trial is measured against
        study.enqueue_trial({d.key: d.default for d in dims})
        result.baseline = True
        shown = ", ".join(f"{d.key} {_show(d.default)}" for d in dims)
        notes.append(f"trial 1 trains detlab's defaults ({shown}): the baseline the search has to beat")
    setup = {"data": data, "val": val, "model": model, "weights": weights, "set": list(set_overrides)}
    _say_plan(result, notes, time.monotonic() - started)
    interrupted = False
    try:
        number = 0
        while number < result.planned_trials:
            share = (total_s - (time.monotonic() - started)) / (result.planned_trials - number)
            if share < MIN_SHARE * total_s / n:
                logger.info(f"tune: time is up after {number} trials (--time {time_budget}); stopping")
                break
            result.trials.append(run_trial(study, optuna, number, share, result, setup))
            write_results(result)
            if result.trials[-1].state == "interrupted":
                interrupted = True
                break
            number += 1
            _fewer_if_overrun(result, total_s - (time.monotonic() - started))
            _one_more_if_time_is_left(result, total_s - (time.monotonic() - started), MIN_SHARE * total_s / n)
    finally:
        optuna.logging.set_verbosity(verbosity)
        write_results(result)
        print("\n".join(summary_lines(result)))
    if interrupted:
        raise KeyboardInterrupt
    return result


def _fewer_if_overrun(result: TuneResult, left_s: float) -> None:
    """Fewer trials when a completed one ran well past its share (its planner's floor is one epoch).

    Otherwise every later trial would overrun too and the study end late by their sum; the trials
    left are as many as fit in ``left_s`` at the last one's wall time.
    """
    last, done = result.trials[-1], len(result.trials)
    if last.state != "complete" or last.wall_s <= OVERRUN * last.budget_s:
        return
    fit = done + int(left_s // last.wall_s)
    if fit < result.planned_trials:
        logger.info(
            f"tune: trial {done} took {last.wall_s:.0f} s of its {last.budget_s:.0f} s (at least one epoch "
            f"each); {fit - done} more fit in what is left of --time, not {result.planned_trials - done}"
        )
        result.planned_trials = fit


def _one_more_if_time_is_left(result: TuneResult, left_s: float, min_share_s: float) -> None:
    """One more trial when the planned ones are done but one ended early (pruned, failed) and the
    time it left holds a trial of the cheapest measured cost (else ``min_share_s``).

    A pruned trial that had been given all the time left would otherwise end the study early.
    """
    done, last = len(result.trials), result.trials[-1]
    need = result.min_trial_s or min_share_s
    if done < result.planned_trials or last.state not in ("pruned", "failed") or left_s < need:
        return
    result.planned_trials = done + 1
    logger.info(
        f"tune: trial {done} ended early ({last.state}); its {left_s:.0f} s left go to one more trial"
    )


def _say_plan(result: TuneResult, notes: list[str], setup_s: float) -> None:
    """The split of ``--time`` in one line, what is searched, and the notes on the defaults."""
    from detlab.engine.budget import hms

    n = result.planned_trials
    searched = "; ".join(f"{d.key} {d.spec()}" for d in result.space)
    logger.info(
        f"tune: {hms(result.budget_s)} over {n} trials of {result.model}: {hms(setup_s)} setup, then "
        f"{hms((result.budget_s - setup_s) / n)} each (time a trial leaves goes to the later ones); "
        f"searching {searched}; pruning on {result.metric}"
    )
    for note in notes:
        logger.info(f"tune: {note}")


# --- what a study writes -------------------------------------------------------------------------


def _show(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ap(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def table(result: TuneResult) -> tuple[list[str], list[list[str]]]:
    """The trials table: trial, state, each searched value, AP50, AP (the metric too if another), epochs, seconds."""
    keys = [d.key for d in result.space]
    extra = [result.metric] if result.metric not in ("coco/AP50", "coco/AP") else []
    header = ["trial", "state", *keys, "AP50", "AP", *extra, "epochs", "CPU s", "wall s", "note"]
    rows = [
        [
            f"{t.number:03d}",
            t.state,
            *(_show(t.params.get(k)) for k in keys),
            _ap(t.ap50),
            _ap(t.ap),
            *([_ap(t.value)] if extra else []),
            str(t.epochs),
            f"{t.cpu_s:.0f}",
            f"{t.wall_s:.0f}",
            "defaults" if result.baseline and t.number == 0 else "",
        ]
        for t in result.trials
    ]
    return header, rows


def write_results(result: TuneResult) -> None:
    """``trials.csv``, ``study.json`` and (with a completed trial) ``best.yaml`` under ``result.out``."""
    out = result.out
    header, rows = table(result)
    with writing(out, "tune results"):
        out.mkdir(parents=True, exist_ok=True)
    with writing(out / "trials.csv", "trials table"), open(out / "trials.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [header + ["folder", "budget s", "reason"]]
            + [r + [t.folder, f"{t.budget_s:.0f}", t.reason] for r, t in zip(rows, result.trials)]
        )
    best = result.best
    facts = ("model", "metric", "direction", "seed", "budget_s", "planned_trials")
    study = {
        **{k: getattr(result, k) for k in facts},
        "space": {d.key: {**asdict(d), "spec": d.spec()} for d in result.space},
        "trials": [asdict(t) for t in result.trials],
        "best": None if best is None else {"number": best.number, "folder": best.folder, "value": best.value},
    }
    with writing(out / "study.json", "study"):
        (out / "study.json").write_text(json.dumps(study, indent=1))
    if best is not None:
        _write_best(result, best)


def _write_best(result: TuneResult, best: TrialRecord) -> None:
    """The best trial's config.yaml as ``best.yaml``, ``out`` moved to ``OUT/best`` (a fresh run folder)."""
    from detlab.runfolder import read_config

    config = read_config(best.folder)
    config["out"] = str(result.out / "best")
    path = result.out / "best.yaml"
    head = (
        f"# detlab tune: {Path(best.folder).name}, {result.metric} {best.value:.4f}, the best of "
        f"{len(result.trials)} trials in {result.out}\n"
        f"# detlab train --config {path} trains it again into {result.out / 'best'} "
        "(--out RUN for another folder, --time D for another budget)\n"
    )
    with writing(path, "best config"):
        path.write_text(head + yaml.safe_dump(config, sort_keys=False))


def _vs_defaults(result: TuneResult, best: TrialRecord) -> str:
    """`` (detlab's defaults, trial 000: 0.61)`` when the baseline trial completed."""
    first = result.trials[0] if result.trials else None
    if not result.baseline or first is None or first.value is None or first.state != "complete":
        return ""
    if best is first:
        return " (detlab's defaults: no searched trial beat them)"
    return f" (detlab's defaults, trial 000: {first.value:.4f})"


def summary_lines(result: TuneResult) -> list[str]:
    """The printed table, each trial's reason when it did not complete, and what to run next."""
    header, rows = table(result)
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    lines = [
        f"\ntune: {len(result.trials)} trials of {result.model} on {result.metric} → {result.out}/trials.csv"
    ]
    lines += [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines += [f"  trial {t.number:03d} {t.state}: {t.reason}" for t in result.trials if t.reason]
    best = result.best
    if best is None:
        lines.append("no trial completed: no best.yaml; each trial's reason is above and in trials.csv")
        return lines
    trained = [Path(t.folder) for t in result.trials if (Path(t.folder) / "checkpoints").is_dir()]
    runs = (
        f"{result.out}/trial_*"
        if len(trained) == len(list(result.out.glob("trial_*")))
        else " ".join(map(str, trained))
    )
    lines += [
        f"best: trial {best.number:03d}, {result.metric} {best.value:.4f}{_vs_defaults(result, best)} → "
        f"{result.out / 'best.yaml'}",
        f"next: detlab compare {runs} --out {result.out / 'compare'}",
        f"      detlab train --config {result.out / 'best.yaml'}",
    ]
    return lines


def tune_command(args) -> int:
    """``detlab tune``: :func:`tune` with the command line's arguments.

    Args:
        args: the ``detlab tune`` namespace (``data``, ``model``, ``out``, ``time``, ``trials``,
            ``space``, ``weights``, ``val``, ``set``, ``seed``).

    Returns:
        0 when a trial completed, 1 when none did; bad input raises a DetlabError (one line).
    """
    opts = {k: getattr(args, k) for k in ("trials", "space", "weights", "val", "seed")}
    result = tune(args.data, args.model, args.out, args.time, set_overrides=args.set, **opts)
    return 0 if result.best is not None else 1
