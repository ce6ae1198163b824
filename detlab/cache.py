"""detlab's own cache folder: facts that are slow to compute and cheap to keep (image headers, GFLOPs).

``$DETLAB_CACHE_DIR`` (default ``~/.cache/detlab``); ``DETLAB_CACHE_DIR=off`` turns every
cache off. Nothing here is needed for correctness: a missing, unwritable or corrupt cache
only costs the time it would have saved.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_file(name: str) -> Path | None:
    """``<cache folder>/name`` with the folder created, or ``None`` when caching is off or impossible."""
    folder = os.environ.get("DETLAB_CACHE_DIR", "").strip()
    if folder.lower() in ("off", "0", "none"):
        return None
    path = Path(folder or Path.home() / ".cache" / "detlab")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path / name
