"""How close a ``--time`` run ends to its budget: planned vs actual wall time, and the schedule's end.

Runs ``detlab train --time BUDGET`` in a fresh process (BCCD, ``fcos_effl0_fpn --weights imagenet`` by
default), then reads ``RUN/plan.json`` and the last checkpoint and prints the plan (s/step, s/eval,
epochs or steps), the expected and the actual time, the ratio to the budget, and whether the run
reached the last planned step at the schedule's final learning rate. The goal (issue 15): within
±10 % of the budget with the schedule completed. On a shared machine the measured costs at the start
may not hold for the rest of the run: the load (``os.getloadavg``) is printed before and after.

    python benchmarks/time_budget.py --time 10m [--data DATA] [--model NAME] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "datasets" / "bccd" / "BCCD"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time", default="10m")
    p.add_argument("--data", default=str(BCCD))
    p.add_argument("--model", default="fcos_effl0_fpn")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="time_budget_")) / "run"
    cmd = [sys.executable, "-m", "detlab", "train", "--data", args.data, "--model", args.model]
    cmd += ["--weights", args.weights, "--out", str(out), "--time", args.time]
    for s in args.set:
        cmd += ["--set", s]
    load0 = os.getloadavg()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO)
    wall = time.monotonic() - t0
    if proc.returncode:
        print(f"detlab train failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    plan = json.loads((out / "plan.json").read_text())
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    fn = ckpt["scheduler"]["lr_lambdas"][0]
    t = plan["timing"]
    print(
        f"budget {plan['budget_s']:.0f} s; measured {t['s_iter']:.2f} s/step, {t['s_eval']:.1f} s/eval, "
        f"{t['s_epoch']:.1f} s/epoch start, {t['s_finish']:.1f} s finish"
    )
    print(
        f"plan: epochs {plan['epochs']}, steps {plan['total_iters']}, evaluations {plan['evals']}, "
        f"fits {plan['fits']}; expected {plan['expected_s']:.0f} s"
    )
    print(
        f"took {plan['took_s']:.0f} s in the run ({wall:.0f} s process wall): "
        f"{plan['took_s'] / plan['budget_s']:.3f}x the budget, {plan['took_s'] / plan['expected_s']:.3f}x the plan"
    )
    ended = ckpt["iteration"] == plan["total_iters"]
    print(
        f"schedule: iteration {ckpt['iteration']} of {plan['total_iters']} planned ({'completed' if ended else 'NOT completed'}"
        f"), planned end step {fn.get('remaps', [[0, 0, fn['total_iters']]])[-1][2]}"
    )
    print(f"load average before {load0[0]:.1f}, after {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
