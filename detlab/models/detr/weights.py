"""DETR weights: the official COCO checkpoint, detlab checkpoints and plain state dicts,
with the class head and the queries fitted to the model being loaded.

``model`` below is a :class:`detlab.models.detr.model.DETR`; this module reads only its
``name``, ``num_classes``, ``knobs``, ``query_embed`` and state dict, so it does not import
the model module (which imports this one).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from detlab.errors import WeightsError
from detlab.models.weights import (
    filename_from_url,
    load_with_head_surgery,
    read_weights_file,
    resolve_weights_file,
)

#: Official DETR checkpoints (``{"model": state_dict}``, 91 COCO classes, 100 queries).
DETR_COCO_URLS = {"detr_r50": "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth"}


def _adapt_head(key: str, src: Tensor, dst: Tensor) -> Tensor | None:
    """Fit a checkpoint's class head or queries to this model; ``None`` when the widths differ.

    ``class_embed``: this model's fresh class rows with the checkpoint's no-object row
    (the last one). ``query_embed``: the checkpoint's first queries, fresh ones after.
    """
    if src.dim() != dst.dim() or src.shape[1:] != dst.shape[1:]:
        return None
    out = dst.clone()
    if key.startswith("class_embed."):
        out[-1] = src[-1]
    else:
        n = min(src.shape[0], dst.shape[0])
        out[:n] = src[:n]
    return out


def load_detr_state_dict(
    model: nn.Module,
    state: dict[str, Tensor],
    reset_class_head: bool | None = None,
    source: str = "state dict",
) -> list[str]:
    """Load a DETR state dict (published key names), adapting the class head and the queries.

    Args:
        model: the model to fill (its current values serve as the fresh init).
        state: tensors by key; a ``module.`` prefix (DDP) is removed.
        reset_class_head: re-initialise ``class_embed``'s class rows, keeping the
            no-object row; ``None`` does so exactly when the class counts differ.
        source: where ``state`` came from, for messages.

    Returns:
        The keys left at their fresh initialisation (none: any other mismatch is an error).

    Raises:
        WeightsError: a tensor outside the class head and queries has another shape,
            or the class counts differ while ``reset_class_head=False``.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    ckpt_w = state.get("class_embed.weight")
    if ckpt_w is not None and ckpt_w.dim() == 2:
        differs = ckpt_w.shape != own["class_embed.weight"].shape
        if differs and reset_class_head is False:
            raise WeightsError(
                f"{source}: class_embed has {ckpt_w.shape[0]} outputs, {model.name} has {model.num_classes + 1} "
                "— set reset_class_head to true (or leave it unset) to fine-tune to this class count"
            )
        if reset_class_head or (reset_class_head is None and differs):
            _fit_in_place(state, own, ("class_embed.weight", "class_embed.bias"))
            print(
                f"weights: {source}: class_embed re-initialised: dropped the checkpoint's {ckpt_w.shape[0] - 1} "
                f"class rows, {model.num_classes} new ones, no-object row kept"
            )
    queries = state.get("query_embed.weight") if model.query_embed is not None else None
    if queries is not None and queries.dim() == 2 and queries.shape[0] != model.knobs.num_queries:
        _fit_in_place(state, own, ("query_embed.weight",))
        kept = min(queries.shape[0], model.knobs.num_queries)
        print(f"weights: {source}: took the first {kept} of the checkpoint's {queries.shape[0]} queries")
    return load_with_head_surgery(model, state, (), source=source)


def _fit_in_place(state: dict[str, Tensor], own: dict[str, Tensor], keys: tuple[str, ...]) -> None:
    for key in keys:
        fitted = _adapt_head(key, state[key], own[key]) if key in state else None
        if fitted is not None:
            state[key] = fitted


def load_detr_weights(model: nn.Module, weights: str, reset_class_head: bool | None = None) -> list[str]:
    """Fill ``model`` from ``coco`` (official checkpoint) or a file path; see :func:`build_detr`."""
    if weights == "coco":
        if model.name not in DETR_COCO_URLS:
            raise WeightsError(
                f"{model.name}: there is no official DETR COCO checkpoint for this backbone (only detr_r50 has one, "
                "detr-r50-e632da11.pth) — use weights=imagenet, a checkpoint path, or none"
            )
        url = DETR_COCO_URLS[model.name]
        path = resolve_weights_file(filename_from_url(url), url)
    else:
        path = Path(weights).expanduser()
    state, _ = read_weights_file(path)
    return load_detr_state_dict(model, state, reset_class_head, source=str(path))
