"""detlab's training defaults vs the torchvision fine-tuning tutorial's recipe, at equal CPU time.

The same network (``--model``, default ``fcos_effl0_fpn``) with the same ImageNet backbone
weights, built by ``detlab.build_model`` at the same input size, is trained two ways:

(a) **detlab**: ``detlab.train`` with detlab's defaults for this data — the family recipe
    (``detlab.config``) and the input size ``detlab.engine.plan`` chooses as ``detlab train``
    does — for ``--epochs`` epochs (the schedule is planned over them);
(b) **tutorial**: the recipe of torchvision's object-detection fine-tuning tutorial written
    out here in plain torch: SGD lr 0.005, momentum 0.9, weight decay 5e-4, StepLR(3, 0.1)
    per epoch, batch 2, random horizontal flip, linear warmup over epoch 0 (factor 1/1000,
    ``min(1000, len(loader) - 1)`` iterations).

Equal CPU time: (a) runs first and its training CPU seconds (user + sys of its process,
``time.process_time``; evaluation excluded) become (b)'s budget; (b) trains epoch after epoch
and stops at the first iteration where its own CPU seconds reach that budget. Each arm runs
in a fresh subprocess with the same ``torch.set_num_threads`` and data loading in the main
process (``num_workers=0``), so that every CPU second of training is counted in that process.
Both are then evaluated on ``--eval`` with ``detlab.evaluate`` (COCO protocol) and the script
prints AP, AP50, per-class AP50 and the ratios detlab / tutorial.

    .venv/bin/python benchmarks/recipe_vs_tutorial.py                       # FCOS on BCCD, 4 epochs
    .venv/bin/python benchmarks/recipe_vs_tutorial.py --model faster_rcnn_effl0_fpn --eval BCCD:test
    .venv/bin/python benchmarks/recipe_vs_tutorial.py --arms detlab --set schedule=step --set base_lr=0.01
    .venv/bin/python benchmarks/recipe_vs_tutorial.py --train ../shared/datasets/chess/train \\
        --eval ../shared/datasets/chess/test

``--set KEY=VALUE`` changes the detlab arm only (any config key, ``model_kwargs.*`` too), to
measure candidate recipes; ``--size`` fixes the input size of both arms instead of plan.py's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
BCCD = DATASETS / "bccd" / "BCCD"


def _spec(text: str) -> str:
    """``BCCD:val`` → the shared BCCD path with that split; anything else as given."""
    return str(BCCD) + text[4:] if text.startswith("BCCD") else text


def _cpu() -> float:
    return time.process_time()  # user + sys of every thread of this process


def _datasets(args):
    import detlab

    train_ds = detlab.load_dataset(_spec(args.train))
    eval_ds = detlab.load_dataset(_spec(args.eval), classes=list(train_ds.class_names))
    return train_ds, eval_ds


def _planned_kwargs(args, train_ds, sets: dict) -> dict:
    """Build knobs as ``detlab train`` would choose them: ``--size`` or plan.py's input size."""
    from detlab.config import family_of
    from detlab.engine.plan import apply_size_plan

    user = {k.split(".", 1)[1]: v for k, v in sets.items() if k.startswith("model_kwargs.")}
    if args.size:
        user.update(min_size=args.size, max_size=math.ceil(args.size * 4 / 3 / 32) * 32)
    kwargs = dict(user)
    for line in apply_size_plan(kwargs, user, train_ds.records, family_of(args.model), "cpu"):
        print(f"  plan: {line}", file=sys.stderr)
    return kwargs


def _evaluate(model, eval_ds) -> dict:
    import detlab

    coco = detlab.evaluate(model, eval_ds, protocols=("coco",), progress=False)["coco"]
    return {
        "AP": coco["AP"],
        "AP50": coco["AP50"],
        "per_class_AP50": coco["per_class_AP50"],
        "per_class_AP": coco["per_class"],
    }


def arm_detlab(args, sets: dict) -> dict:
    """(a): detlab.train with the defaults (plus ``--set`` changes) for ``--epochs`` epochs."""
    import detlab

    train_ds, eval_ds = _datasets(args)
    kwargs = _planned_kwargs(args, train_ds, sets)
    overrides = {k: v for k, v in sets.items() if not k.startswith("model_kwargs.")}
    model = detlab.build_model(args.model, num_classes=train_ds.num_classes, weights="imagenet", **kwargs)
    out = tempfile.mkdtemp(prefix="recipe_vs_tutorial_")
    cpu0, wall0 = _cpu(), time.perf_counter()
    run = detlab.train(
        model,
        train_ds,
        None,
        out=out,
        epochs=args.epochs,
        weights="imagenet",
        num_workers=0,
        seed=args.seed,
        quiet=True,
        report=False,
        plots=False,
        **overrides,
    )
    cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "epochs": args.epochs,
        "size": kwargs.get("min_size"),
        "overrides": overrides,
        **_evaluate(run.model, eval_ds),
    }


def arm_tutorial(args, sets: dict) -> dict:
    """(b): the tutorial's recipe in plain torch until its CPU seconds reach ``args.budget``."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    import detlab
    from detlab.data.dataset import DetectionDataset, collate
    from detlab.data.transforms import sanitize

    torch.manual_seed(args.seed)
    train_ds, eval_ds = _datasets(args)
    kwargs = _planned_kwargs(args, train_ds, sets)
    model = detlab.build_model(args.model, num_classes=train_ds.num_classes, weights="imagenet", **kwargs)
    # The tutorial's transforms: to tensor and a random horizontal flip; the model resizes inside.
    # sanitize() drops BCCD's two zero-size boxes, which the torchvision losses reject.
    flip = v2.Compose([v2.RandomHorizontalFlip(0.5), *sanitize()])
    data = DetectionDataset(train_ds.records, transforms=flip)
    loader = DataLoader(
        data,
        batch_size=2,
        shuffle=True,
        num_workers=0,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    cpu0, wall0 = _cpu(), time.perf_counter()
    epoch, iters, done = 0, 0, False
    model.train()
    while not done:
        warmup = None
        if epoch == 0:
            warmup = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1.0 / 1000, total_iters=min(1000, len(loader) - 1)
            )
        for images, targets in loader:
            losses = sum(model(images, targets).values())
            if not math.isfinite(float(losses.detach())):
                raise SystemExit(f"tutorial arm: loss is {float(losses.detach())} at iteration {iters}")
            optimizer.zero_grad()
            losses.backward()
            optimizer.step()
            if warmup is not None:
                warmup.step()
            iters += 1
            if _cpu() - cpu0 >= args.budget:
                done = True
                break
        lr_scheduler.step()
        epoch += 1
    cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    model.eval()
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "epochs": iters / len(loader),
        "iters": iters,
        "size": kwargs.get("min_size"),
        **_evaluate(model, eval_ds),
    }


def _run_arm(arm: str, args, budget: float | None) -> dict:
    """One arm in a fresh interpreter (its own CPU clock, same thread count); its result dict."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [sys.executable, __file__, "--arm", arm, "--result", result_path]
    cmd += ["--model", args.model, "--train", args.train, "--eval", args.eval, "--epochs", str(args.epochs)]
    cmd += ["--threads", str(args.threads), "--seed", str(args.seed)]
    cmd += ["--size", str(args.size)] if args.size else []
    cmd += ["--budget", str(budget)] if budget is not None else []
    for item in args.set:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env)
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    return result


def _row(name: str, r: dict, classes: list[str]) -> str:
    per = " | ".join(f"{r['per_class_AP50'].get(c, float('nan')):.3f}" for c in classes)
    return f"| {name} | {r['size']} | {r['epochs']:.2f} | {r['cpu_s']:.0f} | {r['AP']:.3f} | {r['AP50']:.3f} | {per} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fcos_effl0_fpn")
    p.add_argument("--train", default="BCCD:train", help="training data spec (BCCD:… = the shared BCCD)")
    p.add_argument("--eval", default="BCCD:val", help="evaluation data spec")
    p.add_argument("--epochs", type=int, default=4, help="epochs of the detlab arm")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in each arm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=0, help="input shorter side of both arms (0: plan.py's)")
    p.add_argument("--set", action="append", default=[], help="detlab arm only: KEY=VALUE config change")
    p.add_argument("--arms", default="detlab,tutorial", help="which arms to run (comma list)")
    p.add_argument("--budget", type=float, default=None, help="tutorial CPU seconds (default: detlab's)")
    p.add_argument("--json", help="also write both results here")
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()

    import torch

    from detlab.config import parse_set

    sets = parse_set(args.set)
    if args.arm:
        torch.set_num_threads(args.threads)
        result = (arm_detlab if args.arm == "detlab" else arm_tutorial)(args, sets)
        Path(args.result).write_text(json.dumps(result))
        return
    arms = args.arms.split(",")
    results = {}
    if "detlab" in arms:
        results["detlab"] = _run_arm("detlab", args, None)
    if "tutorial" in arms:
        budget = args.budget if args.budget is not None else results.get("detlab", {}).get("cpu_s")
        if budget is None:
            raise SystemExit("--arms tutorial alone needs --budget CPU_SECONDS")
        results["tutorial"] = _run_arm("tutorial", args, budget)
    classes = list(next(iter(results.values()))["per_class_AP50"])
    print(f"\n{args.model}, train {args.train}, eval {args.eval}, {args.threads} thread(s), sets {args.set}")
    print("| recipe | size | epochs | CPU s | AP | AP50 | " + " | ".join(f"AP50 {c}" for c in classes) + " |")
    print("|---" * (6 + len(classes)) + "|")
    for name, r in results.items():
        print(_row(name, r, classes))
    if len(results) == 2:
        a, b = results["detlab"], results["tutorial"]
        print(
            f"detlab / tutorial: AP {a['AP'] / max(b['AP'], 1e-9):.2f}x, AP50 {a['AP50'] / max(b['AP50'], 1e-9):.2f}x"
            f" at CPU {a['cpu_s']:.0f} s vs {b['cpu_s']:.0f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
