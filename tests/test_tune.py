"""detlab tune: every trial a real `detlab train` run folder, pruned and failed trials recorded,
best.yaml the best trial's config, `detlab compare` on trials, one-line errors for a bad --space.

One small study (a catalogue FCOS at 64-96 px on 8 synthetic images, three trials) serves the
tests that need trials; a scripted sampler and pruner fix which trial does what, so nothing
depends on the machine's speed.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from detlab.config import load_yaml, resolve
from detlab.runfolder import read_config

FAST = [
    "model_kwargs.max_size=96",
    "model_kwargs.fpn_channels=64",  # 32 would leave GroupNorm one value per group at 1x1, batch 1
    "warmup_iters=0",
    "num_workers=0",
    "report=false",
    "plots=false",
    "quiet=true",
]
SPACE = ["base_lr=0.001:1e9:log", "model_kwargs.min_size=64,96"]
# trial 0 trains; trial 1's learning rate makes the loss non-finite (a DetlabError); trial 2 is pruned.
SCRIPT = [
    {"base_lr": 0.005, "model_kwargs.min_size": 64},
    {"base_lr": 1e9, "model_kwargs.min_size": 64},
    {"base_lr": 0.004, "model_kwargs.min_size": 96},
]


class ScriptedSampler(optuna.samplers.BaseSampler):
    """Trial N takes ``SCRIPT[N]``."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return SCRIPT[trial.number][param_name]


class PruneTrial2(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number == 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from detlab.data.synthetic import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("tune_data"), num_train=8, num_val=4, size=64, seed=0)


@pytest.fixture(scope="module")
def study(data, tmp_path_factory):
    """The three-trial study: ``(TuneResult, OUT)``; every trial runs whatever the machine's speed."""
    from detlab import tune as tune_mod

    mp = pytest.MonkeyPatch()
    mp.setattr(tune_mod, "MIN_SHARE", 0.0)
    mp.setattr(tune_mod, "MIN_TRIAL_EPOCHS", 0)  # three trials of a few seconds, whatever they cost here
    mp.setattr(tune_mod, "OVERRUN", math.inf)  # and however far past its share a loaded machine runs one
    mp.setattr(tune_mod, "_one_more_if_time_is_left", lambda *a: None)  # the script is three trials
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny images: a second thread only spins on busy shared cores
    out = tmp_path_factory.mktemp("tune") / "study"
    try:
        result = tune_mod.tune(
            str(data),
            "fcos_r18_fpn",
            out,
            "18s",
            trials=3,
            space=SPACE,
            set_overrides=FAST,
            sampler=ScriptedSampler(),
            pruner=PruneTrial2(),
        )
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return result, out


def test_trials_are_run_folders_holding_their_values(study):
    result, out = study
    assert [t.state for t in result.trials] == ["complete", "failed", "pruned"]
    for t, values in zip(result.trials, SCRIPT):
        cfg = read_config(out / f"trial_{t.number:03d}")
        assert cfg["out"] == str(out / f"trial_{t.number:03d}") and cfg["model"] == "fcos_r18_fpn"
        assert cfg["base_lr"] == pytest.approx(values["base_lr"])
        assert cfg["model_kwargs"]["min_size"] == values["model_kwargs.min_size"]
        assert cfg["model_kwargs"]["max_size"] == 96  # the study's --set reaches every trial
        assert cfg["time_budget"] is not None  # each trial planned its epochs to its share
        assert t.params == values and t.wall_s > 0 and t.cpu_s > 0
    for n in (0, 2):
        assert (out / f"trial_{n:03d}" / "checkpoints" / "last.pt").is_file()
        assert (out / f"trial_{n:03d}" / "metrics.jsonl").is_file()
    assert result.trials[0].value is not None and result.trials[0].epochs >= 1
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["complete", "failed", "pruned"]
    assert [r["model_kwargs.min_size"] for r in rows] == ["64", "64", "96"]
    saved = json.loads((out / "study.json").read_text())
    assert saved["space"]["base_lr"]["log"] is True and saved["space"]["model_kwargs.min_size"][
        "choices"
    ] == [
        64,
        96,
    ]
    assert [t["state"] for t in saved["trials"]] == ["complete", "failed", "pruned"]
    assert saved["best"]["number"] == 0 and saved["budget_s"] == 18


def test_a_failed_trial_is_recorded_with_its_reason_and_the_study_goes_on(study):
    result, out = study
    failed = result.trials[1]
    assert failed.state == "failed" and "loss became non-finite" in failed.reason
    assert "\n" not in failed.reason
    assert json.loads((out / "trial_001" / "tune.json").read_text())["state"] == "failed"
    assert result.trials[2].state == "pruned"  # the trial after it ran


def test_a_pruned_trial_keeps_its_folder_and_is_marked(study):
    result, out = study
    pruned = result.trials[2]
    assert pruned.reason.startswith("pruned after epoch 1: coco/AP50")
    assert pruned.epochs == 1 and len(pruned.reports) == 1
    assert json.loads((out / "trial_002" / "tune.json").read_text())["state"] == "pruned"
    assert (out / "trial_002" / "eval" / "last.json").is_file()


def test_best_yaml_is_the_best_trials_config_and_loads(study):
    result, out = study
    assert result.best is result.trials[0]
    best = load_yaml(out / "best.yaml")
    trial = read_config(out / "trial_000")
    assert best["out"] == str(out / "best")  # a fresh folder: `detlab train --config best.yaml` runs as is
    assert {k: v for k, v in best.items() if k != "out"} == {k: v for k, v in trial.items() if k != "out"}
    assert resolve(best).to_dict() == {**resolve(trial).to_dict(), "out": str(out / "best")}


def test_compare_runs_on_two_trials(study, monkeypatch, capsys):
    from detlab.cli import main
    from detlab.report import compare

    _, out = study
    monkeypatch.setattr(compare, "GALLERY_POOL", 2)
    monkeypatch.setattr(compare, "LATENCY_IMAGES", 1)
    monkeypatch.setattr(compare, "LATENCY_WARMUP", 0)
    runs = [str(out / "trial_000"), str(out / "trial_002")]
    assert main(["compare", *runs, "--out", str(out / "compare")]) == 0
    with open(out / "compare" / "compare.csv", newline="") as f:
        names = [r["run"] for r in csv.DictReader(f)]
    assert names == ["trial_000", "trial_002"]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("warmup_iter=1:5", "unknown config key 'warmup_iter'; did you mean 'warmup_iters'?"),
        ("base_lr", "expected KEY=LOW:HIGH or KEY=A,B,C"),
        ("base_lr=0.1:0.01", "LOW must be a number below HIGH"),
        ("base_lr=0:1:log", "a log range needs LOW > 0"),
        ("momentum=0.5:1.5", "config key 'momentum': 1.5 is not a number in [0, 1)"),
        ("model_kwargs.min_size=64.5:96", "takes integers"),
        ("model_kwargs.min_sise=64,96", "not a knob of fcos_r18_fpn"),
        ("epochs=1:5", "epochs are planned from each trial's share of --time"),
        ("optimizer=sgd", "one value is no search; fix it with --set optimizer=sgd"),
        ("optimizer=sgd,sgd", "give two or more different choices"),
        ("warmup_iters=1:5", "also fixed by --set"),
    ],
)
def test_a_bad_space_is_one_line(data, tmp_path, capsys, spec, words):
    from detlab.cli import main

    argv = ["tune", "--data", str(data), "--model", "fcos_r18_fpn", "--out", str(tmp_path / "t")]
    code = main([*argv, "--time", "1m", "--space", spec, "--set", "warmup_iters=0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"detlab: --space {spec!r}: ")
    assert words in err
    assert not (tmp_path / "t").exists()  # stopped before anything trained


def test_without_optuna_it_says_how_to_install_it(data, tmp_path, monkeypatch, capsys):
    from detlab.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    argv = [
        "tune",
        "--data",
        str(data),
        "--model",
        "fcos_r18_fpn",
        "--out",
        str(tmp_path / "t"),
        "--time",
        "1m",
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == "detlab: tune needs Optuna: pip install 'detlab[tune]'\n"


def test_default_space_is_the_recipe_lr_and_sizes_around_the_data_aware_one(data):
    from detlab.data.formats import read_records
    from detlab.engine.plan import plan_input_size
    from detlab.tune import default_space

    records = read_records(f"{data}:train")
    cfg = resolve({"data": str(data), "model": "fcos_r18_fpn", "out": "unused"})
    dims, notes = default_space("fcos_r18_fpn", cfg, {}, records, "cpu")
    lr, size = dims
    assert (lr.key, lr.log) == ("base_lr", True)
    assert (lr.low, lr.high) == pytest.approx((0.01 * 0.25, 0.01 * 4))  # FCOS recipe: 0.01
    plan = plan_input_size(records, "fcos", "cpu")
    assert size.key == "model_kwargs.min_size" and plan.min_size in size.choices
    assert len(size.choices) == 3 and all(c % 32 == 0 for c in size.choices)
    assert size.values(plan.min_size)["model_kwargs.max_size"] >= plan.max_size
    assert any("augmentation not searched" in n for n in notes)

    fixed = {"base_lr": 0.02, "model_kwargs.min_size": 320}
    dims, notes = default_space(
        "fcos_r18_fpn", resolve({**fixed, "model": "fcos_r18_fpn"}), fixed, records, "cpu"
    )
    assert dims == [] and any("learning rate fixed" in n for n in notes)

    ssd = resolve({"model": "ssdlite_effl0"})
    dims, _ = default_space("ssdlite_effl0", ssd, {}, records, "cpu")
    assert dims[1].key == "model_kwargs.size" and dims[1].choices == [256, 320, 384]
    assert yaml.safe_load(dims[1].spec().replace(",", ", ").join("[]")) == [256, 320, 384]


def test_a_trial_that_overran_its_share_leaves_fewer_trials_so_the_study_ends_on_time():
    from detlab.tune import TrialRecord, TuneResult, _fewer_if_overrun

    result = TuneResult(Path("unused"), "fcos_r18_fpn", "coco/AP50", "maximize", 0, 360.0, 6, [])
    result.trials.append(TrialRecord(0, "t0", {}, state="complete", value=0.1, budget_s=60.0, wall_s=100.0))
    _fewer_if_overrun(result, left_s=260.0)  # one epoch costs 100 s: two more fit, not five
    assert result.planned_trials == 3
    result.trials.append(TrialRecord(1, "t1", {}, state="complete", value=0.1, budget_s=130.0, wall_s=135.0))
    _fewer_if_overrun(result, left_s=125.0)  # within 10 % of its share: the plan stands
    assert result.planned_trials == 3
    result.trials.append(TrialRecord(2, "t2", {}, state="pruned", budget_s=125.0, wall_s=300.0))
    _fewer_if_overrun(result, left_s=0.0)  # a pruned trial says nothing about a whole one's cost
    assert result.planned_trials == 3


def test_a_share_too_short_for_two_epochs_gives_fewer_longer_trials():
    from detlab.engine.budget import Timing
    from detlab.tune import TrialRecord, TuneResult, _share_from_costs

    result = TuneResult(Path("unused"), "fcos_r18_fpn", "coco/AP50", "maximize", 0, 600.0, 10, [])
    timing = Timing(s_iter=1.0, s_epoch=2.0, s_eval=8.0, s_finish=5.0)
    first = TrialRecord(0, "t0", {}, budget_s=60.0)
    # 10 s spent, then 2 epochs of 20 steps (2 x (20 + 2 + 8) s) and 5 s to finish: 75 s, not 60
    assert _share_from_costs(result, first, 600.0, timing, 20, 10.0, 60.0) == pytest.approx(75.0)
    assert result.planned_trials == 8 and first.budget_s == pytest.approx(75.0)  # 600 // 75
    second = TrialRecord(1, "t1", {}, budget_s=75.0)
    assert _share_from_costs(result, second, 525.0, timing, 20, 10.0, 75.0) == 75.0  # it fits: kept
    last = TrialRecord(7, "t7", {}, budget_s=40.0)
    assert (
        _share_from_costs(result, last, 40.0, timing, 20, 10.0, 40.0) == 40.0
    )  # the last one: nothing to merge
    assert result.planned_trials == 8


def test_the_default_space_runs_detlabs_defaults_first_as_the_baseline(data, tmp_path, monkeypatch, capsys):
    from detlab import tune as tune_mod
    from detlab.tune import TrialRecord

    def sampled_only(study, optuna, number, budget_s, result, setup):  # what each trial would train
        trial = study.ask()
        params = {d.key: d.suggest(trial) for d in result.space}
        value = 0.3 if number == 0 else 0.4
        study.tell(trial, value)
        return TrialRecord(number, f"t{number}", params, state="complete", value=value)

    monkeypatch.setattr(tune_mod, "run_trial", sampled_only)
    monkeypatch.setattr(tune_mod, "write_results", lambda result: None)
    result = tune_mod.tune(str(data), "fcos_r18_fpn", tmp_path / "s", "10m", trials=3, set_overrides=FAST[1:])
    lr, size = result.space
    assert result.baseline and result.trials[0].params == {
        "base_lr": 0.01,
        "model_kwargs.min_size": size.default,
    }
    assert size.default in size.choices and lr.low < lr.default < lr.high  # the recipe's, inside the range
    assert [t.params for t in result.trials[1:]] != [result.trials[0].params] * 2  # the others are sampled
    out = capsys.readouterr()
    assert "trial 1 trains detlab's defaults" in out.err
    assert "(detlab's defaults, trial 000: 0.3000)" in out.out and out.out.count("defaults") == 2


def test_a_pruned_last_trial_leaves_its_time_to_one_more():
    from detlab.tune import TrialRecord, TuneResult, _one_more_if_time_is_left

    result = TuneResult(Path("unused"), "fcos_r18_fpn", "coco/AP50", "maximize", 0, 1800.0, 3, [])
    result.min_trial_s = 420.0  # the cheapest two-epoch trial measured
    result.trials = [TrialRecord(n, f"t{n}", {}, state="complete", value=0.5) for n in range(2)]
    result.trials.append(TrialRecord(2, "t2", {}, state="pruned"))
    _one_more_if_time_is_left(result, left_s=400.0, min_share_s=90.0)
    assert result.planned_trials == 3  # 400 s hold no measured trial
    _one_more_if_time_is_left(result, left_s=660.0, min_share_s=90.0)
    assert result.planned_trials == 4
    result.trials.append(TrialRecord(3, "t3", {}, state="complete", value=0.6))
    _one_more_if_time_is_left(result, left_s=660.0, min_share_s=90.0)
    assert result.planned_trials == 4  # the last one ran its share: the plan is done
