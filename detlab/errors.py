"""Errors detlab raises on bad input: the CLI prints them as one line, no traceback.

Every message names the file, the field and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator


class DetlabError(Exception):
    """Base class: the CLI prints ``detlab: <message>`` and exits with ``exit_code``."""

    exit_code = 2


class DataError(DetlabError):
    """A dataset path, file or field that cannot be used."""

    exit_code = 1


class ConfigError(DetlabError):
    """An unknown or invalid configuration key or value."""


class WeightsError(DetlabError):
    """Pretrained weights that cannot be found or loaded."""


class OutputError(DetlabError):
    """An output file or folder that cannot be written: disk full, read-only, a file in the way."""

    exit_code = 1


# What the user can do about the OS's reason; the rest get the OS's words and a generic hint.
_WRITE_ADVICE = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded: free space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "no permission to write there: fix the permissions or write elsewhere",
    errno.EPERM: "no permission to write there: fix the permissions or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EEXIST: "a file is in the way of a folder of that name: choose another path",
    errno.EISDIR: "a folder is in the way of a file of that name: choose another path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def output_error(path: str | os.PathLike, what: str, err: OSError, after: str = "") -> OutputError:
    """One line for an OSError met while writing ``what`` at ``path``: path, cause, what to do.

    Args:
        path: the file or folder being written (the user's path, not a temp name).
        what: a few words for the thing written (``checkpoint``, ``metrics``, ``dataset``…).
        err: the OSError.
        after: a sentence about what was kept or removed, appended.
    """
    reason = err.strerror or str(err) or type(err).__name__
    where = f" at {err.filename}" if err.filename and os.fspath(err.filename) != os.fspath(path) else ""
    advice = _WRITE_ADVICE.get(err.errno, "check the path and the disk")
    return OutputError(
        f"{os.fspath(path)}: cannot write {what}: {reason}{where} — {advice}"
        + (f"; {after}" if after else "")
    )


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str, after: str = "") -> Iterator[None]:
    """Turn an OSError inside the block into :func:`output_error`'s one line (the guard for every write)."""
    try:
        yield
    except OSError as e:
        raise output_error(path, what, e, after) from None
