"""``--time`` budgets that plan the run instead of cutting it off.

A truncated run ends mid-schedule, at a high learning rate, with no final evaluation. Here the
budget chooses the length of the run instead:

1. the first few optimizer steps of the run are timed (they are real training steps, not thrown
   away), and one evaluation is timed too — the evaluation before the first step when it runs,
   otherwise a few validation images scaled by the split's size;
2. :func:`plan_time` picks the largest number of epochs whose steps, per-epoch costs (loader
   start, checkpoint), evaluations and the end of the run (best checkpoint, report) fit in
   what is left of the budget; when not even one epoch fits, a number of steps;
3. the learning-rate schedule is rebuilt for that length, so it runs to its end on time.

The plan is printed, kept in the checkpoints (``progress["time_plan"]``) and in ``RUN/plan.json``;
``--resume`` re-measures the steps and re-plans what is left with what is left of the budget
(time spent counts across sessions, up to the last checkpoint). Under torchrun every rank
measures, and rank 0's plan is broadcast.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass

from detlab.config import duration_seconds
from detlab.engine import distributed as ddp
from detlab.errors import writing

MEASURE_STEPS = 4  # timed steps; the first, which starts the loader's workers, is also the epoch-start cost
EVAL_SAMPLE_BATCHES = 2  # validation batches timed when there was no evaluation before the first step
# The evaluation before training is skipped when it and the final one would take more of the budget.
EVAL_BEFORE_SHARE = 0.25
MIN_LAST_EPOCH = 0.1  # the shortest shortened last epoch worth its evaluation (share of an epoch)
# The end of a run: best.pt loaded back, then the report, which loads the model and the validation
# data again and predicts NUM_SAMPLES images (costed at the measured evaluation's per-image time).
# It runs after the last evaluation and cannot be timed before it: its plots and HTML get this
# allowance, in seconds.
REPORT_FIXED_S = 6.0


@dataclass
class Timing:
    """What one run's parts cost here, in seconds."""

    s_iter: float  # one optimizer step (accumulate batches, data waiting included)
    s_epoch: float  # per epoch beyond its steps: the loader's start and the checkpoint write
    s_eval: float  # one evaluation of the validation split (0 without one)
    s_finish: float = 0.0  # the end of the run: best checkpoint loaded back, report written


@dataclass
class TimePlan:
    """A plan for the rest of a run; all times in seconds, ``spent_s`` as of the plan."""

    budget_s: float
    spent_s: float
    timing: Timing
    epochs: int  # the run's last epoch (absolute)
    total_iters: int  # the run's last optimizer step (absolute)
    evals: int  # evaluations still to come
    expected_s: float  # spent_s + the planned rest
    steps_only: bool = False  # not one more whole epoch fits: a number of steps instead
    from_iter: int = 0  # the step the plan starts from
    fits: bool = True  # False: even the smallest plan (one step and its evaluation) overruns
    last_epoch_steps: int = 0  # steps of the last epoch, when it is shorter than a whole one

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TimePlan:
        return cls(**{**d, "timing": Timing(**d["timing"])})


def evals_in(first: int, last: int, eval_every: int, has_val: bool) -> int:
    """Evaluations after epochs ``first+1 .. last``: every ``eval_every``-th and always the last."""
    if not has_val or last <= first:
        return 0
    periodic = 0 if eval_every <= 0 else last // eval_every - first // eval_every
    return periodic + (0 if eval_every > 0 and last % eval_every == 0 else 1)


def plan_time(
    budget_s: float,
    spent_s: float,
    timing: Timing,
    steps_per_epoch: int,
    epoch: int,
    step_in_epoch: int,
    iteration: int,
    eval_every: int,
    has_val: bool,
    max_epochs: int = 100_000,
) -> TimePlan:
    """The longest run that ends within ``budget_s``, from where a run stands now.

    The rest of a run to epoch ``E`` costs ``(E - epoch)·steps_per_epoch - step_in_epoch`` steps,
    ``E - epoch`` epoch starts, its evaluations (:func:`evals_in`) and the finish; the cost grows
    with ``E``, so the largest ``E`` that fits is found by a walk. What those whole epochs leave
    goes to one more, shortened to the steps that fit beside its evaluation (when that is at least
    ``MIN_LAST_EPOCH`` of an epoch), so a run ends on time rather than up to an epoch and an
    evaluation early; the schedule is planned over all the steps. When ``E = epoch + 1`` does not
    fit, the current epoch is cut to the steps that fit (at least one).

    Args:
        budget_s: the whole budget, every session together.
        spent_s: seconds already used (this and earlier sessions).
        timing: measured costs.
        steps_per_epoch: optimizer steps in a whole epoch.
        epoch, step_in_epoch, iteration: where the run stands (epochs done, steps into the next).
        eval_every, has_val: the evaluation cadence.
        max_epochs: an upper bound on the walk.

    Returns:
        The plan.
    """
    left = budget_s - spent_s - timing.s_finish

    def rest(last: int, cut: int = 0) -> float:  # ``cut``: steps the last epoch leaves out
        steps = (last - epoch) * steps_per_epoch - step_in_epoch - cut
        evals = evals_in(epoch, last, eval_every, has_val)
        return steps * timing.s_iter + (last - epoch) * timing.s_epoch + evals * timing.s_eval

    last = epoch
    while last < max_epochs and rest(last + 1) <= left:
        last += 1
    if last > epoch:
        # What whole epochs leave goes to a shortened last one (its steps and its evaluation), so the
        # run ends on time rather than up to an epoch and an evaluation early.
        cut = 0
        if last < max_epochs:
            over = rest(last + 1) - left
            cut = math.ceil(over / max(timing.s_iter, 1e-9))
            cut = cut if cut <= steps_per_epoch * (1 - MIN_LAST_EPOCH) else 0
            last += cut > 0
        return TimePlan(
            budget_s,
            spent_s,
            timing,
            last,
            last * steps_per_epoch - cut,
            evals_in(epoch, last, eval_every, has_val),
            spent_s + rest(last, cut) + timing.s_finish,
            from_iter=iteration,
            last_epoch_steps=steps_per_epoch - cut if cut else 0,
        )
    fixed = timing.s_epoch + (timing.s_eval if has_val else 0.0)
    room = steps_per_epoch - step_in_epoch
    steps = int(max(0.0, left - fixed) // max(timing.s_iter, 1e-9))
    fits = steps >= 1
    steps = min(max(steps, 1), room)
    cost = steps * timing.s_iter + fixed + timing.s_finish
    return TimePlan(
        budget_s,
        spent_s,
        timing,
        epoch + 1,
        iteration + steps,
        int(has_val),
        spent_s + cost,
        steps_only=steps < room,
        fits=fits,
        from_iter=iteration,
    )


def plan_lines(plan: TimePlan, steps_per_epoch: int, resumed: bool) -> list[str]:
    """What the plan says on screen: measured costs, the length chosen, the expected end."""
    t = plan.timing
    more = plan.total_iters - plan.from_iter
    length = (
        f"{more} more step{'s' if more != 1 else ''} of epoch {plan.epochs}, to step {plan.total_iters} "
        f"({steps_per_epoch} make a whole epoch)"
        if plan.steps_only
        else f"{plan.epochs - 1} epochs and {plan.last_epoch_steps} of the {steps_per_epoch} steps of epoch "
        f"{plan.epochs} ({plan.total_iters} steps)"
        if plan.last_epoch_steps
        else f"{plan.epochs} epochs ({plan.total_iters} steps)"
    )
    end = time.strftime("%H:%M:%S", time.localtime(time.time() + plan.expected_s - plan.spent_s))
    lines = [
        f"time budget {hms(plan.budget_s)}"
        + (f", {hms(plan.budget_s - plan.spent_s)} left after earlier sessions" if resumed else "")
        + f": measured {t.s_iter:.2f} s/step, {t.s_eval:.1f} s/evaluation, {t.s_epoch:.1f} s/epoch start "
        f"and checkpoint, {t.s_finish:.1f} s to finish; {hms(plan.spent_s)} spent so far",
        f"  plan: {length}, {plan.evals} evaluations, learning-rate schedule ending at step "
        f"{plan.total_iters}; expected to end at {end} after {hms(plan.expected_s)} in all",
    ]
    if not plan.fits:
        lines.append(
            "  warning: the budget does not cover even one step and its evaluation; running the smallest "
            "plan, which will overrun — give a larger --time"
        )
    return lines


def measure(trainer) -> Timing:
    """Time the next few optimizer steps of ``trainer`` (run for real), a checkpoint write, and one evaluation.

    Args:
        trainer: a started :class:`detlab.engine.train.Trainer`; its ``_train_epoch(limit=…)`` runs
            and records ``step_seconds``; ``eval_seconds`` holds the last full evaluation's time.

    Returns:
        This rank's :class:`Timing`.
    """
    room = min(trainer.steps_per_epoch - trainer.step_in_epoch, trainer.total_iters - trainer.iteration)
    saved = trainer.progress.get("time_plan")
    if room <= 0:  # nothing left to time in this epoch: the last session's costs stand
        return TimePlan.from_dict(saved).timing if saved else Timing(0.0, 0.0, _eval_seconds(trainer))
    trainer._train_epoch(limit=min(MEASURE_STEPS, room))
    steps = trainer.step_seconds
    s_iter = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
    t0 = time.perf_counter()
    trainer._save()  # a real mid-epoch checkpoint: the run can be resumed from here
    s_save = time.perf_counter() - t0
    s_eval = _eval_seconds(trainer)
    per_image = s_eval / max(1, len(trainer.val_ds)) if trainer.val_ds is not None else 0.0
    report = REPORT_FIXED_S + per_image * _num_samples() if trainer.cfg.report else 0.0
    return Timing(
        s_iter=s_iter,
        s_epoch=max(0.0, steps[0] - s_iter) + s_save,
        s_eval=s_eval,
        s_finish=2 * s_save + report,
    )


def _num_samples() -> int:
    from detlab.report.html import NUM_SAMPLES

    return int(NUM_SAMPLES)


def _eval_seconds(trainer) -> float:
    """One evaluation's time: the one before the first step, else a few images scaled to the split."""
    if trainer.val_ds is None:
        return 0.0
    if trainer.eval_seconds is not None:
        return trainer.eval_seconds
    import dataclasses

    from detlab.data.dataset import DetectionDataset

    val, n = trainer.val_ds, len(trainer.val_ds)
    sample = EVAL_SAMPLE_BATCHES * trainer.cfg.eval_batch_size
    if isinstance(val, DetectionDataset) and n > sample:
        val = DetectionDataset(
            dataclasses.replace(val.records, images=val.records.images[:sample]), val.transforms
        )
    model = trainer.eval_model
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    ddp.evaluate_sharded(
        model,
        val,
        trainer.cfg.protocols,
        trainer.cfg.eval_batch_size,
        trainer.ctx,
        with_loss=True,
        num_workers=0,
    )
    model.train(was_training)
    return (time.perf_counter() - t0) * n / len(val)


def skip_eval_before(trainer) -> bool:
    """Whether a budgeted run with ``eval_before=auto`` should skip the evaluation before training:
    when that one and the final one would take more than ``EVAL_BEFORE_SHARE`` of the budget (a few
    validation batches are timed to know, on every rank; rank 0 decides)."""
    if trainer.cfg.time_budget is None or trainer.val_ds is None:
        return False
    trainer.eval_seconds = _eval_seconds(trainer)
    budget_s = duration_seconds(trainer.cfg.time_budget)
    skip = ddp.broadcast_object(2 * trainer.eval_seconds > EVAL_BEFORE_SHARE * budget_s)
    if skip:
        trainer.log.note(
            f"time budget {hms(budget_s)}: one evaluation takes about {trainer.eval_seconds:.0f} s here, so the "
            "evaluation before training is skipped to leave the budget to training (--set eval_before=true "
            "keeps it)"
        )
    return skip


def make_plan(trainer, measure_fn, resumed: bool) -> TimePlan:
    """Measure (every rank), plan on rank 0, broadcast; return the plan every rank follows."""
    timing = measure_fn(trainer)
    on_plan = getattr(trainer, "on_plan", None)
    plan = None
    if trainer.ctx.is_main:
        budget_s = duration_seconds(trainer.cfg.time_budget)
        if on_plan is not None:  # detlab tune: its trials re-planned from this measurement
            budget_s = on_plan(timing, trainer.steps_per_epoch, trainer.spent(), budget_s)
        plan = plan_time(
            budget_s,
            trainer.spent(),
            timing,
            trainer.steps_per_epoch,
            trainer.epoch,
            trainer.step_in_epoch,
            trainer.iteration,
            trainer.cfg.eval_every,
            trainer.val_ds is not None,
        )
        for line in plan_lines(plan, trainer.steps_per_epoch, resumed):
            trainer.log.note(line)
    plan = TimePlan.from_dict(ddp.broadcast_object(plan.to_dict() if plan else None))
    if on_plan is not None:
        trainer.cfg.time_budget = plan.budget_s  # config.yaml says the budget the run planned with
    return plan


def write_plan(out, plan: TimePlan, took_s: float | None = None) -> None:
    """``RUN/plan.json``: the plan, and once the run ended what it took."""
    path = out / "plan.json"
    with writing(path, "time plan"):
        path.write_text(json.dumps({**plan.to_dict(), "took_s": took_s}, indent=1))


def finish_line(plan: TimePlan, took_s: float) -> str:
    """``planned X, took Y`` for the end of a budgeted run."""
    off = 100 * (took_s - plan.budget_s) / plan.budget_s if plan.budget_s else 0.0
    return (
        f"time budget {hms(plan.budget_s)}: planned {hms(plan.expected_s)}, took {hms(took_s)} "
        f"({off:+.0f} % of the budget)"
    )


def hms(seconds: float) -> str:
    """``1h02m03s`` / ``2m05s`` / ``42s``."""
    s = int(round(max(0.0, seconds)))
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
