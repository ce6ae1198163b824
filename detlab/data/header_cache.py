"""Image header facts kept across runs, so the load-time check of a large split is read once.

A COCO train split holds 118k images; reading each header (size, EXIF orientation,
end-of-file marker) at every start of a training run costs minutes on a cold disk. The
facts of a file that passed are stored in one SQLite file, keyed by the absolute path,
the file size and its modification time in nanoseconds: a file that changes in any way
is probed again. Files that failed are never stored, so a repaired file is seen at once.

Where: ``image_headers.sqlite3`` in detlab's cache folder (:mod:`detlab.cache`); with the
cache off (``DETLAB_CACHE_DIR=off``, or a folder that cannot be written) the check reads
every header.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from detlab.cache import cache_file

Facts = tuple[tuple[int, int], tuple[int, int], int]  # displayed (W, H), raw (W, H), EXIF orientation
Key = tuple[int, int]  # file size in bytes, mtime in ns

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS headers (path TEXT PRIMARY KEY, size INTEGER, mtime INTEGER, "
    "w INTEGER, h INTEGER, raw_w INTEGER, raw_h INTEGER, orientation INTEGER)"
)


def file_key(path: str) -> Key | None:
    """``(size, mtime_ns)`` of a file, ``None`` when it cannot be stat-ed (the probe then reports why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class HeaderCache:
    """Facts of good image files by path; :meth:`get` answers only when size and mtime still match."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: dict[str, tuple] = {}
        self.new: list[tuple] = []
        if path is None:
            return
        try:
            with sqlite3.connect(path, timeout=10) as db:
                db.execute(_SCHEMA)
                self.rows = {r[0]: r[1:] for r in db.execute("SELECT * FROM headers")}
        except (sqlite3.Error, OSError):
            self.path = None  # an unreadable or corrupt cache only costs the probes it would have saved

    @classmethod
    def open(cls) -> HeaderCache:
        return cls(cache_file("image_headers.sqlite3"))

    def get(self, path: str, key: Key | None) -> Facts | None:
        row = self.rows.get(path)
        if row is None or key is None or tuple(row[:2]) != key:
            return None
        w, h, raw_w, raw_h, orientation = row[2:]
        return (w, h), (raw_w, raw_h), orientation

    def put(self, path: str, key: Key | None, facts: Facts) -> None:
        if key is not None:
            (w, h), (raw_w, raw_h), orientation = facts
            self.new.append((path, *key, w, h, raw_w, raw_h, orientation))

    def save(self) -> None:
        """Write the new rows in one transaction (a concurrent writer just makes this one wait)."""
        if self.path is None or not self.new:
            return
        try:
            with sqlite3.connect(self.path, timeout=10) as db:
                db.execute(_SCHEMA)
                db.executemany("INSERT OR REPLACE INTO headers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self.new)
        except (sqlite3.Error, OSError):
            pass  # a read-only home or a full disk: the next run probes again, nothing is lost
        self.new = []
