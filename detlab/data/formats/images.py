"""Which files are images, and how readers find them: the one extension rule.

Every reader and ``detlab predict`` use this module, so that a file is an image in
one place exactly when it is one everywhere. The rule: the suffix, compared without
case (``x.Jpg``, ``x.TIF``, ``x.WEBP`` are images), is one of :data:`IMAGE_EXTS`.

What a folder listing reports instead of leaving out silently:

- a broken symbolic link, or a link that loops back on itself: ``skipped``;
- a folder link that leads back into a folder already listed: ``warning``, not followed;
- a macOS AppleDouble file (``._x.jpg``, the resource fork a Mac writes on FAT/exFAT/SMB
  drives, not an image): ``info``, ignored. ``.DS_Store`` / ``Thumbs.db`` are not images
  by the extension rule and are ignored without a line.
"""

from __future__ import annotations

import errno
import os
import unicodedata
from pathlib import Path

from detlab.data.records import Problem

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def is_image_name(path: str | Path) -> bool:
    """Whether a file name has an image extension (case-insensitive, see :data:`IMAGE_EXTS`)."""
    return Path(path).suffix.lower() in IMAGE_EXTS


def has_ext(path: str | Path, ext: str) -> bool:
    """Whether ``path`` ends in ``ext`` (``".xml"``) in any case."""
    return Path(path).suffix.lower() == ext


def is_appledouble(path: str | Path) -> bool:
    """A macOS AppleDouble companion file (``._name``): metadata, never an image or an annotation."""
    return Path(path).name.startswith("._")


def appledouble_problem(path: Path) -> Problem:
    return Problem(
        str(path),
        "file",
        "macOS AppleDouble metadata file (._*), not an image or annotation",
        "ignored",
        "info",
    )


def link_problem(path: Path) -> Problem | None:
    """The skip Problem for a dangling or looping symbolic link, ``None`` when ``path`` can be opened."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Problem(
                str(path),
                "file",
                "symbolic link loop (the link leads back to itself)",
                "point it at a real file or delete it — skipped",
                "skipped",
            )
        return Problem(
            str(path),
            "file",
            f"broken symbolic link to {os.readlink(path)!r} (target missing)",
            "restore the target or delete the link — skipped",
            "skipped",
        )


def _is(test) -> bool:
    """A ``DirEntry`` test that reads a looping link as "no" (the link itself is reported)."""
    try:
        return test()
    except OSError:
        return False


def list_files(folder: Path, accept, recursive: bool = False) -> tuple[list[Path], list[Problem]]:
    """Files under ``folder`` for which ``accept(name)`` holds, sorted, with what was left out.

    Args:
        folder: the folder to list.
        accept: a test on the file name (e.g. :func:`is_image_name`).
        recursive: walk sub-folders too; folder links are followed once (loops reported).

    Returns:
        ``(files, problems)``: regular files (or links to them); one Problem per AppleDouble
        file, broken or looping link, and folder link loop (see the module docstring).
    """
    files: list[Path] = []
    problems: list[Problem] = []
    seen = {os.path.realpath(folder)}
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as e:
            problems.append(
                Problem(
                    str(here),
                    "file",
                    f"cannot list folder ({e.strerror or e})",
                    "check permissions — skipped",
                    "skipped",
                )
            )
            continue
        for entry in entries:
            path = Path(entry.path)
            if recursive and _is(entry.is_dir):
                real = os.path.realpath(path)
                if real in seen:
                    problems.append(
                        Problem(
                            str(path),
                            "folder",
                            f"folder link loop (leads back to {real})",
                            "not followed",
                            "warning",
                        )
                    )
                    continue
                seen.add(real)
                stack.append(path)
                continue
            if not accept(entry.name):
                continue
            if is_appledouble(entry.name):
                problems.append(appledouble_problem(path))
            elif (bad := link_problem(path)) is not None:
                problems.append(bad)
            elif _is(entry.is_file):
                files.append(path)
    return sorted(files), problems


def list_images(folder: Path, recursive: bool = False) -> tuple[list[Path], list[Problem]]:
    """Image files in ``folder`` (see :func:`list_files`)."""
    return list_files(folder, is_image_name, recursive)


def nfc(text: str) -> str:
    """Unicode NFC: macOS stores names decomposed (NFD), most tools write them composed."""
    return unicodedata.normalize("NFC", text)


class ImageIndex:
    """The images of one folder, found by stem or name the way users expect.

    Lookup order for a stem: the same stem (Unicode-normalised), image extensions in
    :data:`IMAGE_EXTS` order; then a unique match ignoring case (what Windows and macOS
    do). Built from one listing, so a lookup costs no file-system call.

    Attributes:
        files: the image files (sorted).
        problems: what the listing left out (see :func:`list_files`).
        reported: the files named in ``problems``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files, self.problems = list_images(folder) if folder.is_dir() else ([], [])
        self.reported = {p.file for p in self.problems}
        self._by_name = {nfc(p.name): p for p in self.files}
        self._by_stem: dict[str, list[Path]] = {}
        self._by_fold: dict[str, list[Path]] = {}
        for p in sorted(
            self.files, key=lambda p: (IMAGE_EXTS.index(p.suffix.lower()), p.suffix != p.suffix.lower())
        ):
            self._by_stem.setdefault(nfc(p.stem), []).append(p)
            self._by_fold.setdefault(nfc(p.stem).casefold(), []).append(p)

    def by_name(self, name: str) -> Path | None:
        """The file called ``name`` (Unicode-normalised), or ``None``."""
        return self._by_name.get(nfc(name))

    def by_stem(self, stem: str) -> tuple[list[Path], bool]:
        """Images with this stem, best first, and whether the match ignored case."""
        exact = self._by_stem.get(nfc(stem))
        if exact:
            return exact, False
        folded = self._by_fold.get(nfc(stem).casefold(), [])
        return (folded, True) if len({nfc(p.stem) for p in folded}) == 1 else ([], False)


def safe_join(folder: Path, name: str) -> Path | None:
    """``folder / name`` when it stays inside ``folder``; ``None`` when ``name`` escapes it (``../``)."""
    if os.path.isabs(name):
        return None
    joined = os.path.normpath(os.path.join(folder, name))
    base = os.path.normpath(folder)
    return Path(joined) if joined == base or joined.startswith(base + os.sep) else None
