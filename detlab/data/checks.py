"""The dataset doctor: the checks ``load_dataset(check=True)`` runs, and ``detlab check``.

Per image: missing, zero-byte, unreadable or truncated file; image size against the
annotated size; per box: NaN, zero or negative size, outside the image. What is safe
to fix is fixed and counted (a box crossing the border is clipped to the image; an
annotation without a size takes the image's); what is not is skipped and counted (a
box with no area left, an image that cannot be read). Nothing is dropped without a
:class:`~detlab.data.records.Problem`.

Size mismatch rule: when the image is a uniformly rescaled version of the annotated
size (same aspect within 1 %), boxes are rescaled with it (``fixed``); otherwise they
are kept in pixels and clipped to the real image (``warning``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from detlab.data.records import ImageRecord, Problem, Records
from detlab.log import logger

EXIF_ORIENTATION = 0x0112
SIZE_BINS = [0, 8, 16, 32, 64, 128, 256, 512, np.inf]  # sqrt(box area) in px, for the histogram
# Training resizes the shorter side up to the model's size: a strip a few pixels high (a 3x700 scan line)
# becomes a sliver no feature pyramid can hold. Such images are skipped for training, not for scoring.
MIN_SIDE = 8
MAX_ASPECT = 32


def pixel_limit() -> int:
    """Largest ``width * height`` detlab opens: ``$DETLAB_MAX_PIXELS``, default PIL's own
    decompression-bomb limit (2 × ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels).

    A larger value also raises PIL's limit (once, for this process), since PIL refuses such
    files by itself before detlab can look at their size.
    """
    default = 2 * int(Image.MAX_IMAGE_PIXELS or 89_478_485)
    text = os.environ.get("DETLAB_MAX_PIXELS", "").strip()
    if not text:
        return default
    try:
        limit = int(float(text))
    except ValueError:
        from detlab.errors import ConfigError

        raise ConfigError(
            f"DETLAB_MAX_PIXELS: {text!r} is not a number — give a pixel count, e.g. 400000000"
        ) from None
    if limit > default:
        Image.MAX_IMAGE_PIXELS = limit // 2 + 1
    return limit


def too_many_pixels(size: tuple[int, int] | None) -> str | None:
    """The one-line reason an image of ``(W, H)`` is refused, or ``None``; ``size=None``: PIL refused it unread."""
    limit = pixel_limit()
    if size is not None and size[0] * size[1] <= limit:
        return None
    what = f"{size[0]}x{size[1]} pixels, over" if size is not None else "more pixels than"
    return (
        f"{what} the limit of {limit / 1e6:.3g} megapixels (a decompression bomb or a huge scan; "
        "set DETLAB_MAX_PIXELS to allow it)"
    )


@dataclass
class CheckResult:
    """Counts from :func:`validate_records` (what was read, kept, fixed, skipped)."""

    images_read: int = 0
    boxes_read: int = 0
    images_skipped: int = 0
    boxes_skipped: int = 0
    boxes_fixed: int = 0
    sizes_fixed: int = 0
    negatives: int = 0
    severity: dict = field(default_factory=dict)

    @property
    def unusable(self) -> bool:
        return self.severity.get("error", 0) > 0


def box_field(rec: ImageRecord, j: int) -> str:
    """The source field of box ``j`` of a record, for messages."""
    extra = rec.extra
    if "ann_ids" in extra:
        return f"annotations[id={int(extra['ann_ids'][j])}].bbox"
    if "lines" in extra:
        return f"line {int(extra['lines'][j])}"
    if "objects" in extra:
        return f"object[{int(extra['objects'][j])}].bndbox"
    return f"boxes[{j}]"


def _tail_complete(path: Path) -> bool:
    """Cheap truncation test: JPEG must hold its end marker near the end, PNG its IEND chunk."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(os.path.getsize(path) - 1024, 0))
        tail = f.read()
    if head[:2] == b"\xff\xd8":
        return b"\xff\xd9" in tail
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" in tail
    return True


def probe_image(path: Path, decode: bool) -> tuple[tuple[int, int], tuple[int, int], int] | Problem:
    """Header facts of an image, or the Problem that makes it unusable.

    Args:
        path: the image file.
        decode: decode every pixel (``detlab check``); otherwise only when the cheap
            end-of-file test suggests truncation.

    Returns:
        ``(displayed (W, H), raw (W, H), exif orientation)`` or a ``skipped`` Problem.
    """

    def bad(msg: str, fix: str = "replace or remove the image — image skipped") -> Problem:
        return Problem(str(path), "file", msg, fix, "skipped")

    try:
        if os.path.getsize(path) == 0:
            return bad("zero-byte file")
        with Image.open(path) as im:
            raw = im.size
            if (huge := too_many_pixels(raw)) is not None:
                return bad(huge)
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
            if decode or not _tail_complete(path):
                im.load()
    except FileNotFoundError:
        return bad("image file not found", "restore it or remove its annotation — image skipped")
    except Image.DecompressionBombError:
        return bad(too_many_pixels(None))
    except (OSError, SyntaxError, ValueError) as e:
        return bad(f"unreadable or truncated image ({e})")
    shown = (raw[1], raw[0]) if orientation in (5, 6, 7, 8) else raw
    return shown, raw, orientation


def probe_images(files: list[str], decode: bool, every: float = 5.0) -> list:
    """:func:`probe_image` for every file, with a progress line every ``every`` seconds on stderr.

    Header probes (``decode=False``) of files that passed before are answered from the
    :mod:`~detlab.data.header_cache` when the file's size and mtime are unchanged.
    """
    from detlab.data.header_cache import HeaderCache, file_key

    cache = HeaderCache.open() if not decode else HeaderCache(None)
    out, cached = [], 0
    start = last = time.monotonic()
    for i, path in enumerate(files):
        key = file_key(path) if cache.path is not None else None
        facts = cache.get(path, key)
        if facts is not None:
            cached += 1
        else:
            facts = probe_image(Path(path), decode)
            if isinstance(facts, tuple):
                cache.put(path, key, facts)
        out.append(facts)
        now = time.monotonic()
        if now - last >= every and i + 1 < len(files):
            left = (now - start) / (i + 1) * (len(files) - i - 1)
            logger.info(
                f"detlab: {'decoding images' if decode else 'reading image headers'}: {i + 1}/{len(files)}, "
                f"about {left:.0f} s left ({cached} unchanged since an earlier run)"
            )
            last = now
    cache.save()
    return out


def too_thin(shown: tuple[int, int]) -> str | None:
    """Why an image of displayed size ``(W, H)`` cannot be trained on, or ``None`` (see :data:`MIN_SIDE`)."""
    short, long = min(shown), max(shown)
    if short < MIN_SIDE:
        return f"{shown[0]}x{shown[1]}: shorter side under {MIN_SIDE} px, too thin to resize for training"
    if long > MAX_ASPECT * short:
        return f"{shown[0]}x{shown[1]}: aspect ratio 1:{long / short:.0f} over 1:{MAX_ASPECT}, too thin to resize for training"
    return None


def _check_size(
    rec: ImageRecord, shown: tuple[int, int], raw: tuple[int, int], orientation: int, problems: list[Problem]
) -> bool:
    """Reconcile the annotated size with the real one; return True when a size was fixed."""
    size = (rec.width, rec.height)
    where = str(rec.ann_file or rec.file)
    if size == shown:
        return False
    if rec.width <= 0 or rec.height <= 0:
        rec.width, rec.height = shown
        return True
    if size == raw and orientation in (5, 6, 7, 8):
        problems.append(
            Problem(
                where,
                "size",
                f"annotated {size[0]}x{size[1]} is the raw frame of an EXIF-rotated image (orientation {orientation})",
                "boxes are rotated with the image",
                "info",
            )
        )
        return False
    sx, sy = shown[0] / rec.width, shown[1] / rec.height
    if abs(sx / sy - 1) < 0.01:
        rec.boxes = (rec.boxes * np.float32([sx, sy, sx, sy])).astype(np.float32)
        fix, severity = "image was resized: boxes scaled to match", "fixed"
    else:
        fix, severity = (
            "boxes kept in pixels and clipped to the image; re-export the annotation if they look wrong",
            "warning",
        )
    problems.append(
        Problem(
            where,
            "size",
            f"annotated {size[0]}x{size[1]} but {Path(rec.file).name} is {shown[0]}x{shown[1]}",
            fix,
            severity,
        )
    )
    rec.width, rec.height = shown
    return True


def _filter_boxes(rec: ImageRecord, keep: np.ndarray) -> None:
    n = rec.num_boxes
    rec.boxes, rec.labels = rec.boxes[keep], rec.labels[keep]
    rec.difficult, rec.iscrowd = rec.difficult[keep], rec.iscrowd[keep]
    for key, value in rec.extra.items():
        if isinstance(value, np.ndarray) and value.shape[:1] == (n,):
            rec.extra[key] = value[keep]


def check_boxes(rec: ImageRecord, problems: list[Problem]) -> tuple[int, int]:
    """Validate one record's boxes against its size: skip NaN / empty / outside, clip crossing ones.

    Args:
        rec: the record (``width``/``height`` > 0 for clipping); modified in place.
        problems: extended with one Problem per box fixed or skipped.

    Returns:
        ``(fixed, skipped)`` box counts.
    """
    b = rec.boxes.astype(np.float64)  # [N, 4]
    if b.shape[0] == 0:
        return 0, 0
    where = str(rec.ann_file or rec.file)
    finite = np.isfinite(b).all(1)
    positive = finite & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    lim = np.array([rec.width, rec.height, rec.width, rec.height], np.float64)
    clipped = np.clip(b, 0, lim) if rec.width > 0 and rec.height > 0 else b
    inside = positive & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    # Float noise from normalised formats (YOLO's -1e-9) is clipped without a report; real overhangs are reported.
    moved = inside & (np.abs(clipped - b).max(1) > 1e-3)
    for j in np.flatnonzero(~inside):
        if not finite[j]:
            msg = f"NaN or infinite coordinate {b[j].tolist()}"
        elif not positive[j]:
            msg = f"zero or negative size (x1={b[j, 0]:g} y1={b[j, 1]:g} x2={b[j, 2]:g} y2={b[j, 3]:g})"
        else:
            msg = f"box {np.round(b[j], 2).tolist()} lies outside the {rec.width}x{rec.height} image"
        problems.append(
            Problem(where, box_field(rec, j), msg, "fix or delete the box — box skipped", "skipped")
        )
    for j in np.flatnonzero(moved):
        problems.append(
            Problem(
                where,
                box_field(rec, j),
                f"box {np.round(b[j], 2).tolist()} crosses the {rec.width}x{rec.height} image border",
                "clipped to the image",
                "fixed",
            )
        )
    rec.boxes = clipped.astype(np.float32)
    if not inside.all():
        _filter_boxes(rec, inside)
    _warn_duplicates(rec, where, problems)
    return int(moved.sum()), int((~inside).sum())


def _warn_duplicates(rec: ImageRecord, where: str, problems: list[Problem]) -> None:
    """Warn of a box repeated with its class and coordinates (to 0.01 px) in one image.

    Kept as written (evaluation must see what pycocotools sees), but as ground truth the copy is
    a box no detection can match once NMS has removed duplicates, and Ultralytics' loader drops
    it, so the two tools would count different boxes.
    """
    first: dict[tuple, int] = {}
    for j, (box, label) in enumerate(zip(np.round(rec.boxes.astype(np.float64), 2), rec.labels)):
        key = (int(label), *box.tolist())
        if key in first:
            problems.append(
                Problem(
                    where,
                    box_field(rec, j),
                    f"box {box.tolist()} (xyxy) repeats {box_field(rec, first[key])} with the same class: a duplicate",
                    "delete one of them (kept: a detector can match only one, the other counts as missed)",
                    "warning",
                )
            )
        else:
            first[key] = j


IMAGE_FIELDS = ("file", "xml", "annotation", "filename")


def is_image_level(problem: Problem) -> bool:
    """Whether a Problem is about a whole image (vs one box or the dataset)."""
    return problem.field in IMAGE_FIELDS or problem.field.startswith("images[")


def _reader_counts(records: Records) -> CheckResult:
    """The counts a check starts from: what the reader read, and what it already skipped (reported)."""
    reader_skips = [p for p in records.problems if p.severity == "skipped"]
    result = CheckResult(images_read=len(records.images), boxes_read=records.num_boxes)
    result.images_skipped = sum(map(is_image_level, reader_skips))
    result.boxes_skipped = len(reader_skips) - result.images_skipped
    result.boxes_read += result.boxes_skipped
    return result


def validate_records(records: Records, decode: bool = False) -> CheckResult:
    """Run every check on a Records in place: fix what is safe, skip what is not, record Problems.

    Args:
        records: read by a format reader; images and boxes are fixed/dropped in place and
            each finding is appended to ``records.problems``.
        decode: decode every image fully (slow; ``detlab check``); else headers only.

    Returns:
        The counts (reader skips included).
    """
    problems = records.problems
    result = _reader_counts(records)
    kept, seen_files = [], {}
    for rec, facts in zip(records.images, probe_images([str(r.file) for r in records.images], decode)):
        if isinstance(facts, tuple) and (thin := too_thin(facts[0])) is not None:
            facts = Problem(
                str(rec.file), "file", thin, "crop or pad it, or remove it — image skipped", "skipped"
            )
        if isinstance(facts, Problem):
            problems.append(facts)
            result.images_skipped += 1
            continue
        result.sizes_fixed += _check_size(rec, *facts, problems)
        fixed, skipped = check_boxes(rec, problems)
        result.boxes_fixed += fixed
        result.boxes_skipped += skipped
        if rec.file in seen_files:
            problems.append(
                Problem(
                    str(rec.file),
                    "file",
                    f"image used by two records (ids {seen_files[rec.file]} and {rec.image_id})",
                    "remove one of the duplicates",
                    "warning",
                )
            )
        seen_files[rec.file] = rec.image_id
        result.negatives += rec.num_boxes == 0
        kept.append(rec)
    ids = [r.image_id for r in kept]
    if len(set(ids)) != len(ids):
        problems.append(
            Problem(
                str(records.root),
                "image_id",
                "duplicate image ids after reading",
                "give every image its own id",
                "error",
            )
        )
    if not kept:
        problems.append(
            Problem(str(records.root), "images", "no usable image", "fix the problems above", "error")
        )
    records.images = kept
    for p in problems:
        result.severity[p.severity] = result.severity.get(p.severity, 0) + 1
    return result


def validate_annotations(records: Records) -> CheckResult:
    """The checks for *scoring*: ground truth as annotated, image files only where a size is needed.

    Scoring a results file is a function of the annotations and the detections
    (DESIGN.md, "Evaluation protocols"), so unlike :func:`validate_records` this never
    drops an image because its file is missing or unreadable, and never clips or drops a
    finite box: pycocotools and the VOC devkit score boxes exactly as the file gives them.
    Only a box with a NaN or infinite coordinate, which no protocol can score, is skipped.
    An image header is read only when the annotation declares no size; other image files
    are just looked at (present, non-empty, complete) so that a problem is still reported
    on one line — with what it means for the score — instead of turning into lost ground truth.

    Args:
        records: read by a format reader; sizes are filled in place where a header was read,
            each finding is appended to ``records.problems``.

    Returns:
        The counts (reader skips included; ``sizes_fixed`` = sizes read from headers).
    """
    problems = records.problems
    result = _reader_counts(records)
    present = [os.path.isfile(r.file) for r in records.images]
    if records.images and not any(present):
        problems.append(
            Problem(
                str(records.root),
                "images",
                f"none of the {len(present)} image files is here",
                "not needed: the annotations are scored as they are",
                "info",
            )
        )
    for rec, here in zip(records.images, present):
        where = str(rec.ann_file or rec.file)
        if rec.width <= 0 or rec.height <= 0:
            facts = probe_image(Path(rec.file), decode=False) if here else None
            if isinstance(facts, tuple):
                rec.width, rec.height = facts[0]
                result.sizes_fixed += 1
            else:
                why = facts.message if facts is not None else "its image file is not here"
                problems.append(
                    Problem(
                        where,
                        "size",
                        f"no size declared and {why}",
                        f"its {rec.num_boxes} boxes are scored as annotated",
                        "warning",
                    )
                )
        elif here and (problem := _file_problem(Path(rec.file))):
            problems.append(
                Problem(
                    str(rec.file),
                    "file",
                    problem,
                    f"not needed for scoring: its {rec.num_boxes} boxes are scored as annotated",
                    "warning",
                )
            )
        elif not here and any(present):
            problems.append(
                Problem(
                    str(rec.file),
                    "file",
                    "image file not found",
                    f"not needed for scoring: its {rec.num_boxes} boxes are scored as annotated",
                    "warning",
                )
            )
        finite = np.isfinite(rec.boxes).all(1)
        for j in np.flatnonzero(~finite):
            problems.append(
                Problem(
                    where,
                    box_field(rec, j),
                    f"NaN or infinite coordinate {rec.boxes[j].tolist()}",
                    "fix or delete the box — box skipped",
                    "skipped",
                )
            )
        if not finite.all():
            result.boxes_skipped += int((~finite).sum())
            _filter_boxes(rec, finite)
        result.negatives += rec.num_boxes == 0
    zero = next(
        (r for r in records.images if "ann_ids" in r.extra and (np.asarray(r.extra["ann_ids"]) == 0).any()),
        None,
    )
    if zero is not None:
        problems.append(
            Problem(
                str(zero.ann_file or records.root),
                "annotations[id=0].id",
                "an annotation has id 0, "
                "which pycocotools' and faster-coco-eval's matchers read as 'unmatched' (that box "
                "can never be a true positive there)",
                "detlab numbers boxes 1..N for scoring, so "
                "its AP can differ from theirs on this file — number annotations from 1",
                "warning",
            )
        )
    ids = [r.image_id for r in records.images]
    if len(set(ids)) != len(ids):
        problems.append(
            Problem(
                str(records.root),
                "image_id",
                "duplicate image ids after reading",
                "give every image its own id",
                "error",
            )
        )
    for p in problems:
        result.severity[p.severity] = result.severity.get(p.severity, 0) + 1
    return result


def _file_problem(path: Path) -> str | None:
    """What makes a present image file unusable, from its size and its last bytes only (no decode)."""
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte image file"
        return None if _tail_complete(path) else "truncated image file (no end marker)"
    except OSError as e:
        return f"unreadable image file ({e.strerror or e})"


def print_load_summary(records: Records, result: CheckResult, name: str, limit: int = 10) -> None:
    """The load-time report, through detlab's logger: a few problem lines (warnings), then the
    counts (``detlab check`` lists everything)."""
    shown = [p for p in records.problems if p.severity != "info"]
    for p in shown[:limit]:
        logger.warning(f"detlab: {p.line()}")
    if len(shown) > limit:
        logger.warning(f"detlab: … and {len(shown) - limit} more — run `detlab check {name}` for every line")
    if shown:
        logger.info(
            f"detlab: {name}: {len(records.images)} images, {records.num_boxes} boxes, {records.num_classes} classes; "
            f"fixed {result.boxes_fixed} boxes and {result.sizes_fixed} sizes, skipped {result.boxes_skipped} boxes "
            f"and {result.images_skipped} images"
        )


def summary_lines(records: Records, result: CheckResult) -> list[str]:
    """The ``detlab check`` summary: counts, per-class boxes, COCO size buckets, a box-size histogram."""
    boxes = (
        np.concatenate([r.boxes for r in records.images]) if records.images else np.zeros((0, 4), np.float32)
    )
    labels = np.concatenate([r.labels for r in records.images]) if records.images else np.zeros(0, np.int64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [N]
    per_class = np.bincount(labels, minlength=records.num_classes)
    width = max([len(n) for n in records.class_names] + [5])
    lines = [
        f"dataset: {records.root} ({records.format}, split {records.split or 'all'})",
        f"images: {len(records.images)} usable ({result.negatives} without boxes, used as negatives; "
        f"{result.images_skipped} skipped)",
        f"boxes: {len(boxes)} usable of {result.boxes_read} ({result.boxes_fixed} clipped, {result.boxes_skipped} skipped)",
        f"classes: {records.num_classes}",
    ]
    lines += [
        f"  {name:<{width}} {int(n):>7}" + _few(int(n)) for name, n in zip(records.class_names, per_class)
    ]
    small, medium = int((area < 32**2).sum()), int(((area >= 32**2) & (area < 96**2)).sum())
    lines.append(f"COCO sizes: small {small}  medium {medium}  large {len(area) - small - medium}")
    lines.append("box size histogram (sqrt of area, px):")
    counts, _ = np.histogram(np.sqrt(area), bins=SIZE_BINS)
    top = max(int(counts.max()) if counts.size else 0, 1)
    for lo, hi, n in zip(SIZE_BINS[:-1], SIZE_BINS[1:], counts):
        label = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f"{lo:g}+"
        lines.append(f"  {label:>8} | {'#' * int(round(40 * n / top)):<40} {int(n)}")
    tally = ", ".join(
        f"{result.severity.get(s, 0)} {s}" for s in ("error", "skipped", "fixed", "warning", "info")
    )
    lines.append(f"problems: {tally}")
    return lines


def _few(n: int) -> str:
    return "   <- no boxes" if n == 0 else f"   <- only {n} box{'es' if n > 1 else ''}" if n < 5 else ""


def check_command(
    data: str, split: str | None = None, images: str | None = None, classes: str | None = None
) -> int:
    """``detlab check DATA``: every problem as one line, then the summary.

    Returns:
        0 when the dataset is usable, 1 when it is not (errors, no usable image or no box).
    """
    from detlab.data.formats import read_records

    records = read_records(data, split=split, images=images, classes=classes)
    result = validate_records(records, decode=True)
    if records.images and records.num_boxes == 0:
        records.problems.append(
            Problem(
                str(records.root),
                "boxes",
                "no usable box in the whole dataset",
                "fix the problems above",
                "error",
            )
        )
        result.severity["error"] = result.severity.get("error", 0) + 1
    for p in records.problems:
        print(p.line())
    for line in summary_lines(records, result):
        print(line)
    usable = not result.unusable and bool(records.images)
    print("verdict: usable" if usable else "verdict: NOT usable — fix the errors above")
    return 0 if usable else 1
