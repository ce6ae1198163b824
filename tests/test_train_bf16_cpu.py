"""bf16 training on CPU: the network modules under autocast, losses and box coding in float32."""

from __future__ import annotations

import math

import pytest
import torch
from test_report_runfolder import one_thread  # noqa: F401  (autouse fixture)
from torch import nn
from torch.utils._pytree import tree_leaves

from detlab import device as devices
from detlab.config import resolve
from detlab.data.dataset import collate, load_dataset
from detlab.data.transforms import build_transforms
from detlab.engine.distributed import DistContext
from detlab.engine.train import Trainer
from detlab.errors import ConfigError
from detlab.models.catalogue import build_model

SIZE = {"min_size": 96, "max_size": 128}


# One family keeps the test fast (emulated bf16 is slow); the step is the same code for every family,
# and tests/test_precision.py checks each family's network_modules in bf16.
@pytest.mark.parametrize("name", ["fcos_effl0_fpn"])
def test_bf16_cpu_training_step_is_finite_float32(name, bccd, tmp_path, monkeypatch):
    if not devices.cpu_has_native_bf16():
        # Emulated bf16 runs the same code, only slower; the config refuses it (test below), so the
        # check is bypassed here to test the training step itself on any CPU.
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    model = build_model(name, 3, weights="none", **SIZE)
    ds = load_dataset(f"{bccd}:test", transforms=build_transforms(model.transform_recipe, train=True, **SIZE))
    cfg = resolve(
        {"model": name, "precision": "bf16", "device": "cpu", "out": str(tmp_path / "run"), "quiet": True}
    )
    trainer = Trainer(model, ds, None, cfg, DistContext())
    assert trainer.amp_dtype is torch.bfloat16

    inner, returned = [], []  # dtypes of conv/linear outputs, and of what each network module returns
    hooks = [
        m.register_forward_hook(lambda m, i, o: inner.append(o.dtype))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ] + [
        model.get_submodule(n).register_forward_hook(
            lambda m, i, o: returned.extend(t.dtype for t in tree_leaves(o) if torch.is_tensor(t))
        )
        for n in model.network_modules
    ]
    images, targets = collate([ds[0], ds[1]])
    with trainer._autocast():
        out = trainer.net(images, targets)
    for h in hooks:
        h.remove()
    assert torch.bfloat16 in inner  # the network's math ran in bf16 ...
    assert returned and set(returned) == {torch.float32}  # ... and the losses were fed float32
    losses = {k: v for k, v in out.items() if k.startswith("loss_")}
    assert losses and all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())

    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    parts = trainer._step([(images, targets)])
    assert math.isfinite(parts["loss"]) and parts["loss"] > 0
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and p.grad.isfinite().all()) for p in params)
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))  # the step moved weights


def test_bf16_cpu_training_is_refused_without_native_bf16(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    for device in ("cpu", "auto"):
        if device == "auto" and torch.cuda.is_available():
            continue  # auto means the GPU there
        with pytest.raises(
            ConfigError, match=r"^config key 'precision': this CPU has no native bf16 .*precision=fp32"
        ):
            resolve({"model": "fcos_effl0_fpn", "precision": "bf16", "device": device})
    assert resolve({"model": "fcos_effl0_fpn", "precision": "fp32", "device": "cpu"}).precision == "fp32"
    # the key and word earlier versions saved in run folders are read as today's
    assert resolve({"model": "fcos_effl0_fpn", "amp": "off", "device": "cpu"}).precision == "fp32"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert resolve({"model": "fcos_effl0_fpn", "precision": "bf16", "device": "cpu"}).precision == "bf16"
