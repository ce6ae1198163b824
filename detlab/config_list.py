"""``detlab config [--model NAME]``: every config key with its default and its comment, and a model's knobs.

The comments are the ones beside each :class:`~detlab.config.TrainConfig` field (STYLE.md: configs are
dataclasses with a comment per field), read from the source with :mod:`ast` (a field's lines) and
:mod:`tokenize` (the comments on them), so the listing cannot drift from the code. The ``# --- name ---``
lines between fields become the listing's sections.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
from typing import NamedTuple

from detlab.config import TrainConfig, family_recipe

_SECTION = re.compile(r"-+\s*(.*?)\s*-+$")


class ConfigKey(NamedTuple):
    """One row of the listing."""

    section: str
    name: str
    type: str
    default: object
    comment: str


def config_keys() -> list[ConfigKey]:
    """Every TrainConfig field in source order: its section, annotation, default and comment."""
    source = textwrap.dedent(inspect.getsource(TrainConfig))
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    rows, section, last_end = [], "", 0
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        for line in range(last_end + 1, node.lineno):  # a section header between the fields
            m = _SECTION.fullmatch(comments.get(line, ""))
            section = m.group(1) if m else section
        last_end = node.end_lineno
        f = fields[node.target.id]
        text = next((comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments), "")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append(ConfigKey(section, f.name, str(f.type), default, text))
    return rows


def _show(value) -> str:
    from detlab.config import yaml_scalar

    return f"{value:.4g}" if isinstance(value, float) else yaml_scalar(value)


def config_lines(model: str | None = None) -> list[str]:
    """The listing: every key (with the model's recipe default beside the base one), then its knobs."""
    recipe = {}
    if model:
        from detlab.models.families import family_of

        recipe = family_recipe(family_of(model), model)
    lines = [
        "config keys: detlab train --set KEY=VALUE (dict keys: --set model_kwargs.NAME=VALUE), or KEY: VALUE "
        "in a --config YAML"
        + (f"; defaults for {model} (its family's recipe) where they differ" if model else ""),
    ]
    section = None
    for row in config_keys():
        if row.section != section:
            section = row.section
            lines.append(f"\n{section}:")
        default = _show(row.default)
        if row.name in recipe and recipe[row.name] != row.default:
            default = f"{_show(recipe[row.name])} (base {default})"
        lines.append(f"  {row.name:<18} {default:<22} {row.comment}")
    if model:
        lines += _knob_lines(model)
    else:
        lines.append("\nmodel knobs (model_kwargs.NAME): detlab config --model NAME")
    return lines


def _knob_lines(model: str) -> list[str]:
    from detlab.models.catalogue import knobs

    lines = [f"\nmodel knobs of {model} (--set model_kwargs.NAME=VALUE):"]
    for k in knobs(model):
        lines.append(f"  {k.name:<22} {_show(k.default):<12} {k.type:<16} {k.comment}")
    return lines


def config_command(model: str | None = None) -> int:
    """``detlab config [--model NAME]``: print :func:`config_lines`; exit code 0."""
    print("\n".join(config_lines(model)), file=sys.stdout)
    return 0
