"""The model catalogue: one literal dict from name to builder, and ``detlab models``.

Every builder is called as ``builder(name, num_classes, weights="none", **knobs)``
and returns a model with the contract of CONTRIBUTING.md ("Models"); ``knobs`` are the
fields of the family's knobs dataclass (:data:`KNOBS`, listed by :func:`knobs`).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from detlab.errors import ConfigError
from detlab.models import faster_rcnn, fcos, retinanet, ssd
from detlab.models.backbones import RESNET_WEIGHTS, effl0_available
from detlab.models.detr import DetrKnobs, build_detr
from detlab.models.detr.weights import DETR_COCO_URLS
from detlab.models.families import family_of
from detlab.models.knobs import Knob, knob_rows
from detlab.models.weights import is_available_offline

MODELS: dict[str, Callable[..., nn.Module]] = {
    "faster_rcnn_r50_fpn": faster_rcnn.build_faster_rcnn,
    "faster_rcnn_r18_fpn": faster_rcnn.build_faster_rcnn,
    "faster_rcnn_effl0_fpn": faster_rcnn.build_faster_rcnn,
    "detr_r50": build_detr,
    "detr_r18": build_detr,
    "detr_effl0": build_detr,
    "fcos_r18_fpn": fcos.build_fcos,
    "fcos_r34_fpn": fcos.build_fcos,
    "fcos_r50_fpn": fcos.build_fcos,
    "fcos_r101_fpn": fcos.build_fcos,
    "fcos_effl0_fpn": fcos.build_fcos,
    "ssd300_vgg16": ssd.build_ssd,
    "ssdlite_effl0": ssd.build_ssd,
    "retinanet_r50_fpn": retinanet.build_retinanet,
}

#: family → its knobs dataclass: what ``model_kwargs`` / ``**knobs`` may set
KNOBS: dict[str, type] = {
    "faster_rcnn": faster_rcnn.FasterRCNNKnobs,
    "fcos": fcos.FCOSKnobs,
    "retinanet": retinanet.RetinaNetKnobs,
    "ssd": ssd.SSDKnobs,
    "detr": DetrKnobs,
}


def list_models() -> list[str]:
    """The catalogue names, in catalogue order."""
    return list(MODELS)


def knobs(name: str) -> list[Knob]:
    """The build knobs of a catalogue model, in their dataclass's order.

    Args:
        name: a catalogue name (:func:`list_models`).

    Returns:
        One ``Knob(name, type, default, comment)`` row per knob: the annotation as written
        (``int | None``), the default (``None`` where the builder decides, the comment says how)
        and the field's comment.

    Raises:
        ConfigError: unknown name (the message names the nearest one).
    """
    _check_name(name)
    return knob_rows(KNOBS[family_of(name)])


def _check_name(name: str) -> None:
    if name not in MODELS:
        near = difflib.get_close_matches(name, MODELS, n=1, cutoff=0.0)
        hint = f"did you mean {near[0]}? " if near else ""
        raise ConfigError(f"unknown model {name!r}: {hint}`detlab models` lists them all")


def build_model(name: str, num_classes: int, weights: str = "none", **knobs) -> nn.Module:
    """Build a catalogue model.

    Args:
        name: a catalogue name (:func:`list_models`).
        num_classes: ``C``, the number of object classes (no background).
        weights: ``none`` | ``imagenet`` (pretrained backbone) | ``coco``
            (whole detector; class head re-initialised when ``C`` differs) |
            a path to a detlab checkpoint or a state dict.
        **knobs: the fields of the family's knobs dataclass (:func:`knobs` lists them; e.g.
            ``min_size``, ``max_size`` or ``size`` for SSD, ``score_thresh``).

    Returns:
        An ``nn.Module`` with ``name``, ``family``, ``num_classes``,
        ``transform_recipe``, ``build_kwargs``, ``backbone_prefixes`` and
        ``val_losses``; see CONTRIBUTING.md for the call contract.

    Raises:
        ConfigError: unknown name (the message names the nearest one) or knob.
        WeightsError: pretrained weights unavailable or not fitting.
    """
    _check_name(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"num_classes={num_classes!r}: must be a positive integer (the dataset's class count)"
        )
    model = MODELS[name](name, num_classes, weights=weights, **knobs)
    model.weights = str(weights)  # what it started from: a run trained through the API records it
    return model


# --- `detlab models` ----------------------------------------------------------------


_BACKBONES = {**faster_rcnn.BACKBONES, **fcos.BACKBONES, **ssd.BACKBONES, **retinanet.BACKBONES}


def _backbone(name: str) -> str:
    return _BACKBONES.get(name) or name.split("_", 1)[1]  # detr_<backbone>


def _pretrained(name: str, backbone: str) -> tuple[str, str]:
    """``(imagenet, coco)`` cells: ``-`` none published, ``yes`` available offline, ``download`` online only."""

    def cell(available: bool) -> str:
        return "yes" if available else "download"

    if backbone == "effl0":
        imagenet = cell(effl0_available())
    elif backbone == "vgg16":
        imagenet = cell(is_available_offline(ssd.VGG16_IMAGENET_URL))
    else:
        imagenet = cell(is_available_offline(RESNET_WEIGHTS[int(backbone[1:])].url))
    urls = {
        **faster_rcnn.COCO_WEIGHTS,
        **fcos.COCO_WEIGHTS,
        **ssd.COCO_WEIGHTS,
        **retinanet.COCO_WEIGHTS,
        **DETR_COCO_URLS,
    }
    coco = cell(is_available_offline(urls[name])) if name in urls else "-"
    return imagenet, coco


def _default_input(name: str, model: nn.Module) -> tuple[int, int]:
    size = model.build_kwargs.get("size")
    if size:
        return int(size), int(size)
    # a 4:3 image at the model's default resize: min_size on the short side
    short = int(model.build_kwargs.get("min_size", 800))
    return short, min(short * 4 // 3, int(model.build_kwargs.get("max_size", 1333)))


def _gflops(model: nn.Module, hw: tuple[int, int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model([torch.rand(3, *hw)])
    return counter.get_total_flops() / 1e9  # a multiply-add counts as 2 FLOPs


def _flops_key(name: str, num_classes: int, hw: tuple[int, int]) -> str:
    return f"{name}|{num_classes} classes|{hw[0]}x{hw[1]}|torch {torch.__version__}"


def _flops_cache() -> tuple[Path | None, dict[str, float]]:
    """GFLOPs counted before (the count is seconds per model on CPU, the same every time)."""
    from detlab.cache import cache_file

    path = cache_file("gflops.json")
    try:
        known = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    return path, known if isinstance(known, dict) else {}


def _row(name: str, num_classes: int, flops: bool, known: dict[str, float]) -> list[str]:
    family, backbone = family_of(name), _backbone(name)
    imagenet, coco = _pretrained(name, backbone)
    quiet = {} if family == "detr" else {"log": None}
    with torch.device("meta"):  # shapes are enough for params and input: no weight init, no memory
        model = build_model(name, num_classes, **quiet)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    hw = _default_input(name, model)
    key = _flops_key(name, num_classes, hw)
    if flops and key not in known:
        known[key] = _gflops(build_model(name, num_classes, **quiet), hw)
    gflops = f"{known[key]:.1f}" if key in known else "?"
    return [name, family, backbone, f"{params:.1f}", f"{hw[0]}x{hw[1]}", gflops, imagenet, coco]


_COLUMNS = (
    ("model", 22),
    ("family", 12),
    ("backbone", 9),
    ("params(M)", 10),
    ("input", 9),
    ("GFLOPs", 7),
    ("imagenet", 9),
    ("coco", 8),
)


def models_command(num_classes: int = 80, flops: bool = False) -> int:
    """Print the catalogue table (``detlab models``), one row as soon as it is known.

    Args:
        num_classes: the class count the parameters and GFLOPs are counted at.
        flops: count the GFLOPs not counted before (2 per multiply-add, ``FlopCounterMode`` on
            one eval-mode forward of a random image at the model's default input size) and keep
            them in detlab's cache; otherwise show the kept ones and ``?`` for the rest.

    Returns:
        0.
    """
    start = time.perf_counter()
    path, known = _flops_cache()
    before = len(known)
    print("  ".join(h.ljust(w) for h, w in _COLUMNS).rstrip(), flush=True)
    for name in MODELS:
        row = _row(name, num_classes, flops, known)
        print("  ".join(c.ljust(w) for c, (_, w) in zip(row, _COLUMNS)).rstrip(), flush=True)
    if path is not None and len(known) > before:
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(known, indent=1, sort_keys=True))
    missing = (
        ""
        if flops
        else " ? = not counted yet: `detlab models --flops` counts them once (about a minute on 2 CPU cores) and keeps them;"
    )
    print(
        f"\nparams and GFLOPs at {num_classes} classes, one eval forward of a random image at the input shown"
        f" (FlopCounterMode; a multiply-add is 2 FLOPs);{missing}"
        " imagenet/coco: yes = available offline now, download = published, fetched on first use"
        f" into {torch.hub.get_dir()}/checkpoints, - = none published.  ({time.perf_counter() - start:.0f}s)"
    )
    return 0
