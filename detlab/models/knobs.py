"""Model knobs: each family's build options as a dataclass, read and listed the same way.

A family's knobs dataclass (``FCOSKnobs``, ``DetrKnobs`` …) lists every option once, with its
type, its default and a trailing comment saying what it does. This module turns a user's
``**knobs`` into that dataclass (an unknown name is a one-line :class:`ConfigError` with a
"did you mean") and reads the comments back for listings (``detlab config``).

It imports neither torch nor a builder, so the config checks use it at start-up.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import textwrap
import tokenize
from functools import cache
from typing import Any, NamedTuple, TypeVar

from detlab.errors import ConfigError

K = TypeVar("K")


class Knob(NamedTuple):
    """One row of a knobs listing."""

    name: str
    type: str  # the annotation as written, e.g. ``int | None``
    default: Any
    comment: str


def nearest(key: str, names: list[str]) -> str:
    """``did you mean 'x'? `` for the closest of ``names`` (difflib), or ``""`` when none is close."""
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def parse_knobs(cls: type[K], model: str, knobs: dict[str, Any]) -> K:
    """``knobs`` as an instance of the dataclass ``cls``, the rest at their defaults.

    Values are taken as given; the config checks their types before (``detlab.config``).

    Raises:
        ConfigError: ``MODEL: unknown knob 'X'; did you mean 'Y'? knobs: …``.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    for key in knobs:
        if key not in names:
            raise ConfigError(
                f"{model}: unknown knob {key!r}; {nearest(key, names)}knobs: {', '.join(names)}"
            )
    return cls(**knobs)


def knob_rows(cls: type) -> list[Knob]:
    """Every field of the knobs dataclass ``cls``: name, annotation, default and its comment."""
    comments = _field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append(Knob(f.name, str(f.type), default, comments.get(f.name, "")))
    return rows


@cache
def _field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class source: the ``#`` comments inside the field's statement
    (its line, or the lines of a wrapped default), else the comment lines right above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen build): the listing shows no comments
        return {}
    comment_at = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    comments: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        inside = [comment_at[r] for r in range(node.lineno, node.end_lineno + 1) if r in comment_at]
        above, row = [], node.lineno - 1
        while row in comment_at and lines[row - 1].lstrip().startswith("#"):
            above.insert(0, comment_at[row])
            row -= 1
        comments[node.target.id] = " ".join(inside or above)
    return comments
