"""Pretrained weights: finding the file, reading it, and loading it with head surgery.

There is no model hub offline. Every pretrained file detlab can use is looked up
in torch's hub cache (``torch.hub.get_dir()/checkpoints/``, i.e.
``$TORCH_HOME/hub/checkpoints``) under the file name of its official URL. When it
is absent, a download is tried only outside tests; any failure becomes one
:class:`~detlab.errors.WeightsError` line that names the file, the URL and the
folder to put it in.

Loading is by key name: every tensor whose name and shape match is copied; the
tensors of the class head whose shapes differ (another class count) keep their
fresh initialisation, and one log line says what was dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from detlab.errors import WeightsError
from detlab.torchfile import read_torch_file

WEIGHT_CHOICES = ("none", "imagenet", "coco")

# Loading a file that shares fewer tensors than this with the model means the
# file is for another architecture: an error, not a silent half-load.
_MIN_MATCHED_FRACTION = 0.5


def hub_checkpoint_dir() -> Path:
    """The folder where pretrained files are looked for: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def filename_from_url(url: str) -> str:
    """The file name torch's hub cache uses for ``url`` (its last path part)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _downloads_allowed() -> bool:
    # Tests must never touch the network; DETLAB_OFFLINE lets users say the same.
    return "PYTEST_CURRENT_TEST" not in os.environ and not os.environ.get("DETLAB_OFFLINE")


def is_available_offline(url: str) -> bool:
    """Whether the file behind ``url`` is already in the hub cache (no network used)."""
    return (hub_checkpoint_dir() / filename_from_url(url)).is_file()


def resolve_weights_file(filename: str, url: str | None = None) -> Path:
    """Find a pretrained file in the hub cache, downloading it only when allowed.

    Args:
        filename: the file name in the cache (the last part of the official URL).
        url: where it can be downloaded from; ``None`` when it cannot.

    Returns:
        The path of the file inside ``hub_checkpoint_dir()``.

    Raises:
        WeightsError: the file is absent and could not be downloaded (offline,
            inside tests, ``DETLAB_OFFLINE`` set, or the download failed). The
            one-line message names the file, the URL and the folder to put it in.
    """
    folder = hub_checkpoint_dir()
    path = folder / filename
    if path.is_file():
        return path
    where = f"download {url} and place it in {folder}/" if url else f"place it in {folder}/"
    if url is None or not _downloads_allowed():
        raise WeightsError(
            f"pretrained weights file {filename} not found in {folder}: {where} (or set TORCH_HOME)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as e:  # any network / disk failure is the same advice to the user
        path.unlink(missing_ok=True)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(
            f"could not download pretrained weights file {filename} ({reason}): {where}"
        ) from None
    return path


def read_pretrained_file(path: str | os.PathLike, url: str) -> dict[str, Tensor]:
    """A pretrained file from the hub cache; an empty, cut-off or refused one is one line saying to replace it."""
    return read_torch_file(
        path,
        "cannot read pretrained weights",
        f"delete it and download {url} again (or place that file there)",
    )


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read a weights file with ``torch.load(..., weights_only=True)``.

    Accepts a plain state dict (torchvision, timm), a detlab checkpoint (a dict
    with ``model`` and ``model_name``), or any dict holding the state dict under
    ``model`` (e.g. the official DETR checkpoints).

    Args:
        path: the file.

    Returns:
        ``(state_dict, meta)``: the tensors by key, and the checkpoint's other
        plain fields useful for messages (``model_name``, ``num_classes``,
        ``class_names``) — empty for a plain state dict.

    Raises:
        WeightsError: missing, empty, unreadable or refused file (Python objects inside), or no
            state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} not found: use --weights none|imagenet|coco or the path of a .pt/.pth file"
        )
    obj = read_torch_file(
        path,
        "cannot read weights file",
        "it must be a state dict or a detlab checkpoint saved with torch.save",
    )
    meta: dict = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        meta = {k: obj[k] for k in ("model_name", "num_classes", "class_names") if k in obj}
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(
            f"weights file {path} holds no state dict: expected tensors by name, or a dict with a 'model' state dict"
        )
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}, meta


def _is_head_key(key: str, head_prefixes: tuple[str, ...]) -> bool:
    return any(key.startswith(p) for p in head_prefixes)


def load_with_head_surgery(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    head_prefixes: tuple[str, ...] | list[str],
    log: Callable[[str], None] | None = print,
    source: str = "weights",
    adapt: Callable[[str, Tensor, Tensor], Tensor | None] | None = None,
) -> list[str]:
    """Load every tensor whose name and shape match; keep the head fresh where they differ.

    Args:
        model: the model to load into (its current values are the fresh init).
        state_dict: tensors by key, named as in ``model.state_dict()``.
        head_prefixes: key prefixes of the class-count-dependent head
            (e.g. ``("head.classification_head.cls_logits.",)``). Shape
            mismatches there are expected when fine-tuning to another class
            count; anywhere else they mean the file is for another model.
        log: where the one-line summary goes (``None``: silent).
        source: the file or name to put in messages.
        adapt: optional ``adapt(key, src, dst) -> Tensor | None`` called for a
            head tensor whose shape differs; return a tensor of ``dst``'s shape
            to load instead of dropping it (DETR uses it to keep the no-object
            slot), or ``None`` to keep ``dst`` fresh.

    Returns:
        The model keys that were left at their fresh initialisation because the
        file's tensor had another shape (the dropped ones).

    Raises:
        WeightsError: a non-head tensor has another shape, or fewer than half
            of the model's tensors are in the file.
    """
    head_prefixes = tuple(head_prefixes)
    own = model.state_dict()
    to_load: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, dst in own.items():
        src = state_dict.get(key)
        if src is None:
            continue
        if src.shape == dst.shape:
            to_load[key] = src
        elif _is_head_key(key, head_prefixes):
            adapted = adapt(key, src, dst) if adapt is not None else None
            if adapted is not None and adapted.shape == dst.shape:
                to_load[key] = adapted
            else:
                dropped.append(key)
        else:
            raise WeightsError(
                f"{source}: tensor {key} has shape {list(src.shape)} but the model expects {list(dst.shape)}: "
                "these weights are for another architecture; pick the matching model name or --weights none"
            )
    considered = len(to_load) + len(dropped)
    if considered < _MIN_MATCHED_FRACTION * len(own):
        raise WeightsError(
            f"{source}: only {considered} of the model's {len(own)} tensors are in the file: "
            "these weights are for another architecture; pick the matching model name or --weights none"
        )
    model.load_state_dict(to_load, strict=False)
    if log is not None:
        missing = len(own) - considered
        msg = f"weights: loaded {len(to_load)}/{len(own)} tensors from {source}"
        if dropped:
            msg += f"; re-initialised {len(dropped)} head tensors (class count differs): {', '.join(dropped)}"
        if missing:
            msg += f"; {missing} model tensors not in the file kept fresh"
        log(msg)
    return dropped


def parse_weights_spec(weights: str | os.PathLike | None) -> str:
    """Normalise a ``weights`` argument: ``none`` | ``imagenet`` | ``coco`` | a path string.

    Raises:
        WeightsError: a value that is neither a known choice nor an existing file.
    """
    if weights is None:
        return "none"
    spec = str(weights)
    if spec.lower() in WEIGHT_CHOICES:
        return spec.lower()
    if not Path(spec).is_file():
        raise WeightsError(
            f"weights {spec!r}: no such file; use none, imagenet, coco or the path of a .pt/.pth file"
        )
    return spec


def load_detector_weights(
    model: nn.Module,
    spec: str,
    coco_url: str | None,
    head_prefixes: tuple[str, ...] | list[str],
    log: Callable[[str], None] | None = print,
) -> list[str]:
    """Load ``coco`` or a file path into a whole detector; ``none`` / ``imagenet`` do nothing here.

    ``imagenet`` is a backbone-only choice handled while the backbone is built.

    Args:
        model: a catalogue model (uses its ``name`` for messages).
        spec: the output of :func:`parse_weights_spec`.
        coco_url: the official COCO file of this model, or ``None`` when there is none.
        head_prefixes: see :func:`load_with_head_surgery`.
        log: where the one-line summary goes.

    Returns:
        The dropped (re-initialised) head keys.

    Raises:
        WeightsError: no COCO weights for this model, file unavailable, or the
            file does not fit the model.
    """
    name = getattr(model, "name", type(model).__name__)
    if spec in ("none", "imagenet"):
        return []
    if spec == "coco":
        if coco_url is None:
            raise WeightsError(
                f"{name} has no published COCO weights: use --weights imagenet, none, or a path to a checkpoint"
            )
        path = resolve_weights_file(filename_from_url(coco_url), coco_url)
        state_dict, meta = read_weights_file(path)
    else:
        path = Path(spec)
        state_dict, meta = read_weights_file(path)
        other = meta.get("model_name")
        if other and other != name and log is not None:
            log(f"weights: {path} is a {other} checkpoint; loading the tensors that fit {name}")
    return load_with_head_surgery(model, state_dict, head_prefixes, log=log, source=str(path))
