"""`detlab train` killed with SIGKILL mid-epoch and resumed ends bitwise identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from detlab.data.synthetic import write_shapes_dataset

# 8 images / batch 2 = 4 steps in the one epoch; checkpoint_every 2 puts the first checkpoint mid-epoch.
SETS = [
    "epochs=1",
    "batch_size=2",
    "num_workers=0",
    "checkpoint_every=2",
    "warmup_iters=2",
    "base_batch=2",
    "eval_batch_size=2",
    "device=cpu",
    "protocols=[coco]",
    "plots=false",
    "report=false",
    "quiet=true",
    "deterministic=true",
    "model_kwargs.min_size=64",
    "model_kwargs.max_size=64",
]


def _cmd(data, out, resume=False):
    cmd = [sys.executable, "-m", "detlab", "train"]
    if resume:
        return cmd + ["--resume", str(out)]
    cmd += [
        "--data",
        f"{data}:train",
        "--val",
        f"{data}:val",
        "--model",
        "fcos_r18_fpn",
        "--weights",
        "none",
        "--out",
        str(out),
    ]
    for s in SETS:
        cmd += ["--set", s]
    return cmd


def _env():
    return {**os.environ, "PYTHONHASHSEED": "0"}


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    data = write_shapes_dataset(tmp_path / "data", num_train=8, num_val=2, size=64, seed=0)
    ref = subprocess.run(
        _cmd(data, tmp_path / "ref"), capture_output=True, text=True, timeout=300, env=_env()
    )
    assert ref.returncode == 0, ref.stderr[-2000:]

    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        _cmd(data, tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env()
    )
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["iteration"] < 4, "killed after the end"
    mid_epoch = ckpt["step_in_epoch"] != 0

    resumed = subprocess.run(
        _cmd(data, tmp_path / "killed", resume=True), capture_output=True, text=True, timeout=300, env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert (a["iteration"], b["iteration"]) == (4, 4)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "weights differ after resume"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    assert repr(a["metrics"]) == repr(b["metrics"])  # repr: NaN (no large objects) equals NaN
    if not mid_epoch:
        pytest.xfail("the kill landed on an epoch boundary this time; the weights still matched")
