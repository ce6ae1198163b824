"""The class list: taken from the data, or given by the user, and how labels map onto it.

Order rules (one place): VOC and image folders sort the names found; COCO keeps
category-id order; YOLO keeps its ``names`` order. A user-given list keeps the
user's order; names found in the data but not in the list are reported and their
boxes skipped (counted), never silently dropped.

Clashes: names are exact strings. Two spellings that differ only in case (``RBC``,
``rbc``) stay two classes and are reported as a warning naming both; a name listed
twice in a list that maps indices to names (YOLO ``names``, ``classes.txt``) is an
error, since the boxes of both indices would merge into one class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detlab.errors import DataError


def parse_class_list(classes: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Read a user-given class list.

    Args:
        classes: ``None``; a list of names; a comma-separated string
            (``"cat,dog"``); or a path to a text file with one name per line.

    Returns:
        The names in the given order, or ``None`` when none was given.

    Raises:
        DataError: empty or duplicate names.
    """
    if classes is None:
        return None
    if isinstance(classes, str):
        path = Path(classes)
        if path.is_file():
            names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            where = str(path)
        else:
            names = [c.strip() for c in classes.split(",") if c.strip()]
            where = "--classes"
    else:
        names, where = [str(c) for c in classes], "classes"
    if not names:
        raise DataError(
            f"{where}: the class list is empty — give names comma separated or one per line in a file"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{where}: duplicate class names {dup} — list each class once")
    return names


def resolve_names(found: list[str], given: list[str] | None, sort: bool) -> list[str]:
    """The class list for a dataset.

    Args:
        found: class names present in the data, in the data's order.
        given: the user's list (order kept), or ``None``.
        sort: sort ``found`` (VOC and folder convention) when no list is given.

    Returns:
        ``C`` class names; index ``i`` is label ``i``.
    """
    if given is not None:
        return list(given)
    unique = list(dict.fromkeys(found))
    return sorted(unique) if sort else unique


def case_clashes(names: list[str]) -> list[tuple[str, str]]:
    """Pairs ``(first, other)`` of distinct names that are equal ignoring case, in ``names`` order."""
    first: dict[str, str] = {}
    pairs = []
    for n in names:
        key = n.casefold()
        if key in first and first[key] != n:
            pairs.append((first[key], n))
        first.setdefault(key, n)
    return pairs


def indexed_names(names: list, where: str) -> list[str]:
    """Check a list whose position is the class index (YOLO ``names``, ``classes.txt``).

    Args:
        names: the entries, index ``i`` names class ``i``.
        where: ``file: field`` for messages.

    Returns:
        The names as strings.

    Raises:
        DataError: an empty or non-text entry, or a name listed twice (its indices would merge).
    """
    out = []
    for i, n in enumerate(names):
        if isinstance(n, (dict, list)) or n is None or not str(n).strip():
            raise DataError(f"{where}[{i}]: {n!r} is not a class name — give one name per index")
        out.append(str(n).strip())
    seen: dict[str, int] = {}
    for i, n in enumerate(out):
        if n in seen:
            raise DataError(
                f"{where}: {n!r} is listed twice (indices {seen[n]} and {i}) — boxes of both would merge into "
                "one class; give each index its own name"
            )
        seen[n] = i
    return out


def label_lookup(names: list[str]) -> dict[str, int]:
    """Name → label index for a class list."""
    return {n: i for i, n in enumerate(names)}


def remap_labels(labels: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Map source labels through a lookup table; ``-1`` marks classes not kept.

    Args:
        labels: ``int64 [N]`` source indices in ``0..len(mapping)-1``.
        mapping: ``int64 [S]`` new index per source index, ``-1`` when dropped.

    Returns:
        ``int64 [N]`` new indices (``-1`` where dropped).
    """
    if labels.size == 0:
        return labels.astype(np.int64)
    return mapping[labels].astype(np.int64)
