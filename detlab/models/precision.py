"""Mixed-precision inference that keeps boxes in float32.

``torch.autocast`` around a whole detector call also runs the decode in half
precision: the head's bf16 outputs turn into bf16 boxes, which step by 2 px
between 256 and 512 px and by 4 px above (fp16: 0.25 px and 0.5 px). So
:func:`autocast_network` autocasts only the modules that do the network's math —
each family names them in ``network_modules`` — and casts what they return back
to float32; resizing, anchor/box decoding, top-k, NMS and the mapping back to
image pixels run in float32 as in a float32 call.

On CPUs with native bf16 (AVX512-BF16 / AMX), bf16 convolutions and matmuls run
through oneDNN; that is detlab's fastest eager CPU path for the convolutional
families (figures: ``benchmarks/bench_models.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from detlab import device as devices  # module attribute: a test can stand in for the CPU check
from detlab.config import precision_word
from detlab.errors import ConfigError


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (a :data:`detlab.config.PRECISIONS` word) on ``device``.

    ``auto`` is mixed precision where it is fast and measured not to cost accuracy: bf16 on a
    CUDA GPU that has it, else fp16; float32 on a CPU (bf16 there is asked for by name).
    ``fp32`` gives ``None`` (no autocast). Raises :class:`ConfigError` for fp16 on CPU (no fast
    kernels), for bf16 on a CPU without native bf16 (it would run several times slower than
    float32) and for bf16 on a GPU without it.
    """
    precision = precision_word(precision)
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp32":
        return None
    if device.type == "cpu":
        if precision == "fp16":
            raise ConfigError(
                "precision fp16 on CPU: PyTorch has no fast fp16 CPU kernels — use bf16 or fp32"
            )
        if not devices.cpu_has_native_bf16():
            raise ConfigError(
                "precision bf16 on CPU: this CPU has no native bf16 (AVX512-BF16 / AMX), "
                "so it would be slower than float32 — use fp32"
            )
    elif precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision bf16: this GPU has no bf16 support — use fp16 (or auto) on CUDA")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def dtype_word(dtype: torch.dtype | None) -> str:
    """The precision word of what :func:`amp_dtype` chose (``fp32`` for ``None``), for stamps and logs."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def _to_float32(tree):
    return tree_map(lambda t: t.float() if isinstance(t, Tensor) and t.is_floating_point() else t, tree)


def _autocast_forward(forward, device_type: str, dtype: torch.dtype):
    def run(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            out = forward(*args, **kwargs)
        return _to_float32(out)

    return run


@contextlib.contextmanager
def autocast_network(model: nn.Module, dtype: torch.dtype | None, device_type: str = "cpu") -> Iterator[None]:
    """Inside the block, ``model``'s ``network_modules`` run under autocast and return float32.

    Args:
        model: a catalogue detector (it lists its network submodules, dotted names, in
            ``network_modules``); a model without the list is autocast whole.
        dtype: ``torch.bfloat16`` / ``torch.float16``; ``None`` leaves the model as it is.
        device_type: ``cpu`` or ``cuda``.
    """
    if dtype is None:
        yield
        return
    names = getattr(model, "network_modules", None)
    if not names:
        with torch.autocast(device_type, dtype=dtype):
            yield
        return
    modules = [model.get_submodule(name) for name in names]
    for m in modules:
        m.forward = _autocast_forward(m.forward, device_type, dtype)  # instance attribute shadows the method
    try:
        yield
    finally:
        for m in modules:
            del m.forward
