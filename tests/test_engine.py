"""Engine: schedule values, parameter groups, checkpoints and RNG round trips, a tiny run, exact resume."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import ShapesDataset, TinyFCOS, state_equal

from detlab.config import resolve
from detlab.engine import checkpoint as ckpt_io
from detlab.engine.schedule import WarmupSchedule, build_optimizer, param_groups
from detlab.engine.train import NonFiniteLossError, Trainer, fit

TINY = dict(
    batch_size=2,
    num_workers=0,
    quiet=True,
    plots=False,
    report=False,
    log_every=2,
    warmup_iters=2,
    epochs=2,
    base_lr=0.01,
    base_batch=2,
    eval_batch_size=4,
    device="cpu",
    protocols=["coco"],
)


def tiny_cfg(tmp_path, **over):
    return resolve({**TINY, **over, "out": str(tmp_path / "run")}, family="fcos")


# --- schedule and parameter groups --------------------------------------------------


def test_warmup_then_step_hand_computed():
    s = WarmupSchedule(
        100,
        warmup_iters=10,
        warmup_factor=0.1,
        kind="step",
        milestones=[0.5, 0.8],
        gamma=0.1,
        min_lr_factor=0.0,
    )
    assert s(0) == pytest.approx(0.1)
    assert s(5) == pytest.approx(0.1 * 0.5 + 0.5)  # halfway through the linear warmup
    assert s(10) == 1.0 and s(49) == 1.0
    assert s(50) == pytest.approx(0.1) and s(79) == pytest.approx(0.1) and s(80) == pytest.approx(0.01)


def test_cosine_and_warmup_cap():
    s = WarmupSchedule(
        100, warmup_iters=1000, warmup_factor=0.0, kind="cosine", milestones=[], gamma=0.1, min_lr_factor=0.05
    )
    assert s.warmup_iters == 20  # capped at a fifth of the run
    assert s(10) == pytest.approx(0.5 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.1))))
    assert s(50) == pytest.approx(0.05 + 0.95 * 0.5)
    assert s(100) == pytest.approx(0.05)


def test_param_groups_backbone_mult_and_no_decay(tmp_path):
    model = TinyFCOS()
    cfg = tiny_cfg(tmp_path, backbone_lr_mult=0.1, weight_decay=1e-4, norm_weight_decay=0.0)
    groups = {g["name"]: g for g in param_groups(model, cfg, lr=0.02)}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    backbone = {names[id(p)] for p in groups["backbone"]["params"]}
    assert backbone == {"backbone.body.0.weight", "backbone.body.3.weight"}
    bb_nd = {names[id(p)] for p in groups["backbone_no_decay"]["params"]}
    assert bb_nd == {
        "backbone.body.0.bias",
        "backbone.body.1.weight",
        "backbone.body.1.bias",
        "backbone.body.3.bias",
    }
    head_nd = {names[id(p)] for p in groups["head_no_decay"]["params"]}
    assert all(n.endswith("bias") or "norm" in n or names for n in head_nd)
    assert any(".1.weight" in n for n in head_nd)  # the head's GroupNorm weight
    assert groups["backbone"]["lr"] == pytest.approx(0.002) and groups["head"]["lr"] == pytest.approx(0.02)
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 1e-4
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == pytest.approx(0.01)  # 0.01·2/2


# --- checkpoints ---------------------------------------------------------------------


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)
    path = ckpt_io.save_checkpoint({"model": {}, "rng": ckpt_io.rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt_io.set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = ckpt_io.save_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path / "last.pt")
    with pytest.raises(Exception):  # noqa: B017 — any failure of the write will do
        ckpt_io.save_checkpoint({"model": {"w": lambda: 0}}, path)  # not picklable: write fails midway
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_load_checkpoint_errors_are_one_line(tmp_path):
    from detlab.errors import WeightsError

    with pytest.raises(WeightsError, match="checkpoint not found"):
        ckpt_io.load_checkpoint(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pt: cannot load checkpoint"):
        ckpt_io.load_checkpoint(tmp_path / "bad.pt")


# --- a tiny run ----------------------------------------------------------------------


def test_tiny_run_writes_the_run_folder(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(tmp_path, eval_before="true", ema=True, ema_decay=0.5, accumulate=2)
    run = fit(TinyFCOS(), ShapesDataset(8), ShapesDataset(2, seed=1), cfg)
    out = tmp_path / "run"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x["type"] == "eval"]
    trains = [x for x in lines if x["type"] == "train"]
    assert [e["epoch"] for e in evals] == [0, 1, 2]
    assert [t["iter"] for t in trains] == [2, 4]  # 8 images / (2 per batch · 2 accumulated) = 2 steps/epoch
    assert {
        "loss",
        "loss_classification",
        "loss_bbox_regression",
        "loss_bbox_ctrness",
        "lr",
        "sec_per_iter",
        "data_sec",
    } <= set(trains[0])
    assert trains[0]["loss"] == pytest.approx(sum(v for k, v in trains[0].items() if k.startswith("loss_")))
    assert "val/loss" in evals[0] and "coco/AP50" in evals[0]
    assert json.loads((out / "eval" / "before.json").read_text())["epoch"] == 0
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    required = {
        "model",
        "model_name",
        "num_classes",
        "build_kwargs",
        "class_names",
        "source_ids",
        "source_format",
        "config",
        "optimizer",
        "scheduler",
        "scaler",
        "ema",
        "epoch",
        "iteration",
        "rng",
        "metrics",
    }
    assert required <= set(ckpt)
    assert ckpt["iteration"] == 4 and ckpt["epoch"] == 2 and ckpt["class_names"] == ["bright", "dark"]
    assert ckpt["config"]["accumulate"] == 2 and ckpt["metrics"]["coco/AP50"] == evals[-1]["coco/AP50"]
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "config.yaml").is_file()
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert state_equal(run.model.state_dict(), dict(best["model"]))
    assert run.before is not None and run.metrics["coco/AP50"] == max(e["coco/AP50"] for e in evals[1:])


def test_the_final_evaluation_scores_the_best_epochs_detections_instead_of_predicting_again(
    tmp_path, monkeypatch
):
    """RUN/eval/ after training holds what a fresh pass of best.pt gives, without that pass."""
    from detlab.evaluation import evaluator
    from detlab.evaluation.final import PREDICTIONS

    passes, real = [], evaluator.predict_split
    monkeypatch.setattr(
        evaluator, "predict_split", lambda *a, **k: passes.append(k.get("desc", "eval")) or real(*a, **k)
    )
    torch.manual_seed(0)
    val = ShapesDataset(3, seed=1)
    run = fit(TinyFCOS(), ShapesDataset(8), val, tiny_cfg(tmp_path, epochs=3, ema=True, ema_decay=0.5))
    assert passes == ["eval"] * 3  # one per epoch; the final evaluation added none
    fresh, _, _ = real(run.model, val, batch_size=4, progress=False)
    written = {
        p["image_id"]: p for p in json.loads((tmp_path / "run" / "eval" / PREDICTIONS).read_text())["images"]
    }
    assert set(written) == set(fresh)
    for image_id, det in fresh.items():
        assert written[image_id]["labels"] == det["labels"].tolist()
        assert np.allclose(written[image_id]["boxes"], np.asarray(det["boxes"]).reshape(-1, 4), atol=0.051)
        assert np.allclose(written[image_id]["scores"], det["scores"], atol=5e-5)


def test_a_lone_last_image_is_left_out_of_the_epoch(tmp_path):
    # 5 images in batches of 2 would leave a batch of 1, which BatchNorm cannot train on.
    from detlab.engine.distributed import DistContext

    ctx = DistContext(device=torch.device("cpu"))
    trainer = Trainer(TinyFCOS(), ShapesDataset(5), None, tiny_cfg(tmp_path, epochs=1), ctx)
    assert trainer.drop_last and trainer.steps_per_epoch == 2
    assert [len(images) for images, _ in trainer._loader()] == [2, 2]
    even = Trainer(TinyFCOS(), ShapesDataset(6), None, tiny_cfg(tmp_path / "b", epochs=1), ctx)
    assert not even.drop_last and even.steps_per_epoch == 3


def _interrupt_after(monkeypatch, steps: int):
    """Make the loop die (as a kill would) when it starts optimizer step ``steps + 1``."""
    original = Trainer._step

    def step(self, group):
        if self.iteration == steps:
            raise KeyboardInterrupt
        return original(self, group)

    monkeypatch.setattr(Trainer, "_step", step)


def test_mid_epoch_resume_is_bitwise_identical_with_workers(tmp_path, monkeypatch, workers=2):
    over = dict(num_workers=workers, checkpoint_every=3, ema=True, ema_decay=0.9, epochs=2)

    def start(folder):
        torch.manual_seed(0)
        return resolve({**TINY, **over, "out": str(folder)}, family="fcos"), TinyFCOS()

    cfg, model = start(tmp_path / "a")
    reference = fit(model, ShapesDataset(8, augment=True), ShapesDataset(2, seed=1), cfg)
    cfg, model = start(tmp_path / "b")
    with monkeypatch.context() as m:
        _interrupt_after(m, 7)  # 4 steps/epoch: last checkpoint is iteration 6, mid-epoch 2
        with pytest.raises(KeyboardInterrupt):
            fit(model, ShapesDataset(8, augment=True), ShapesDataset(2, seed=1), cfg)
    ckpt = ckpt_io.load_checkpoint(tmp_path / "b")
    assert (ckpt["iteration"], ckpt["epoch"], ckpt["step_in_epoch"]) == (6, 1, 2)
    torch.manual_seed(123)  # the resumed process starts from another RNG state
    resumed = fit(TinyFCOS(), ShapesDataset(8, augment=True), ShapesDataset(2, seed=1), cfg, resume=ckpt)
    assert state_equal(reference.model.state_dict(), resumed.model.state_dict())
    last_a = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)
    last_b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    assert state_equal(last_a["train_model"], last_b["train_model"])
    lines_a = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    drop = ("sec_per_iter", "data_sec")
    assert [{k: v for k, v in x.items() if k not in drop} for x in lines_a] == [
        {k: v for k, v in x.items() if k not in drop} for x in lines_b
    ]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, checkpoint_every=2, epochs=1)
    model = TinyFCOS()
    original = TinyFCOS.forward
    calls = {"n": 0}

    def forward(self, images, targets=None):
        out = original(self, images, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 4:
                out["loss_bbox_regression"] = out["loss_bbox_regression"] * float("nan")
        return out

    monkeypatch.setattr(TinyFCOS, "forward", forward)
    with pytest.raises(NonFiniteLossError) as err:
        fit(model, ShapesDataset(8), None, cfg)
    message = str(err.value)
    assert "iteration 4" in message and "loss_bbox_regression=nan" in message and "last.pt" in message
    assert "\n" not in message
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run")
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


# --- validation data found beside the training data ---------------------------------------


def test_auto_val_picks_the_same_sources_val_split(tmp_path, capsys):
    from detlab.data.synthetic import write_shapes_dataset
    from detlab.engine.train import load_train_val

    root = write_shapes_dataset(tmp_path / "d", num_train=4, num_val=2, size=64, seed=0)
    cfg = resolve({"data": f"{root}:train", "model": "fcos_r18_fpn", "out": str(tmp_path / "r")})
    train_ds, val_ds = load_train_val(cfg)
    assert (len(train_ds), len(val_ds), cfg.val) == (4, 2, f"{root}:val")
    assert val_ds.class_names == train_ds.class_names
    assert f"validation data: {root}:val (2 images)" in capsys.readouterr().err


def test_auto_val_finds_the_sibling_split_folder(chess):
    from detlab.engine.train import load_train_val

    cfg = resolve({"data": str(chess / "train"), "model": "fcos_r18_fpn", "out": "unused"})
    train_ds, val_ds = load_train_val(cfg, verbose=False)
    assert cfg.val == str(chess / "valid") and len(val_ds) == 58
    assert val_ds.class_names == train_ds.class_names


def test_voc_data_without_a_split_trains_on_train_and_overlap_is_warned(tmp_path, capsys):
    from detlab.data.synthetic import write_shapes_dataset
    from detlab.engine.train import load_train_val

    root = write_shapes_dataset(tmp_path / "d", num_train=4, num_val=2, size=64, seed=0)
    cfg = resolve({"data": str(root), "model": "fcos_r18_fpn", "out": str(tmp_path / "r")})
    train_ds, val_ds = load_train_val(cfg)  # not every XML: val images would leak into training
    assert (cfg.data, cfg.val, len(train_ds), len(val_ds)) == (f"{root}:train", f"{root}:val", 4, 2)
    assert "warning" not in capsys.readouterr().err
    cfg = resolve({"data": f"{root}:trainval", "model": "fcos_r18_fpn", "out": str(tmp_path / "r")})
    load_train_val(cfg)
    err = capsys.readouterr().err
    assert (
        f"warning: 2 of 2 validation images of {root}:val are also training images of {root}:trainval" in err
    )
