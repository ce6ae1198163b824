"""The training loop: one readable loop for every family, on CPU, one GPU or many (torchrun).

Stages per optimizer step (``Trainer._step``)::

    batches (accumulate of them) → model(images, targets) → sum of loss_* → backward
    → unscale / clip → optimizer.step → scheduler.step → EMA update

Per epoch: periodic evaluation (validation losses + COCO/VOC metrics, gathered across
ranks), ``checkpoints/last.pt`` every epoch (and every ``checkpoint_every`` steps),
``checkpoints/best.pt`` on improvement of ``metric``, early stopping after ``patience``
evaluations without improvement. Everything a run writes is described in DESIGN.md
("Run folder"); metrics.jsonl lines are ``{"type": "train", …}`` and ``{"type": "eval", …}``.

``iteration`` counts optimizer steps; one step consumes ``accumulate`` batches.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from detlab.config import TrainConfig, effective_lr, save_yaml, validate_metric
from detlab.data.dataset import collate, targets_to
from detlab.device import pick_device
from detlab.engine import budget
from detlab.engine import checkpoint as ckpt_io
from detlab.engine import distributed as ddp
from detlab.engine.runlog import RunLog, run_lock
from detlab.engine.schedule import build_optimizer, build_scheduler, stretch_schedule
from detlab.errors import ConfigError, DetlabError, OutputError
from detlab.log import logger
from detlab.models.precision import amp_dtype
from detlab.runfolder import dataset_spec, default_train_split, find_val_split, names_test


class NonFiniteLossError(DetlabError):
    """A loss part or the gradient norm became NaN/inf; the last good checkpoint is kept."""

    exit_code = 3


@dataclass
class Run:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (best checkpoint's weights when there was an evaluation), eval mode.
        out: the run folder.
        metrics: flattened metrics of the best evaluation (``{"coco/AP50": …}``), empty without val data.
        before: flattened metrics before the first step, when that evaluation ran.
        stopped: ``finished`` | ``early_stopping``.
    """

    model: nn.Module
    out: Path
    metrics: dict = field(default_factory=dict)
    before: dict | None = None
    stopped: str = "finished"


def train(
    model: nn.Module,
    train_ds,
    val_ds=None,
    out: str | Path = "runs/train",
    epochs: int | None = None,
    **overrides,
) -> Run:
    """Train ``model`` on ``train_ds``, evaluating on ``val_ds``; the Python face of ``detlab train``.

    Args:
        model: a catalogue model (``build_model``): attributes ``name``, ``family``,
            ``transform_recipe``, ``build_kwargs``, ``backbone_prefixes``.
        train_ds: a ``DetectionDataset``; when it has no transforms, the family's
            training transforms (``data.transforms.build_transforms``) are applied.
        val_ds: dataset to evaluate on, or None (no evaluation; best = last).
        out: run folder.
        epochs: number of epochs (default: the family recipe's).
        **overrides: any :class:`~detlab.config.TrainConfig` field (``lr=0.005``, ``batch_size=2``…).

    Returns:
        A :class:`Run` with the trained model, its folder and its metrics.
    """
    from detlab.config import resolve

    started = time.monotonic()  # a time budget counts from here
    user = dict(overrides)
    if epochs is not None:
        user["epochs"] = epochs
    user.update(out=str(out), model=getattr(model, "name", None))
    # What was really used, as the CLI records it: `eval RUN`, `report RUN` and `--resume` read it back.
    user.setdefault("data", dataset_spec(train_ds))
    user.setdefault("val", dataset_spec(val_ds))
    user.setdefault("weights", getattr(model, "weights", None) or "none")
    cfg = resolve(user, family=getattr(model, "family", None), model_name=getattr(model, "name", None))
    ctx = ddp.setup(cfg.device)
    return fit(model, train_ds, val_ds, cfg, ctx=ctx, started=started)


@contextlib.contextmanager
def locked_run(out: str | Path | None, ctx: ddp.DistContext):
    """Rank 0 holds the run-folder lock for the block; every rank learns whether it got it.

    Under torchrun a refused rank 0 alone would leave the other ranks waiting in their first
    collective until the process-group timeout; here they all stop with the same one line.
    """
    with contextlib.ExitStack() as held:
        refusal = None
        if ctx.is_main and out:
            try:
                held.enter_context(run_lock(out))
            except OutputError as e:
                refusal = str(e)
        refusal = ddp.broadcast_object(refusal)
        if refusal:
            raise OutputError(refusal)
        yield


def fit(
    model: nn.Module,
    train_ds,
    val_ds,
    cfg: TrainConfig,
    resume: dict | None = None,
    ctx: ddp.DistContext | None = None,
    started: float | None = None,
    clock=time.monotonic,
    measure=None,
    on_eval=None,
    on_plan=None,
) -> Run:
    """Run the loop for a built model and loaded datasets under a resolved config.

    Args:
        model: the model (weights already loaded when fine-tuning).
        train_ds, val_ds: datasets (val may be None).
        cfg: resolved config; ``cfg.out`` is the run folder.
        resume: a checkpoint dict to continue from (``--resume``), or None.
        ctx: process group context (default: single process on ``cfg.device``).
        started: ``clock()`` when this session began (data loading counts against a time
            budget); default: now.
        clock: seconds, monotonic (tests give a fake one).
        measure: ``measure(trainer) -> budget.Timing`` for a time budget (default
            :func:`detlab.engine.budget.measure`, which times real steps; tests give fixed costs).
        on_eval: ``on_eval(epoch, metrics)`` after each epoch's evaluation and checkpoint, with the
            flattened metrics; an exception it raises ends the run there (``detlab tune`` prunes so).
        on_plan: ``on_plan(timing, steps_per_epoch, spent_s, budget_s) -> budget_s`` once a time
            budget's costs are measured, before the epochs are planned: the budget to plan with
            (``detlab tune`` gives a trial a larger share when fewer trials fit the study).

    Returns:
        The :class:`Run`.
    """
    ctx = ctx or ddp.DistContext(device=pick_device(cfg.device))
    with locked_run(cfg.out, ctx):
        trainer = Trainer(model, train_ds, val_ds, cfg, ctx, clock=clock, started=started)
        trainer.measure = measure or budget.measure
        trainer.on_eval = on_eval
        trainer.on_plan = on_plan
        try:
            return trainer.run(resume)
        except OutputError as e:
            last, _ = ckpt_io.checkpoint_paths(trainer.out)
            if not last.is_file():
                raise
            raise OutputError(
                f"{e}; continue with `detlab train --resume {trainer.out}` once it is fixed"
            ) from None
        finally:
            trainer.log.close()


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; optionally make torch pick deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _with_train_transforms(dataset, model: nn.Module, cfg: TrainConfig):
    """The dataset with the family's training transforms when it has none of its own."""
    if getattr(dataset, "transforms", "absent") is not None or not hasattr(dataset, "records"):
        return dataset
    from detlab.data.dataset import DetectionDataset
    from detlab.data.transforms import build_transforms

    # Resize to the model's own input size in the loader: same images the model would make, less memory.
    kwargs = getattr(model, "build_kwargs", {}) or {}
    size = cfg.transform_kwargs or {k: kwargs[k] for k in ("min_size", "max_size", "size") if k in kwargs}
    tf = build_transforms(cfg.augment or model.transform_recipe, train=True, **size)
    return DetectionDataset(dataset.records, transforms=tf)


class Trainer:
    """Holds the moving parts of one run; :meth:`run` reads top-down."""

    def __init__(
        self,
        model: nn.Module,
        train_ds,
        val_ds,
        cfg: TrainConfig,
        ctx: ddp.DistContext,
        clock=time.monotonic,
        started: float | None = None,
    ) -> None:
        if cfg.out is None:
            raise ConfigError("config key 'out': no run folder given; pass --out RUN")
        self.cfg, self.ctx, self.device = cfg, ctx, ctx.device
        self.out = Path(cfg.out)
        self.model = model.to(self.device)
        self.val_ds = val_ds
        if val_ds is not None:  # a config built without resolve() (the Python API) gets resolve's check
            validate_metric(cfg.metric, cfg.protocols, getattr(model, "family", None))
        seed_everything(cfg.seed, cfg.deterministic)
        self.train_ds = ddp.SeededDataset(_with_train_transforms(train_ds, model, cfg))
        self.sampler = ddp.ResumableSampler(
            self.train_ds, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed
        )
        self.loader_gen = torch.Generator().manual_seed(cfg.seed)
        # A lone image in the last batch breaks BatchNorm in train mode (SSD heads, timm
        # backbones): that epoch's last image is left out (a different one each epoch).
        self.drop_last = cfg.batch_size > 1 and self.sampler.num_samples % cfg.batch_size == 1
        batches = (
            self.sampler.num_samples // cfg.batch_size
            if self.drop_last
            else math.ceil(self.sampler.num_samples / cfg.batch_size)
        )
        self.steps_per_epoch = math.ceil(batches / cfg.accumulate)
        self.total_iters = self.steps_per_epoch * cfg.epochs
        self.net = self._wrap_ddp(self.model)
        self.optimizer = build_optimizer(self.model, cfg, ctx.world_size)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_iters)
        self.amp_dtype = amp_dtype(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = self._build_ema()
        self.epoch, self.iteration, self.step_in_epoch = 0, 0, 0
        self.progress = {"best": None, "best_epoch": None, "bad_evals": 0, "metrics": {}, "before": None}
        self.log = RunLog(self.out, ctx.is_main, cfg, self.total_iters)
        # Time accounting (``--time``): this session's start, earlier sessions' seconds, the plan.
        self.clock = clock
        self.started = clock() if started is None else started
        self.time_before = 0.0
        self.time_plan: budget.TimePlan | None = None
        self.measure = budget.measure
        self.step_seconds: list[float] = []  # this _train_epoch call's step times
        self.eval_seconds: float | None = None  # the last full evaluation, logging and plots included
        self.on_eval = None  # fit()'s on_eval(epoch, metrics): told of each epoch's evaluation
        self.on_plan = None  # fit()'s on_plan(timing, steps_per_epoch, spent_s, budget_s) -> budget_s
        # The detections of the last evaluation and of the one best.pt holds (main rank; not in
        # checkpoints): the final evaluation reuses the latter instead of predicting again.
        self.last_detections: dict | None = None
        self.best_detections: dict | None = None

    # --- setup helpers ---------------------------------------------------------

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if not self.ctx.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=self.cfg.ddp_find_unused
        )

    def _build_ema(self):
        if not self.cfg.ema:
            return None
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        return AveragedModel(
            self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay), use_buffers=True
        )

    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.step_in_epoch * self.cfg.accumulate * self.cfg.batch_size)
        return DataLoader(
            self.train_ds,
            batch_size=self.cfg.batch_size,
            sampler=self.sampler,
            drop_last=self.drop_last,
            num_workers=self.cfg.num_workers,
            collate_fn=collate,
            worker_init_fn=ddp.seed_worker,
            generator=self.loader_gen,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and deployed: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # --- the run -----------------------------------------------------------------

    def run(self, resume: dict | None) -> Run:
        """Resume or start, train epoch by epoch with evaluations, return the best model."""
        self._start(resume)
        self._plan_length(resume)
        stopped = "finished"
        while self.epoch < self.cfg.epochs:
            self._train_epoch()
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            if self._eval_due():
                improved = self._evaluate_and_track()
                self._save(best=improved)
                if self.on_eval is not None:
                    self.on_eval(self.epoch, dict(self.progress["metrics"]))
                if self.cfg.patience and self.progress["bad_evals"] >= self.cfg.patience:
                    self.log.note(
                        f"early stopping: {self.cfg.metric} did not improve for "
                        f"{self.cfg.patience} evaluations (best at epoch {self.progress['best_epoch']})"
                    )
                    stopped = "early_stopping"
                    break
            else:
                self._save()
        return self._finish(stopped)

    def _start(self, resume: dict | None) -> None:
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(self.cfg, self.out / "config.yaml")
        if resume is not None:
            self._restore(resume)
            self.log.note(f"resumed {self.out} at epoch {self.epoch + 1}, iteration {self.iteration}")
            return
        self.log.start_fresh()
        amp = f", {self.amp_dtype} network".replace("torch.", "") if self.amp_dtype else ""
        self.log.note(
            f"training {getattr(self.model, 'name', type(self.model).__name__)} on {self.device}{amp}: "
            + (
                f"epochs planned from --time {self.cfg.time_budget} once a few steps are timed, "
                if self.cfg.time_budget is not None
                else f"{self.cfg.epochs} epochs × "
            )
            + f"{self.steps_per_epoch} steps each, batch {self.cfg.batch_size}"
            f"×{self.cfg.accumulate}×{self.ctx.world_size}, {self.cfg.optimizer} lr "
            f"{effective_lr(self.cfg, self.ctx.world_size):.3g}, {self.cfg.schedule} schedule"
        )
        if self.drop_last:
            self.log.note(
                f"{self.sampler.num_samples} training images per process leave a last batch of 1, which "
                f"BatchNorm cannot train on: each epoch skips its last (random) image"
            )
        if self.val_ds is not None and self._eval_before():
            flat = self._evaluate(tag="before")
            self.progress["before"] = flat

    # --- the run's length: a time budget, or a changed epoch count on resume --------------

    def spent(self) -> float:
        """Seconds this run has used: earlier sessions (to their last checkpoint) and this one so far."""
        return self.time_before + self.clock() - self.started

    def _plan_length(self, resume: dict | None) -> None:
        """Fit the run to ``time_budget`` (:mod:`detlab.engine.budget`), or, on resume, re-plan the
        rest of the learning-rate schedule for a changed ``epochs``."""
        planned = self.scheduler.lr_lambdas[0].planned_total
        if resume is not None and self.epoch >= self.cfg.epochs:
            return
        if self.cfg.time_budget is None:
            if resume is not None and planned != self.total_iters:
                self._stretch_for_epochs(planned)
            return
        if resume is not None:  # the steps still planned, which the measurement must not pass
            self.total_iters = planned
        plan = budget.make_plan(self, self.measure, resumed=resume is not None)
        self.cfg.epochs, self.total_iters = plan.epochs, plan.total_iters
        stretch_schedule(self.scheduler, self.iteration, plan.total_iters)
        self.log.total_iters = plan.total_iters
        if self.log.bar is not None:
            self.log.bar.total = plan.total_iters
        self.time_plan = plan
        self.progress["time_plan"] = plan.to_dict()
        if self.ctx.is_main:
            save_yaml(self.cfg, self.out / "config.yaml")
            budget.write_plan(self.out, plan)

    def _stretch_for_epochs(self, planned: int) -> None:
        """``--resume --set epochs=N``: the rest of the schedule re-planned to end at epoch N, said in one line."""
        old_epochs = math.ceil(planned / self.steps_per_epoch)
        change = f"resume: epochs {old_epochs} -> {self.cfg.epochs}"
        if stretch_schedule(self.scheduler, self.iteration, self.total_iters):
            what = "stretched" if self.total_iters > planned else "compressed"
            self.log.total_iters = self.total_iters
            self.log.note(
                f"{change}: the rest of the {self.cfg.schedule} learning-rate schedule (steps "
                f"{self.iteration}-{planned}) is re-planned, {what} over steps {self.iteration}-"
                f"{self.total_iters}, so it still ends at its final rate at epoch {self.cfg.epochs}"
            )
        elif self.cfg.schedule != "constant":
            self.log.note(
                f"{change}: the {self.cfg.schedule} learning-rate schedule had already ended (step {planned}), so "
                f"epochs {old_epochs + 1}-{self.cfg.epochs} run at its final rate; to train longer with a full "
                f"schedule, start a new run from this one's weights (--weights {self.out}/checkpoints/last.pt)"
            )

    def _eval_before(self) -> bool:
        if self.cfg.eval_before == "auto":
            return self.cfg.weights not in (None, "none") and not budget.skip_eval_before(self)
        return self.cfg.eval_before == "true"

    def _eval_due(self) -> bool:
        if self.val_ds is None:
            return False
        last = self.epoch == self.cfg.epochs
        return last or (self.cfg.eval_every > 0 and self.epoch % self.cfg.eval_every == 0)

    def _train_epoch(self, limit: int | None = None) -> None:
        """Train the rest of this epoch, up to the run's last step; ``limit``: only that many steps
        (a time budget's measurement). Each step's seconds land in ``step_seconds``."""
        self.net.train()
        batches = iter(self._loader())
        self.step_seconds = []
        end = self.steps_per_epoch if limit is None else min(self.steps_per_epoch, self.step_in_epoch + limit)
        t_data = time.perf_counter()
        while self.step_in_epoch < end and self.iteration < self.total_iters:
            group = [b for _, b in zip(range(self.cfg.accumulate), batches)]
            if not group:
                break
            data_sec = time.perf_counter() - t_data
            parts = self._step(group)
            self.iteration += 1
            self.step_in_epoch += 1
            self.log.step(
                self.iteration,
                self.epoch + 1,
                self.optimizer.param_groups[0]["lr"],
                parts,
                data_sec,
                time.perf_counter() - t_data,
            )
            self.step_seconds.append(time.perf_counter() - t_data)
            if (
                self.cfg.checkpoint_every
                and self.iteration % self.cfg.checkpoint_every == 0
                and self.step_in_epoch < self.steps_per_epoch
            ):
                self._save()
            t_data = time.perf_counter()

    def _step(self, group: list) -> dict[str, float]:
        """One optimizer step over ``accumulate`` batches; returns the loss parts (means over the group)."""
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for i, (images, targets) in enumerate(group):
            images = [im.to(self.device, non_blocking=True) for im in images]
            targets = targets_to(targets, self.device)
            sync = i == len(group) - 1 or not self.ctx.distributed
            with (
                self.net.no_sync() if not sync else contextlib.nullcontext(),
                self._autocast(),
            ):
                out = self.net(images, targets)
                loss = sum(v for k, v in out.items() if k.startswith("loss_"))
                self._check_finite(out)
                self.scaler.scale(loss / len(group)).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(group)
        self._clip_and_step()
        sums["loss"] = sum(v for k, v in sums.items() if k.startswith("loss_"))
        return sums

    def _autocast(self):
        """The precision of a forward pass. On CPU (bf16, config-checked to be native) only the network
        modules run under autocast and return float32, so that losses and box coding stay float32."""
        if self.amp_dtype is not None and self.device.type == "cpu":
            from detlab.models.precision import autocast_network

            return autocast_network(self.model, self.amp_dtype, "cpu")
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    def _check_finite(self, out: dict) -> None:
        bad = [k for k, v in out.items() if k.startswith("loss_") and not torch.isfinite(v.detach()).all()]
        if ddp.all_true(not bad, self.device):
            return
        where = ", ".join(f"{k}={float(out[k].detach()):.4g}" for k in bad) or "on another rank"
        self._raise_non_finite(
            f"loss became non-finite at iteration {self.iteration + 1} (epoch {self.epoch + 1}): {where}"
        )

    def _raise_non_finite(self, what: str) -> None:
        last, _ = ckpt_io.checkpoint_paths(self.out)
        kept = (
            f"the last good checkpoint is kept at {last}"
            if last.exists()
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"{what}; training stopped, {kept}; lower the learning rate (--set lr=…) or set clip_grad_norm"
        )

    def _clip_and_step(self) -> None:
        if self.cfg.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
            # fp16's scaler skips inf steps by design; in full precision an inf norm would corrupt weights.
            if not self.scaler.is_enabled() and not ddp.all_true(bool(torch.isfinite(norm)), self.device):
                self._raise_non_finite(f"gradient norm became non-finite at iteration {self.iteration + 1}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    # --- evaluation ----------------------------------------------------------------

    def _evaluate(self, tag: str) -> dict:
        """Evaluate the deployable weights; log an eval line and ``eval/<tag>.json``; return flat metrics."""
        from detlab.evaluation.evaluator import flatten_metrics

        model = self.eval_model
        ddp.broadcast_buffers(model)
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        result = ddp.evaluate_sharded(
            model,
            self.val_ds,
            self.cfg.protocols,
            self.cfg.eval_batch_size,
            self.ctx,
            with_loss=True,
            num_workers=min(self.cfg.num_workers, 2),
            progress=not self.cfg.quiet,
            keep_detections=self.ctx.is_main,
        )
        model.train(was_training)
        detections = result.pop("detections", None)  # not in eval/<tag>.json
        self.last_detections = detections
        val_loss = result.get("val_loss", {})
        flat = flatten_metrics({k: v for k, v in result.items() if k != "val_loss"})
        flat.update({f"val/{k}": v for k, v in val_loss.items()})
        flat = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float, np.number))}
        self.log.evaluation(
            self.epoch,
            self.iteration,
            flat,
            result,
            tag,
            time.perf_counter() - t0,
            self.val_ds.records,
            detections,
        )
        self.eval_seconds = time.perf_counter() - t0
        return flat

    def _evaluate_and_track(self) -> bool:
        flat = self._evaluate(tag="last")
        value = flat.get(self.cfg.metric)
        if value is None:
            raise ConfigError(
                f"config key 'metric': {self.cfg.metric!r} is not among the evaluation's metrics "
                f"({', '.join(sorted(flat))}); pick one of them"
            )
        lower_is_better = self.cfg.metric.startswith("val/")
        best = self.progress["best"]
        if math.isnan(value) and not self.progress.get("undefined_noted"):
            logger.info(
                f"detlab: note: {self.cfg.metric} is undefined on the validation data (no ground-truth box of "
                "the model's classes): best.pt follows the last evaluation until it is defined"
            )
            self.progress["undefined_noted"] = True
        # An undefined metric (NaN) neither beats nor is beaten by itself: the newest weights stand in, and
        # patience only counts evaluations that were measured.
        if best is None or math.isnan(best):
            improved = True
        elif math.isnan(value):
            improved = False
        else:
            improved = value < best if lower_is_better else value > best
        self.progress["metrics"] = flat
        if improved:
            self.progress.update(best=float(value), best_epoch=self.epoch, bad_evals=0, best_metrics=flat)
            self.best_detections = self.last_detections
            self.log.copy_eval("last", "best")
        elif not math.isnan(value):
            self.progress["bad_evals"] += 1
        return improved

    # --- checkpoints ---------------------------------------------------------------

    def _state(self) -> dict:
        self.progress["time_spent_s"] = self.spent()
        rngs = ddp.gather_objects(ckpt_io.rng_state())
        state = {
            "model": self.eval_model.state_dict(),
            "model_name": getattr(self.model, "name", None),
            "num_classes": int(getattr(self.model, "num_classes", 0) or 0),
            "build_kwargs": dict(getattr(self.model, "build_kwargs", {}) or {}),
            "class_names": list(getattr(self.train_ds.dataset, "class_names", []) or []),
            "source_ids": _source_ids(self.train_ds.dataset),
            "source_format": getattr(getattr(self.train_ds.dataset, "records", None), "format", None),
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": {"n_averaged": self.ema.n_averaged.detach().cpu()} if self.ema is not None else None,
            "train_model": self.model.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "step_in_epoch": self.step_in_epoch,
            "rng": rngs[0],
            "rng_per_rank": rngs,
            "sampler": {**self.sampler.state_dict(), "generator": self.loader_gen.get_state()},
            "metrics": dict(self.progress["metrics"]),
            "progress": {k: v for k, v in self.progress.items() if k != "metrics"},
            "log": self.log.state_dict(),
        }
        return state

    def _save(self, best: bool = False) -> None:
        state = self._state()  # every rank: gathers the RNG states
        if self.ctx.is_main:
            last, best_path = ckpt_io.checkpoint_paths(self.out)
            ckpt_io.save_checkpoint(state, last)
            if best or (self.val_ds is None and self.epoch == self.cfg.epochs):
                ckpt_io.copy_checkpoint(last, best_path)
        ddp.barrier()

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(
            ckpt["train_model"] if ckpt.get("train_model") is not None else ckpt["model"]
        )
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["model"])
            self.ema.n_averaged.copy_(ckpt["ema"]["n_averaged"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        self.step_in_epoch = int(ckpt.get("step_in_epoch", 0))
        self.progress.update(ckpt.get("progress", {}), metrics=dict(ckpt.get("metrics", {})))
        self.loader_gen.set_state(ckpt["sampler"]["generator"])
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        ckpt_io.set_rng_state(per_rank[self.ctx.rank] if self.ctx.rank < len(per_rank) else ckpt["rng"])
        self.log.load_state_dict(ckpt["log"])
        self.time_before = float(self.progress.get("time_spent_s", 0.0))

    def _finish(self, stopped: str) -> Run:
        _, best_path = ckpt_io.checkpoint_paths(self.out)
        if self.val_ds is not None and best_path.exists():
            best = ckpt_io.load_checkpoint(best_path, map_location=self.device)
            self.model.load_state_dict(best["model"])
        self.model.eval()
        metrics = dict(self.progress.get("best_metrics") or self.progress["metrics"])
        if self.ctx.is_main:
            from detlab.evaluation.final import final_evaluation  # RUN/eval/ for report.html

            final_evaluation(
                self.out, self.model, self.val_ds, self.cfg, self.device, detections=self.best_detections
            )
            self.log.finish(metrics, self.progress.get("before"), self.cfg)
            if self.time_plan is not None:
                took = self.spent()
                budget.write_plan(self.out, self.time_plan, took)
                self.log.note(budget.finish_line(self.time_plan, took))
        ddp.barrier()
        return Run(
            model=self.model,
            out=self.out,
            metrics=metrics,
            before=self.progress.get("before"),
            stopped=stopped,
        )


def _source_ids(dataset) -> list:
    records = getattr(dataset, "records", None)
    ids = getattr(records, "source_ids", None) or []
    return [i if isinstance(i, (int, str)) else str(i) for i in ids]


# --- the command line ---------------------------------------------------------------


def train_command(args, on_eval=None, on_plan=None) -> int:
    """``detlab train``: resolve the config, load data and model, run :func:`fit`.

    Args:
        args: the ``detlab train`` namespace (``data``, ``val``, ``model``, ``out``, ``weights``,
            ``config``, ``set``, ``resume``).
        on_eval, on_plan: passed to :func:`fit` (``detlab tune`` reports each evaluation to its
            pruner and shares its time out from each trial's measured costs).

    Returns:
        Exit code 0; bad input raises a DetlabError the CLI prints as one line.
    """
    started = time.monotonic()  # a time budget counts from here: loading the data is part of the run
    cfg, resume = _resume_config(args) if args.resume else (_config_from_args(args), None)
    ctx = ddp.setup(cfg.device)
    held = contextlib.ExitStack()
    try:
        held.enter_context(
            locked_run(cfg.out, ctx)
        )  # before any data is read: a live run folder stops us at once
        if resume is None and (Path(cfg.out) / "checkpoints" / "last.pt").exists():
            raise ConfigError(
                f"--out {cfg.out}: already holds a run (checkpoints/last.pt); continue it with "
                f"--resume {cfg.out} or choose another --out"
            )
        seed_everything(cfg.seed, cfg.deterministic)
        train_ds, val_ds = load_train_val(cfg, verbose=ctx.is_main)
        if resume is None:
            _plan_size(cfg, train_ds.records, ctx, verbose=ctx.is_main)
            _plan_machine(cfg, _user_keys(args), ctx)
        model = _build_for(cfg, train_ds.num_classes, resume)
        fit(
            model,
            train_ds,
            val_ds,
            cfg,
            resume=resume,
            ctx=ctx,
            started=started,
            on_eval=on_eval,
            on_plan=on_plan,
        )
    finally:
        held.close()
        ddp.cleanup()
    return 0


def _plan_size(cfg: TrainConfig, records, ctx, verbose: bool) -> None:
    """Choose the input size from the training boxes and the device unless the config gives one
    (:mod:`detlab.engine.plan`); the choice lands in ``cfg.model_kwargs``, so config.yaml keeps it."""
    from detlab.config import family_of
    from detlab.engine.plan import apply_size_plan

    lines = apply_size_plan(
        cfg.model_kwargs, dict(cfg.model_kwargs), records, family_of(cfg.model), ctx.device.type
    )
    if verbose:
        for line in lines:
            logger.info(f"detlab: {line}")


def _plan_machine(cfg: TrainConfig, user_keys: set[str], ctx) -> None:
    """On a CPU, the batch size and loader workers from the machine unless the user set them
    (:func:`detlab.engine.plan.apply_machine_plan`); rank 0 decides, so every rank batches alike."""
    from detlab.config import family_of
    from detlab.engine.plan import apply_machine_plan

    lines = apply_machine_plan(cfg, user_keys, family_of(cfg.model), ctx.device.type) if ctx.is_main else []
    cfg.batch_size, cfg.num_workers = ddp.broadcast_object((cfg.batch_size, cfg.num_workers))
    for line in lines:
        logger.info(f"detlab: {line}")


def _user_keys(args) -> set[str]:
    """The config keys the user set (``--config`` YAML, ``--set``), dotted ones by their head."""
    from detlab.config import load_yaml, parse_set

    keys = {**(load_yaml(args.config) if args.config else {}), **parse_set(args.set)}
    return {k.partition(".")[0] for k in keys}


def _config_from_args(args) -> TrainConfig:
    from detlab.config import load_yaml, parse_set, resolve
    from detlab.data.formats import absolute_spec

    user = {**(load_yaml(args.config) if args.config else {}), **parse_set(args.set)}
    for flag in ("data", "val", "model", "out", "weights", "precision"):
        if getattr(args, flag, None) is not None:
            user[flag] = getattr(args, flag)
    if getattr(args, "time", None) is not None:
        user["time_budget"] = args.time
    for flag in ("data", "val"):  # eval, report and compare find it from any working directory
        if user.get(flag):
            user[flag] = absolute_spec(user[flag])
    for flag in ("data", "model", "out"):
        if not user.get(flag):
            raise ConfigError(f"{flag}: not given; pass --{flag} or set `{flag}:` in the --config YAML")
    return resolve(user)


def _resume_config(args) -> tuple[TrainConfig, dict]:
    """The checkpoint's resolved config (with any ``--set`` changes) and the checkpoint itself."""
    from detlab.config import apply_overrides, load_yaml, parse_set, validate

    run = Path(args.resume)
    if args.out and Path(args.out).resolve() != run.resolve():
        raise ConfigError(f"--out {args.out}: a resumed run continues in its own folder {run}; drop --out")
    ckpt = ckpt_io.load_checkpoint(run)
    ckpt_io.require_training_state(ckpt, run / "checkpoints" / "last.pt" if run.is_dir() else run)
    changes = {**(load_yaml(args.config) if args.config else {}), **parse_set(args.set)}
    for flag in ("data", "val", "model", "weights", "precision"):
        if getattr(args, flag, None) is not None:
            changes[flag] = getattr(args, flag)
    if getattr(args, "time", None) is not None:
        changes["time_budget"] = args.time
    merged = apply_overrides(TrainConfig().to_dict(), ckpt["config"], f"{run}/checkpoints/last.pt config")
    merged = apply_overrides(merged, changes, "--set")
    merged["out"] = str(run)
    cfg = TrainConfig(**merged)
    validate(cfg)
    if not cfg.data:  # a run trained through the API on data held in memory
        raise ConfigError(
            f"--resume {run}: the run's config names no training data (it was trained on an in-memory "
            "dataset); pass --data DATA with the data it was trained on"
        )
    if changes:
        logger.info(f"resume: changed {', '.join(sorted(changes))} from the saved config")
    return cfg, ckpt


def _build_for(cfg: TrainConfig, num_classes: int, resume: dict | None) -> nn.Module:
    """Build the catalogue model; on resume, exactly as saved (weights come from the checkpoint)."""
    from detlab.models.catalogue import build_model

    if resume is None:
        return build_model(cfg.model, num_classes=num_classes, weights=cfg.weights, **cfg.model_kwargs)
    if int(resume["num_classes"]) != num_classes:
        raise ConfigError(
            f"--resume: checkpoint has {resume['num_classes']} classes but data {cfg.data} has "
            f"{num_classes}; resume with the data the run was started on"
        )
    return build_model(
        resume["model_name"], num_classes=num_classes, weights="none", **resume["build_kwargs"]
    )


def load_train_val(cfg: TrainConfig, verbose: bool = True):
    """Load ``cfg.data`` and the validation data (``cfg.val``, else found beside the training data).

    The validation data is read with the training class list, so label indices agree;
    the source found automatically is written back to ``cfg.val`` (saved in config.yaml).

    Returns:
        ``(train_ds, val_ds)``; ``val_ds`` is None when no validation data exists (with a warning).
    """
    from detlab.data.dataset import load_dataset

    data = default_train_split(cfg.data)
    if data != cfg.data and verbose:
        logger.info(f"training data: {data} (the source's train split; name another with PATH:split)")
    cfg.data = data
    train_ds = load_dataset(cfg.data)
    if cfg.val:
        val_ds = load_dataset(cfg.val, classes=list(train_ds.class_names))
    else:
        cfg.val, val_ds = find_val_split(cfg.data, train_ds)
        if val_ds is None and cfg.val_fraction > 0:
            train_ds, val_ds = _hold_out(cfg, train_ds, verbose)
        elif val_ds is None and verbose:
            logger.warning(
                f"warning: no val, valid or test split found for {cfg.data}; training without evaluation "
                "(pass --val DATA to evaluate, hold some images out with --set val_fraction=0.2, or write a split "
                f"with `detlab split {cfg.data} --val 0.2`)"
            )
        elif verbose:
            logger.info(f"validation data: {cfg.val} ({len(val_ds)} images)")
    if val_ds is not None and verbose and names_test(cfg.val):
        logger.warning(
            f"warning: checkpoints/best.pt is picked on {cfg.val}, a split named test: its metrics are then "
            "tuned to the test set and overstate accuracy — give a validation split with --val PATH:val "
            "and keep test for the final `detlab eval`"
        )
    if val_ds is not None and verbose:
        train_files = {str(r.file) for r in train_ds.records.images}
        shared = sum(str(r.file) in train_files for r in val_ds.records.images)
        if shared:
            logger.warning(
                f"warning: {shared} of {len(val_ds)} validation images of {cfg.val} are also training images of "
                f"{cfg.data}; its metrics overstate accuracy — give disjoint splits (PATH:train, --val PATH:val)"
            )
    return train_ds, val_ds


def _hold_out(cfg: TrainConfig, train_ds, verbose: bool):
    """``val_fraction`` of the training images, seeded and class-stratified (:mod:`detlab.data.split`), as
    the validation data when the source has no validation split."""
    from detlab.data.dataset import DetectionDataset
    from detlab.data.split import holdout

    train, val = holdout(train_ds.records, cfg.val_fraction, cfg.seed)
    if verbose:
        logger.info(
            f"validation data: {len(val.images)} of {len(train_ds)} images of {cfg.data} held out (val_fraction "
            f"{cfg.val_fraction}, class-stratified, seed {cfg.seed}); training on the other {len(train.images)} — "
            f"`detlab split {cfg.data} --val {cfg.val_fraction}` writes such a split as files"
        )
    return DetectionDataset(train, train_ds.transforms), DetectionDataset(val, train_ds.transforms)
