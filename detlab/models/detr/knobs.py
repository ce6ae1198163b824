"""DETR's build options: :class:`DetrKnobs` (one field per knob, with its default and comment)
and the checks on their values."""

from __future__ import annotations

from dataclasses import dataclass

from detlab.errors import ConfigError
from detlab.models.knobs import parse_knobs as parse_knob_dict


@dataclass
class DetrKnobs:
    """Build options of a DETR model; defaults are the published DETR-R50 ones."""

    min_size: int = 800  # shorter side after the internal resize (eval and default train)
    max_size: int = 1333  # cap on the longer side after the resize
    train_min_sizes: tuple[int, ...] | None = None  # multi-scale training: a shorter side drawn per image
    num_queries: int = 100  # object queries = most detections per image
    hidden_dim: int = 256  # transformer width D
    nheads: int = 8  # attention heads
    enc_layers: int = 6  # encoder layers
    dec_layers: int = 6  # decoder layers
    dim_feedforward: int = 2048  # FFN width inside each layer
    dropout: float = 0.1  # dropout inside the transformer
    aux_loss: bool = True  # losses on every decoder layer, not only the last
    dilation: bool = False  # DC5: dilate the last stage (ResNet layer4, EfficientNet stages 5-6): stride 16
    train_backbone: bool = True  # False freezes the whole backbone (stem and first stage are always frozen)
    eos_coef: float = 0.1  # CE weight of the no-object class
    cost_class: float = 1.0  # matcher weight of -p(class)
    cost_bbox: float = 5.0  # matcher weight of L1
    cost_giou: float = 2.0  # matcher weight of -GIoU
    loss_ce: float = 1.0  # loss weight of CE
    loss_bbox: float = 5.0  # loss weight of L1
    loss_giou: float = 2.0  # loss weight of 1-GIoU
    reset_class_head: bool | None = None  # re-initialise class_embed on load; None: when class counts differ
    # decoder queries from the top encoder tokens, boxes refined from theirs (query_selection.py);
    # adds query_selection.* weights and *_enc losses — off in the published architecture
    query_selection: bool = False


def parse_knobs(knobs: dict, model: str = "DETR") -> DetrKnobs:
    """Knob dict → :class:`DetrKnobs`; unknown names or bad values raise a one-line ``ConfigError``."""
    k = parse_knob_dict(DetrKnobs, model, knobs)
    if k.train_min_sizes is not None:
        k.train_min_sizes = tuple(int(s) for s in k.train_min_sizes)
    for name in (
        "min_size",
        "max_size",
        "num_queries",
        "hidden_dim",
        "nheads",
        "dec_layers",
        "dim_feedforward",
    ):
        if int(getattr(k, name)) < 1:
            raise ConfigError(f"DETR knob {name}={getattr(k, name)} must be at least 1")
    if k.hidden_dim % k.nheads or k.hidden_dim % 2:
        raise ConfigError(
            f"DETR knob hidden_dim={k.hidden_dim} must be even and divisible by nheads={k.nheads}"
        )
    return k
