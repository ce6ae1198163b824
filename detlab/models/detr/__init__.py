"""detlab's DETR, one module per part: ``model.py`` (the model and :func:`build_detr`),
``knobs.py``, ``backbone.py``, ``transformer.py``, ``layers.py``, ``criterion.py`` (matcher and
losses), ``weights.py`` and ``query_selection.py``. The imports run one way, from ``model.py``
down to the parts; this file only names what other modules use."""

from detlab.models.detr.knobs import DetrKnobs
from detlab.models.detr.model import DETR, build_detr

__all__ = ["DETR", "DetrKnobs", "build_detr"]
