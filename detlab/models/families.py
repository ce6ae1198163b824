"""The model family of a name: the one place config, catalogue and builders ask.

A family is what decides the training recipe (``detlab.config.RECIPES``), the transforms
(``detlab.data.transforms``), the loss parts and the input-size plan. A catalogue name starts
with its family (``ssdlite_*`` is an ``ssd``), and so may the name of a model built outside the
catalogue, so the rule is the prefix. This module imports nothing heavy: the config checks use it
before torch is loaded.
"""

from __future__ import annotations

from detlab.errors import ConfigError

#: the families, as their names' prefixes; ``ssd`` also covers ``ssdlite_*``
FAMILIES = ("faster_rcnn", "fcos", "retinanet", "ssd", "detr")


def has_family(model_name: str) -> bool:
    """Whether ``model_name`` starts with a family's prefix."""
    return model_name.startswith(FAMILIES)


def family_of(model_name: str) -> str:
    """The family of a model name from its prefix (``ssdlite_effl0`` → ``ssd``).

    Raises:
        ConfigError: the name starts with no family's prefix.
    """
    for prefix in FAMILIES:
        if model_name.startswith(prefix):
            return prefix
    raise ConfigError(f"model: {model_name!r} has no known family prefix {FAMILIES}; see `detlab models`")
