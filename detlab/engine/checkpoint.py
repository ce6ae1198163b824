"""Checkpoints: atomic writes, every RNG state, and loading with ``weights_only=True``.

A checkpoint (``RUN/checkpoints/{last,best}.pt``) is a plain dict (CONTRIBUTING.md):
``model`` (the weights to deploy: the EMA weights when EMA is on), ``model_name``,
``num_classes``, ``build_kwargs``, ``class_names``, ``source_ids``, ``source_format``
(the training data's format, for COCO category ids), ``config``,
``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``epoch``, ``iteration``, ``rng``,
``metrics``; plus the engine's own ``train_model`` (raw weights when EMA is on),
``sampler`` and ``progress`` (best metric, early-stopping count).

Everything inside is a tensor, number, string, bool, None, list or dict, so the
file loads with ``torch.load(path, weights_only=True)``: numpy and python RNG
states are converted to lists here and back on load.

A write goes to a temporary file in the same folder, is flushed and fsynced, then
``os.replace``-d over the target: a kill at any moment leaves either the old or
the new checkpoint, never a torn one. A write that fails (disk full, read-only
folder) removes its temporary file, leaves the previous checkpoint as it was and
raises one :class:`~detlab.errors.OutputError` line.

Every ``.pt`` read (checkpoints, ``--weights PATH``, the report) goes through
:func:`detlab.torchfile.read_torch_file`: an empty, truncated or foreign file, or a pickle holding
Python objects beyond tensors and plain values, is one WeightsError line.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from detlab.errors import WeightsError, writing
from detlab.torchfile import read_torch_file


def rng_state() -> dict:
    """Every global RNG state of this process as plain lists and tensors.

    Returns:
        ``{"python": [version, [625 ints], gauss_next], "numpy": {...}, "torch": uint8 tensor,
        "cuda": [uint8 tensor per device]}``.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when CUDA is present)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    """fsync a directory so the rename itself survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, os.replace).

    Args:
        state: a checkpoint dict of plain containers and tensors.
        path: destination; its folder is created.

    Returns:
        The path written. Raises OutputError naming ``path`` and the cause when the
        write fails; ``path`` then still holds the previous checkpoint, if there was one.
    """
    path = Path(path)
    with writing(path, "checkpoint", _kept(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                _torch_save(state, f, path)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    _fsync_dir(path.parent)
    return path


def _kept(path: Path) -> str:
    return f"the previous {path.name} is intact" if path.is_file() else "no checkpoint was written"


def _torch_save(state: dict, f, path: Path) -> None:
    """``torch.save`` whose failed writes surface as OSError, so the write guard words them.

    torch's zip writer reports a failed ``write`` as a RuntimeError (``inline_container.cc …
    unexpected pos``, ``PytorchStreamWriter failed writing file``) without the errno.
    """
    try:
        torch.save(state, f)
    except RuntimeError as e:
        if not re.search(r"inline_container|PytorchStreamWriter|file write failed", str(e)):
            raise
        cause = e.__context__ if isinstance(e.__context__, OSError) else None
        if cause is None:
            free = shutil.disk_usage(path.parent).free
            code = errno.ENOSPC if free < 64 * 2**20 else errno.EIO
            cause = OSError(code, os.strerror(code))
        raise cause from None


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Atomically copy one checkpoint file over another (``last.pt`` → ``best.pt``)."""
    src, dst = Path(src), Path(dst)
    with writing(dst, "checkpoint", _kept(dst)):
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        try:
            with os.fdopen(fd, "wb") as f, open(src, "rb") as s:
                shutil.copyfileobj(s, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    _fsync_dir(dst.parent)
    return dst


_CHECKPOINT_FIX = "use a checkpoint written by `detlab train` (RUN/checkpoints/last.pt or best.pt)"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``.

    Args:
        path: a ``.pt`` file, or a run folder (then ``checkpoints/last.pt``).
        map_location: where tensors land.

    Returns:
        The checkpoint dict. Raises WeightsError naming the file when it is missing, empty,
        unreadable, refused (Python objects inside) or holds no ``model`` weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise WeightsError(
            f"{path}: checkpoint not found; give a run folder with checkpoints/last.pt or a .pt file"
        )
    ckpt = read_torch_file(path, "cannot load checkpoint", _CHECKPOINT_FIX, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise WeightsError(
            f"{path}: field 'model' missing; not a detlab checkpoint (a bare state dict is used "
            f"with `detlab train --weights {path}`)"
        )
    return ckpt


# What `--resume` restores besides the weights (Trainer._restore reads exactly these).
TRAINING_STATE = (
    "config",
    "model_name",
    "num_classes",
    "build_kwargs",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "iteration",
    "rng",
    "sampler",
    "log",
)


def require_training_state(ckpt: dict, path: str | Path) -> None:
    """Raise WeightsError when a checkpoint lacks what ``--resume`` needs (e.g. weights only)."""
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if missing:
        raise WeightsError(
            f"{path}: holds weights but no training state ({', '.join(missing)} missing), so the run "
            f"cannot be resumed; start a new run from these weights with "
            f"`detlab train --weights {path} --out NEW_RUN …`"
        )


def checkpoint_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """``(RUN/checkpoints/last.pt, RUN/checkpoints/best.pt)``."""
    folder = Path(run_dir) / "checkpoints"
    return folder / "last.pt", folder / "best.pt"
