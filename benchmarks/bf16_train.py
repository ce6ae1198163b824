"""bf16 vs float32 training on CPU: CPU seconds per training step, and AP after equal epochs.

The bf16 path is the one ``detlab train --precision bf16`` runs on a CPU (``Trainer._autocast``:
the network modules under ``torch.autocast('cpu', bfloat16)``, losses and box coding in float32).
Per model, the same batches of BCCD training images (detlab's training transforms at plan.py's
input size, ImageNet EfficientNet-Lite0 backbone) are trained for ``--steps`` optimizer steps in
interleaved rounds (fp32, bf16, fp32, …) from the same starting weights; the speed-up is the
median of the per-round ratios of CPU seconds (``time.process_time``: user + sys).

On a CPU without native bf16 (no AVX512-BF16 / AMX) ``precision=bf16`` is refused by the config; the
script then says so and measures the emulated path anyway (``--emulated``) so that the slowdown
is on record. ``--epochs N`` also trains each precision for N epochs through ``detlab.train`` and
evaluates both on BCCD val (COCO AP, AP50).

    .venv/bin/python benchmarks/bf16_train.py --threads 1 --steps 3 --rounds 3
    .venv/bin/python benchmarks/bf16_train.py --models fcos_effl0_fpn --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import detlab
from detlab import device as devices
from detlab.config import family_of, resolve
from detlab.data.dataset import DetectionDataset, collate
from detlab.data.transforms import build_transforms
from detlab.engine.distributed import DistContext
from detlab.engine.plan import apply_size_plan
from detlab.engine.train import Trainer

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "bccd" / "BCCD"


def _steps_cpu(model, ds, batches: list, amp: str, out: Path) -> float:
    """CPU seconds of one optimizer step per batch (a fresh Trainer around ``model``)."""
    cfg = resolve({"model": model.name, "precision": amp, "device": "cpu", "out": str(out), "quiet": True})
    trainer = Trainer(model, ds, None, cfg, DistContext())
    t0 = time.process_time()
    for batch in batches:
        trainer._step([batch])
    return time.process_time() - t0


def speed(name: str, train_ds, args) -> tuple[float, float, float]:
    """``(fp32 CPU s per step, bf16 CPU s per step, median per-round speed-up)``."""
    kwargs: dict = {}
    apply_size_plan(kwargs, {}, train_ds.records, family_of(name), "cpu")
    base = detlab.build_model(name, train_ds.num_classes, weights="imagenet", **kwargs)
    size = {k: kwargs[k] for k in ("min_size", "max_size") if k in kwargs}
    tf = build_transforms(base.transform_recipe, train=True, **size)
    torch.manual_seed(0)
    data = DetectionDataset(train_ds.records, transforms=tf)
    batches = [collate([data[2 * i + j] for j in range(2)]) for i in range(args.steps)]
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for amp in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                model = copy.deepcopy(base)
                times[amp].append(
                    _steps_cpu(model, train_ds, batches, amp, Path(tmp) / f"{amp}{r}") / args.steps
                )
    ratios = [a / b for a, b in zip(times["fp32"], times["bf16"])]
    return statistics.median(times["fp32"]), statistics.median(times["bf16"]), statistics.median(ratios)


def accuracy(name: str, train_ds, val_ds, args) -> dict[str, dict]:
    """COCO AP / AP50 on ``val_ds`` after ``args.epochs`` epochs of ``detlab.train`` per precision."""
    out = {}
    for amp in ("fp32", "bf16"):
        kwargs: dict = {}
        apply_size_plan(kwargs, {}, train_ds.records, family_of(name), "cpu")
        torch.manual_seed(0)
        model = detlab.build_model(name, train_ds.num_classes, weights="imagenet", **kwargs)
        t0 = time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            run = detlab.train(
                model, train_ds, None, out=tmp, epochs=args.epochs, precision=amp, device="cpu",
                weights="imagenet", num_workers=0, quiet=True, report=False, plots=False,
            )  # fmt: skip
        cpu = time.process_time() - t0
        coco = detlab.evaluate(run.model, val_ds, protocols=("coco",), progress=False)["coco"]
        out[amp] = {"cpu_s": cpu, "AP": coco["AP"], "AP50": coco["AP50"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="fcos_effl0_fpn,faster_rcnn_effl0_fpn")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps (batch 2) per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved fp32/bf16 rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=0, help="also train N epochs per precision and evaluate")
    p.add_argument(
        "--emulated", action="store_true", help="measure emulated bf16 on a CPU without native bf16"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    native = devices.cpu_has_native_bf16()
    if not native:
        print(
            "this CPU has no native bf16 (AVX512-BF16 / AMX): detlab refuses precision=bf16 here",
            file=sys.stderr,
        )
        if not args.emulated:
            raise SystemExit("pass --emulated to measure the emulated bf16 path anyway")
        devices.cpu_has_native_bf16 = lambda: True  # measurement only: let the config accept it
    train_ds = detlab.load_dataset(f"{BCCD}:train")
    val_ds = detlab.load_dataset(f"{BCCD}:val", classes=list(train_ds.class_names)) if args.epochs else None
    print(
        f"native bf16: {native}; {args.threads} thread(s), {args.steps} steps x {args.rounds} rounds, batch 2"
    )
    print("| model | fp32 CPU s/step | bf16 CPU s/step | bf16 speed-up |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        fp32, bf16, ratio = speed(name, train_ds, args)
        print(f"| {name} | {fp32:.2f} | {bf16:.2f} | {ratio:.2f}x |", flush=True)
        if args.epochs:
            acc = accuracy(name, train_ds, val_ds, args)
            for amp, r in acc.items():
                print(
                    f"  {name} {amp} {args.epochs} epochs: CPU {r['cpu_s']:.0f} s, AP {r['AP']:.3f}, AP50 {r['AP50']:.3f}"
                )


if __name__ == "__main__":
    main()
