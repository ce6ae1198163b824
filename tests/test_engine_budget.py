"""``--time`` budgets: the plan's arithmetic, a run that follows it to the end of its schedule, resume with
what is left of the budget, and ``--resume --set epochs=N`` re-planning the rest of the schedule.

No test here is timed: the clock is a fake that the patched step and evaluation advance by fixed costs,
and the measurement is injected, so every figure below follows from those costs alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ShapesDataset, TinyFCOS

from detlab.config import duration_seconds, effective_lr, resolve
from detlab.engine import checkpoint as ckpt_io
from detlab.engine.budget import Timing, evals_in, plan_time
from detlab.engine.distributed import DistContext
from detlab.engine.schedule import WarmupSchedule, build_scheduler, stretch_schedule
from detlab.engine.train import Trainer, fit
from detlab.errors import ConfigError

TINY = dict(
    batch_size=2,
    num_workers=0,
    quiet=False,
    plots=False,
    report=False,
    log_every=2,
    warmup_iters=2,
    epochs=3,
    base_lr=0.01,
    base_batch=2,
    eval_batch_size=4,
    device="cpu",
    protocols=["coco"],
)
STEPS_PER_EPOCH = 4  # 8 images, batch 2


def simulated_cost(
    last: int, epoch: int, step_in_epoch: int, t: Timing, spe: int, every: int, cut: int = 0
) -> float:
    """The rest of a run to epoch ``last`` (whose last ``cut`` steps are left out), added up epoch by
    epoch as the loop runs it."""
    cost = t.s_finish
    for e in range(epoch + 1, last + 1):
        steps = spe - (step_in_epoch if e == epoch + 1 else 0) - (cut if e == last else 0)
        cost += steps * t.s_iter + t.s_epoch
        if (every > 0 and e % every == 0) or e == last:
            cost += t.s_eval
    return cost


@pytest.mark.parametrize("spent, epoch, step_in_epoch", [(0.0, 0, 0), (40.0, 2, 3), (13.0, 1, 0)])
@pytest.mark.parametrize("every", [1, 2, 0])
@pytest.mark.parametrize("budget", [100.0, 93.0, 109.0])
def test_plan_takes_the_most_steps_that_fit_in_whole_epochs_and_a_shortened_last_one(
    spent, epoch, step_in_epoch, every, budget
):
    t = Timing(s_iter=1.0, s_epoch=0.5, s_eval=3.0, s_finish=2.0)
    plan = plan_time(budget, spent, t, 10, epoch, step_in_epoch, epoch * 10 + step_in_epoch, every, True)
    left = budget - spent
    # every (last epoch, steps it leaves out) that fits, a last epoch of at least 1 of its 10 steps
    fitting = [
        (e * 10 - cut, e, cut)
        for e in range(epoch + 2, 40)
        for cut in range(0, 10)
        if simulated_cost(e, epoch, step_in_epoch, t, 10, every, cut) <= left
    ]
    steps, last, cut = max(fitting)
    assert (plan.total_iters, plan.epochs, plan.last_epoch_steps) == (steps, last, 10 - cut if cut else 0)
    assert not plan.steps_only and plan.expected_s <= budget
    assert plan.expected_s == pytest.approx(
        spent + simulated_cost(last, epoch, step_in_epoch, t, 10, every, cut)
    )
    assert plan.evals == sum(1 for e in range(epoch + 1, last + 1) if (every and e % every == 0) or e == last)
    one_more = (last, cut - 1) if cut else (last + 1, 9)  # one step more: not within the budget
    assert simulated_cost(*one_more[:1], epoch, step_in_epoch, t, 10, every, one_more[1]) > left


def test_less_than_an_epoch_plans_steps_and_says_when_nothing_fits():
    t = Timing(s_iter=1.0, s_epoch=0.5, s_eval=3.0, s_finish=2.0)
    plan = plan_time(10.0, 0.0, t, 10, 0, 0, 0, 1, True)  # one epoch would take 15.5 s
    assert (plan.epochs, plan.total_iters, plan.steps_only, plan.fits) == (
        1,
        4,
        True,
        True,
    )  # 4 + 0.5 + 3 + 2
    assert plan.expected_s == pytest.approx(9.5)
    resumed = plan_time(10.0, 0.0, t, 10, 0, 8, 8, 1, True)  # only 2 steps are left in the epoch
    assert (resumed.total_iters, resumed.steps_only) == (10, False)
    tiny = plan_time(3.0, 0.0, t, 10, 0, 0, 0, 1, True)
    assert (tiny.total_iters, tiny.fits) == (1, False)
    no_val = plan_time(10.0, 0.0, t, 10, 0, 0, 0, 1, False)
    assert no_val.total_iters == 7 and no_val.evals == 0


def test_evals_in_counts_the_periodic_and_the_last():
    assert evals_in(0, 6, 2, True) == 3 and evals_in(0, 7, 2, True) == 4 and evals_in(3, 7, 2, True) == 3
    assert evals_in(0, 5, 0, True) == 1 and evals_in(0, 5, 1, False) == 0 and evals_in(4, 4, 1, True) == 0


def test_durations():
    assert [duration_seconds(v) for v in ("90s", "10m", "2h", "1h30m", "600", 45)] == [
        90,
        600,
        7200,
        5400,
        600,
        45,
    ]
    with pytest.raises(ConfigError, match="--time 90s"):
        duration_seconds("ten minutes")
    with pytest.raises(ConfigError, match="time_budget"):
        resolve({"time_budget": "-5m"}, family="fcos")


# --- the schedule, stretched ------------------------------------------------------------


def test_stretched_step_schedule_replays_its_rest_and_round_trips():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = resolve({**TINY, "out": "x", "milestones": [0.5, 0.75], "warmup_iters": 0}, family="fcos")
    sched = build_scheduler(opt, cfg, 40)  # drops at 20 and 30
    assert stretch_schedule(sched, 10, 70)  # 10..40 replayed over 10..70: drops at 10+10·2 = 30 and 50
    fn = sched.lr_lambdas[0]
    assert [fn(i) for i in (29, 30, 49, 50, 70, 90)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01, 0.01])
    assert fn(10) == 1.0 and fn.planned_total == 70
    assert stretch_schedule(sched, 50, 60)  # compressed: 50..70 over 50..60; final rate from 50 on
    assert fn(55) == pytest.approx(0.01) and fn.planned_total == 60
    assert not stretch_schedule(sched, 60, 80)  # ended: nothing left to stretch
    other = build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), cfg, 40)
    other.load_state_dict(sched.state_dict())
    assert [other.lr_lambdas[0](i) for i in range(0, 70, 5)] == [fn(i) for i in range(0, 70, 5)]


def test_stretched_cosine_is_the_cosine_of_the_rest():
    s = WarmupSchedule(100, 0, 1.0, "cosine", [], 0.1, 0.0)
    ref = [s(i) for i in range(101)]
    s.remaps.append([40, 100, 160])
    assert s(40) == ref[40] and s(160) == pytest.approx(0.0)
    assert s(100) == pytest.approx(ref[70])  # 40 + 60·(60/120)


# --- runs that follow the plan -----------------------------------------------------------


class FakeTime:
    """A clock that only moves when a patched step or evaluation spends its fixed cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def spend(monkeypatch, clock: FakeTime, s_iter: float, s_eval: float, stop_at: int | None = None):
    """Make each optimizer step cost ``s_iter`` and each evaluation ``s_eval`` on ``clock``; stop (as a
    kill would) when step ``stop_at + 1`` starts."""
    step, evaluate = Trainer._step, Trainer._evaluate

    def timed_step(self, group):
        if stop_at is not None and self.iteration == stop_at:
            raise KeyboardInterrupt
        clock.now += s_iter
        return step(self, group)

    def timed_eval(self, tag):
        clock.now += s_eval
        return evaluate(self, tag)

    monkeypatch.setattr(Trainer, "_step", timed_step)
    monkeypatch.setattr(Trainer, "_evaluate", timed_eval)


def budget_cfg(tmp_path, **over):
    return resolve({**TINY, **over, "out": str(tmp_path / "run")}, family="fcos")


def final_lr(cfg) -> float:
    return effective_lr(cfg) * cfg.gamma ** len(cfg.milestones)


def test_budgeted_run_fits_its_epochs_and_ends_its_schedule(tmp_path, monkeypatch, capsys):
    clock = FakeTime()
    spend(monkeypatch, clock, s_iter=1.0, s_eval=2.0)
    cfg = budget_cfg(tmp_path, time_budget="13s")
    timing = Timing(s_iter=1.0, s_epoch=0.0, s_eval=2.0)
    torch.manual_seed(0)
    fit(TinyFCOS(), ShapesDataset(4), ShapesDataset(1, seed=1), cfg, clock=clock, measure=lambda t: timing)
    out = tmp_path / "run"
    # Each epoch: 2 steps + 1 evaluation = 4 s; 3 epochs = 12 s fit in 13 s, 4 would not.
    ckpt = ckpt_io.load_checkpoint(out)
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["config"]["epochs"]) == (3, 6, 3)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(final_lr(cfg))
    plan = json.loads((out / "plan.json").read_text())
    assert (
        plan["epochs"] == 3
        and plan["expected_s"] == pytest.approx(12.0)
        and plan["took_s"] == pytest.approx(12.0)
    )
    err = capsys.readouterr().err
    assert "plan: 3 epochs (6 steps)" in err and "planned 12s, took 12s" in err


def test_on_plan_sets_the_budget_the_epochs_are_planned_with(tmp_path, monkeypatch):
    clock = FakeTime()
    spend(monkeypatch, clock, s_iter=1.0, s_eval=2.0)
    cfg = budget_cfg(tmp_path, time_budget="9s")
    timing = Timing(s_iter=1.0, s_epoch=0.0, s_eval=2.0)
    seen = []

    def on_plan(t, steps_per_epoch, spent_s, budget_s):
        seen.append((t, steps_per_epoch, spent_s, budget_s))
        return 17.0  # 4 epochs of 4 s fit, where 9 s held 2

    torch.manual_seed(0)
    fit(
        TinyFCOS(),
        ShapesDataset(4),
        ShapesDataset(1, seed=1),
        cfg,
        clock=clock,
        measure=lambda t: timing,
        on_plan=on_plan,
    )
    assert seen == [(timing, 2, 0.0, 9.0)]
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run")
    assert (ckpt["epoch"], ckpt["config"]["epochs"], ckpt["config"]["time_budget"]) == (4, 4, 17.0)
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["budget_s"] == 17.0


def test_resume_plans_the_rest_with_what_is_left_of_the_budget(tmp_path, monkeypatch, capsys):
    clock = FakeTime()
    cfg = budget_cfg(tmp_path, time_budget=20, log_every=1)
    with monkeypatch.context() as m:
        spend(m, clock, s_iter=1.0, s_eval=0.0, stop_at=2)  # killed in epoch 2; last.pt at epoch 1
        with pytest.raises(KeyboardInterrupt):
            fit(TinyFCOS(), ShapesDataset(4), None, cfg, clock=clock, measure=lambda t: Timing(1.0, 0.0, 0.0))
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run")
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["config"]["epochs"]) == (
        1,
        2,
        10,
    )  # 10 epochs of 2 s planned
    assert ckpt["progress"]["time_spent_s"] == pytest.approx(2.0)
    # The new session's machine is 4x slower per step: 18 s left buy 2 more epochs of 8 s.
    clock = FakeTime()
    capsys.readouterr()
    spend(monkeypatch, clock, s_iter=4.0, s_eval=0.0)
    fit(
        TinyFCOS(),
        ShapesDataset(4),
        None,
        resolve(ckpt["config"], family="fcos"),
        resume=ckpt,
        clock=clock,
        measure=lambda t: Timing(4.0, 0.0, 0.0),
    )
    last = ckpt_io.load_checkpoint(tmp_path / "run")
    assert (last["epoch"], last["iteration"], last["config"]["epochs"]) == (3, 6, 3)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(final_lr(cfg))
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    lr = {x["iter"]: x["lr"] for x in lines if x["type"] == "train"}
    # Steps 2..20 of the first plan (drops at round(0.67·20) = 13 and 18) now run over 2..6, step
    # 2 + k replaying 2 + 4.5·k: 11 at step 4, 15.5 at step 5, 20 at step 6.
    assert lr[4] == pytest.approx(effective_lr(cfg)) and lr[5] == pytest.approx(0.1 * effective_lr(cfg))
    err = capsys.readouterr().err
    assert "18s left after earlier sessions" in err and "plan: 3 epochs (6 steps)" in err
    assert "planned 18s, took 18s" in err  # 2 s before + 4 steps of 4 s


def test_resume_with_more_epochs_stretches_the_rest_of_the_schedule(tmp_path, monkeypatch, capsys):
    cfg = budget_cfg(tmp_path, epochs=2)
    with monkeypatch.context() as m:
        spend(m, FakeTime(), 0.0, 0.0, stop_at=2)
        with pytest.raises(KeyboardInterrupt):
            fit(TinyFCOS(), ShapesDataset(4), None, cfg)
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run")
    ctx = DistContext()
    trainer = Trainer(TinyFCOS(), ShapesDataset(4), None, resolve({**ckpt["config"], "epochs": 4}), ctx)
    trainer._start(ckpt)
    trainer._plan_length(ckpt)
    assert (
        "resume: epochs 2 -> 4: the rest of the step learning-rate schedule (steps 2-4) is re-planned, "
        "stretched over steps 2-8, so it still ends at its final rate at epoch 4" in capsys.readouterr().err
    )
    # The first plan dropped at round(0.67·4) = 3 and round(0.89·4) = 4; 2..4 over 2..8 puts them at 5 and 8.
    fn = trainer.scheduler.lr_lambdas[0]
    assert [fn(i) for i in (2, 4, 5, 7, 8)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    trainer.log.close()
    # Resumed again after it ended: nothing is left to stretch, and it says so.
    trainer._save()
    ended = ckpt_io.load_checkpoint(tmp_path / "run")
    ended["iteration"], ended["epoch"] = 8, 4
    again = Trainer(TinyFCOS(), ShapesDataset(4), None, resolve({**ended["config"], "epochs": 6}), ctx)
    again._start(ended)
    again._plan_length(ended)
    assert (
        "the step learning-rate schedule had already ended (step 8), so epochs 5-6 run at its final rate"
        in (capsys.readouterr().err)
    )
    again.log.close()


def test_real_measurement_trains_the_timed_steps(tmp_path, monkeypatch):
    """The default measurement runs real steps (counted in the run) and writes a checkpoint; with a budget
    this small the plan is one more step, and the schedule still ends at its final rate."""
    from detlab.engine import budget

    monkeypatch.setattr(budget, "MEASURE_STEPS", 2)
    cfg = budget_cfg(tmp_path, time_budget=0.001, epochs=12)  # less than the two timed steps took
    torch.manual_seed(0)
    fit(TinyFCOS(), ShapesDataset(6), ShapesDataset(1, seed=1), cfg)
    plan = json.loads((tmp_path / "run/plan.json").read_text())
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run")
    assert (ckpt["iteration"], ckpt["epoch"], plan["total_iters"], plan["fits"]) == (3, 1, 3, False)
    assert plan["timing"]["s_iter"] > 0 and plan["timing"]["s_eval"] > 0 and plan["took_s"] > 0
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(final_lr(cfg))


# --- under torchrun: rank 0's plan for every rank ------------------------------------------


def _budget_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from detlab.engine import distributed as ddp

    ctx = ddp.setup("cpu")
    try:
        cfg = resolve({**TINY, "quiet": True, "time_budget": 9, "out": f"{out}/run"}, family="fcos")
        # Rank 1 alone would plan one step (5 s each); rank 0 measures 1 s/step and plans 4 epochs of 2 steps
        # and the first step of a fifth: 9 steps in the 9 s.
        timing = Timing(s_iter=1.0 if rank == 0 else 5.0, s_epoch=0.0, s_eval=0.0)
        torch.manual_seed(0)
        fit(TinyFCOS(), ShapesDataset(8), None, cfg, ctx=ctx, clock=lambda: 0.0, measure=lambda t: timing)
        ckpt = ckpt_io.load_checkpoint(f"{out}/run")
        (Path(out) / f"rank{rank}.json").write_text(
            json.dumps([cfg.epochs, ckpt["iteration"], ckpt["epoch"]])
        )
    finally:
        ddp.cleanup()


def test_under_torchrun_every_rank_follows_rank_0s_plan(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_budget_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert got == [[5, 9, 5], [5, 9, 5]]  # 8 images / (2 ranks · 2 per batch) = 2 steps per epoch
