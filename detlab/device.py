"""Which device a command runs on: one rule for training, evaluation, prediction and benchmarks."""

from __future__ import annotations

import torch


def pick_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (or None) → ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``cuda`` → ``cuda:LOCAL_RANK``.

    Args:
        name: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``, a ``torch.device``, or None.
        local_rank: this process's GPU under torchrun (0 for one process).
    """
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions and matmuls natively (oneDNN: AVX512-BF16 / AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
