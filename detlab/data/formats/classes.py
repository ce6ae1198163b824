"""The class list: taken from the data, or given by the user, and how labels map onto it.

Order rules (one place): VOC and image folders sort the names found; COCO keeps
category-id order; YOLO keeps its ``names`` order. A user-given list keeps the
user's order; names found in the data but not in the list are reported and their
boxes skipped (counted), never silently dropped.
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
        raise DataError(f"{where}: the class list is empty — give names comma separated or one per line in a file")
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
