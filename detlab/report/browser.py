"""The prediction browser inside report.html and compare.html: every validation image, filterable.

One section holds everything it needs, so the file stays self-contained (no server, no
network): the pictures as WebP ``data:`` URIs, sized to :data:`MAX_SIDE`; the ground truth
and each run's detections as JSON in a ``<script type="application/json">``; and the code
and style of ``browser.js`` / ``browser.css`` (package data beside this file), inlined when
the report is written. The page draws boxes as SVG over each picture, with a score slider,
class and error-type filters and sorting (by file name, most errors, most disagreement).

Every detection's type comes from :func:`detlab.evaluation.analysis.match_types` (the
report's error breakdown, VOC matching at IoU 0.5): it does not depend on the slider, and a
GT box is *missed* at threshold ``t`` when its ``found_at`` score is below ``t``. JSON rows:

- ``gt``: ``[x1, y1, x2, y2, label, found_at per run…]`` (``null``: ignored — difficult/crowd);
- ``det[run]``: ``[x1, y1, x2, y2, label, score, type index into "types"]``;

boxes in absolute pixels of the annotated image, whose size is ``w`` × ``h``.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from detlab.evaluation import analysis, matching
from detlab.log import logger

MAX_SIDE = 640  # long side of the embedded pictures (thumbnails are the same pictures, scaled by CSS)
QUALITY = 72  # WebP quality: ~25 kB for a 640x480 microscope photo, boxes are drawn on top in SVG
MAX_IMAGES = 400  # beyond, an even sample (the section says so): a few MB per report, not hundreds
TYPES = ("true_positive", "localization", "classification", "both", "duplicate", "background", "ignored")
TYPE_NAMES = (
    "true positive",
    "localisation error",
    "classification error",
    "class + location error",
    "duplicate",
    "background (no object)",
    "ignored (difficult / crowd)",
)
ASSETS = Path(__file__).parent


def photo_uri(
    image, max_side: int = MAX_SIDE, quality: int = QUALITY, fmt: str = "WEBP"
) -> tuple[str, tuple]:
    """A compressed ``data:`` URI of a picture and its full size before resizing.

    Args:
        image: an image file path, a PIL image, or a ``uint8 [3, H, W]`` tensor / ``[H, W, 3]`` array.
        max_side: the long side it is shrunk to (never enlarged).
        quality: the encoder's quality (WebP or JPEG).
        fmt: ``"WEBP"`` or ``"JPEG"``.

    Returns:
        ``(uri, (width, height))`` — the size in the frame the annotations use (EXIF applied).
    """
    from PIL import Image, ImageOps

    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            pic = ImageOps.exif_transpose(im).convert("RGB")
    elif isinstance(image, Image.Image):
        pic = image.convert("RGB")
    else:
        arr = image.permute(1, 2, 0).cpu().numpy() if hasattr(image, "permute") else np.asarray(image)
        pic = Image.fromarray(arr.astype(np.uint8))
    size = pic.size
    pic.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pic.save(buf, format=fmt, quality=quality, **({"method": 4} if fmt == "WEBP" else {"optimize": True}))
    mime = "image/webp" if fmt == "WEBP" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii"), size


def _flat(records, detections: Mapping[int, Mapping]) -> dict[str, np.ndarray]:
    """One run's ``{image_id: detections}`` as the flat arrays :mod:`analysis` takes (record order)."""
    parts = [(i, detections.get(r.image_id)) for i, r in enumerate(records.images)]
    parts = [(i, d) for i, d in parts if d is not None and len(d["scores"])]
    if not parts:
        return {
            "image": np.zeros(0, np.int64),
            "boxes": np.zeros((0, 4)),
            "scores": np.zeros(0),
            "labels": np.zeros(0, np.int64),
        }
    return {
        "image": np.concatenate([np.full(len(d["scores"]), i, np.int64) for i, d in parts]),  # [M]
        "boxes": np.concatenate([np.asarray(d["boxes"], np.float64).reshape(-1, 4) for _, d in parts]),
        "scores": np.concatenate([np.asarray(d["scores"], np.float64) for _, d in parts]),
        "labels": np.concatenate([np.asarray(d["labels"], np.int64) for _, d in parts]),
    }


def browser_data(records, runs: Sequence[tuple[str, Mapping[int, Mapping]]], iou: float = 0.5) -> dict:
    """The JSON the page reads (module docstring), pictures included.

    Args:
        records: the validation split's ground truth.
        runs: ``(name, {image_id: {"boxes": [K, 4] xyxy annotated-frame pixels, "scores", "labels"}})``.
        iou: the matching threshold of the error types.

    Returns:
        ``{"classes", "colours", "ink", "types", "type_names", "runs", "score", "operating_points",
        "images": [{"name", "w", "h", "src", "gt", "det"}], "images_src": [data URI], "skipped",
        "sampled"}``.
    """
    from detlab.report.draw import _ink, class_colour

    gt = matching.GroundTruth.from_records(records)
    per_run, points = [], []
    for _, detections in runs:
        flat = _flat(records, detections)
        kind, found_at = analysis.match_types(
            gt, flat["image"], flat["boxes"], flat["scores"], flat["labels"], iou
        )
        per_run.append((flat, kind, found_at))
        point = analysis.operating_point(
            gt, flat["image"], flat["boxes"], flat["scores"], flat["labels"], iou
        )
        points.append(
            {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in point.items()}
        )
    chosen = _sample(len(records.images))
    images, sources, skipped = [], [], []
    for i in chosen:
        rec = records.images[i]
        try:
            uri, (w, h) = photo_uri(rec.file)
        except (OSError, ValueError) as e:  # the boxes stay in the analysis; only the picture is missing
            skipped.append(f"{rec.file}: {e}")
            continue
        w, h = (rec.width, rec.height) if rec.width and rec.height else (w, h)
        sources.append(uri)
        images.append(
            {"name": Path(rec.file).name, "w": w, "h": h, "src": len(sources) - 1, **_rows(gt, i, per_run)}
        )
    hexed = "#{:02x}{:02x}{:02x}".format
    colours = [hexed(*class_colour(c)) for c in range(len(records.class_names))]
    ink = {h: hexed(*_ink(class_colour(c))) for c, h in enumerate(colours)}
    return {
        "classes": list(records.class_names),
        "colours": colours,
        "ink": ink,
        "types": list(TYPES),
        "type_names": list(TYPE_NAMES),
        "runs": [name for name, _ in runs],
        "score": math.floor(100 * points[0]["score"]) / 100 if points else 0.5,  # the slider's 0.01 steps
        "operating_points": points,
        "iou": iou,
        "images": images,
        "images_src": sources,
        "skipped": skipped,
        "sampled": len(chosen) < len(records.images),
    }


def _sample(n: int) -> list[int]:
    return (
        list(range(n)) if n <= MAX_IMAGES else np.linspace(0, n - 1, MAX_IMAGES).round().astype(int).tolist()
    )


def _rows(gt: matching.GroundTruth, image: int, per_run: list) -> dict:
    """The ``gt`` and ``det`` rows of one image (module docstring)."""
    on = np.flatnonzero(gt.box_image == image)
    gt_rows = []
    for g in on:
        found = [None if gt.ignore[g] else round(float(f[g]), 4) for _, _, f in per_run]
        gt_rows.append([*np.round(gt.boxes[g], 1).tolist(), int(gt.labels[g]), *found])
    det_rows = []
    for flat, kind, _ in per_run:
        sel = np.flatnonzero(flat["image"] == image)
        det_rows.append(
            [
                [
                    *np.round(flat["boxes"][d], 1).tolist(),
                    int(flat["labels"][d]),
                    round(float(flat["scores"][d]), 4),
                    TYPES.index(kind[d]),
                ]
                for d in sel
            ]
        )
    return {"gt": gt_rows, "det": det_rows}


def browser_section(records, runs: Sequence[tuple[str, Mapping[int, Mapping]]], iou: float = 0.5) -> str:
    """The browser's ``<section>``: controls, data, inlined script and style (module docstring)."""
    data = browser_data(records, runs, iou)
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    how = {
        "F1-max": "the F1-maximising score",
        "default": "the default: no true positive to maximise F1 with",
    }
    points = "; ".join(
        f"{name}: {p['score']:.2f}, {how[p['rule']]}"
        for name, p in zip(data["runs"], data["operating_points"])
    )
    shown = len(data["images"])
    intro = (
        f"<p>{shown} validation images{' (an even sample)' if data['sampled'] else ''}; click one to see it "
        f"full size. Ground truth dashed, detections solid, in class colours; a thick dotted box is a GT box "
        f"no detection at or above the slider's score finds (missed). Error types as in the error breakdown "
        f"(IoU {iou:g}). The slider starts at the operating point ({points}).</p>"
    )
    if data["skipped"]:
        intro += (
            f'<p class="note">{len(data["skipped"])} pictures could not be read: {data["skipped"][0]}</p>'
        )
    controls = (
        '<div class="controls"><label>score ≥ <input class="score" type="range" min="0" max="1" step="0.01">'
        '<span class="score-value"></span></label><label>class <select class="class"></select></label>'
        '<label>type <select class="type"></select></label><label>sort <select class="sort"></select></label>'
        '<span class="shown"></span></div>'
    )
    script, style = (ASSETS / "browser.js").read_text(), (ASSETS / "browser.css").read_text()
    return (
        f'<section id="browser"><h2>Prediction browser</h2>{intro}{controls}<div class="tiles"></div>'
        '<div class="full" hidden><div class="full-body"></div></div>'
        f'<script type="application/json" id="browser-data">{blob}</script>'
        f"<style>{style}</style><script>{script}</script></section>"
    )


def read_predictions(path: Path, records) -> dict[int, dict] | None:
    """A run's ``eval/predictions.json`` (:mod:`detlab.evaluation.final`) as ``{image_id: detections}``,
    or ``None`` when it is absent or made for other images/classes (the caller then runs the model)."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        logger.warning(f"skipped: {path}: {e} — the browser runs the model instead")
        return None
    ids = {r.image_id for r in records.images}
    if list(doc.get("class_names", [])) != list(records.class_names) or not ids <= {
        im["image_id"] for im in doc.get("images", [])
    }:
        return None
    return {
        im["image_id"]: {
            "boxes": np.asarray(im["boxes"], np.float64).reshape(-1, 4),
            "scores": np.asarray(im["scores"], np.float64),
            "labels": np.asarray(im["labels"], np.int64),
        }
        for im in doc["images"]
        if im["image_id"] in ids
    }


def run_predictions(run: Path, dataset) -> dict[int, dict]:
    """The run's detections on ``dataset``: ``eval/predictions.json``, else its checkpoint run on CPU
    over the images the browser shows (older runs, or another ``--data``)."""
    found = read_predictions(run / "eval" / "predictions.json", dataset.records)
    if found is not None:
        return found
    from detlab.evaluation.evaluator import predict_split
    from detlab.predict import Detector

    detector = Detector.from_run(run, device="cpu")
    detections, _, _ = predict_split(
        detector.model,
        dataset,
        _sample(len(dataset)),
        device="cpu",
        precision=detector.precision,
        desc="browser",
    )
    return detections
