"""Reading a PyTorch file: ``torch.load(weights_only=True)`` whose every failure is one line.

The one reader of ``.pt`` files — checkpoints (:mod:`detlab.engine.checkpoint`), ``--weights
PATH`` and pretrained files in torch's hub cache (:mod:`detlab.models.weights`,
:mod:`detlab.models.backbones`), the report's run reader (:mod:`detlab.runfolder`) — so an
empty, truncated or foreign file, or a pickle holding Python objects beyond tensors and plain
values, is one :class:`~detlab.errors.WeightsError` naming the file and the fix wherever it is
read. It sits below both the engine and the models, which both read such files.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from detlab.errors import WeightsError


def _first_line(e: BaseException) -> str:
    """The OS's or torch's first sentence, without torch's paragraphs of advice."""
    lines = str(e).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(e).__name__


def read_torch_file(path: str | Path, failure: str, fix: str, map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)`` whose every failure is one WeightsError line.

    Args:
        path: the file (must exist; callers say what a missing one means).
        failure: how the message starts after the path (``cannot load checkpoint``).
        fix: what the user can do instead, appended to every message.
        map_location: where tensors land.

    Returns:
        The loaded object: tensors, numbers, strings, lists and dicts only.
    """
    path = Path(path)
    head = f"{path}: {failure}"
    try:
        if path.stat().st_size == 0:
            raise WeightsError(f"{head}: the file is empty (0 bytes; a copy or save that was cut off); {fix}")
        return torch.load(path, map_location=map_location, weights_only=True)
    except WeightsError:
        raise
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise WeightsError(f"{head}: not a readable PyTorch file ({_first_line(e)}); {fix}") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        names = f" ({found.group(1)})" if found else ""
        raise WeightsError(
            f"{head}: the file holds Python objects{names} besides tensors and plain values, which "
            f"could run code when loaded, so detlab refuses it; {fix}"
        ) from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise WeightsError(
            f"{head}: not a readable PyTorch file ({type(e).__name__}: {_first_line(e)}); "
            f"it may be truncated; {fix}"
        ) from None
