"""COCO protocol: the 12 standard box numbers through faster-coco-eval (same as pycocotools).

Legend for shape comments: ``M`` detections of the whole split, ``C`` classes,
``T`` IoU thresholds, ``R`` recall thresholds, ``A`` area ranges, ``D`` maxDets values.

How detlab's ``Records`` become a COCO ground truth (built in memory, never written):

* ``bbox`` = ``[x1, y1, x2 - x1, y2 - y1]`` from the xyxy boxes.
* ``area``, which decides small/medium/large, is the annotation's own ``area`` where the
  source has one (a COCO JSON: real COCO files carry the *mask* area, and pycocotools,
  detectron2, mmdet and the leaderboard all range on that field), else ``w * h`` of the
  box (VOC, YOLO, folders, and COCO annotations without the key). Crowd regions follow
  the same rule. Detections always use ``w * h``, as ``loadRes`` does.
  :func:`area_rule` names the rule a split was scored with.
* ``iscrowd`` is kept.
* VOC ``difficult`` boxes become ``iscrowd: 1``. pycocotools and faster-coco-eval
  derive their per-box ``ignore`` flag from ``iscrowd`` alone (a given ``ignore`` key is
  overwritten), so a crowd box is the only way to make a box *ignored*: it is never a
  miss, and a detection that matches it (crowd IoU = ``area(∩) / area(detection)``,
  at the same thresholds) is dropped instead of counted as a false positive.
* category ids: for COCO sources the original ids (``Records.source_ids``); for VOC,
  YOLO and folder sources (whose ids are names or 0-based indices) ``1..C`` in class
  order. :func:`category_ids` is the one place this is decided; results files are
  written and read in these ids.
* annotation ids are ``1..G`` (id 0 means "unmatched" inside the evaluators).

Numbers that COCO leaves undefined (``-1``: no GT in that area range, or no class
with GT) are reported as ``NaN`` (``null`` in JSON). Per-class AP is the mean of
``precision[:, :, k, area=all, maxDets=last]`` over its defined entries, NaN for a
class without GT.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detlab.data.records import Problem, Records
from detlab.data.results import coco_category_ids
from detlab.errors import DataError

DEFAULT_AREA_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}
_AREA_SHORT = {"small": "s", "medium": "m", "large": "l"}


def category_ids(records: Records) -> list[int]:
    """The COCO ``category_id`` of each class index ``0..C-1`` (:func:`detlab.data.results.coco_category_ids`)."""
    if len(records.source_ids) != records.num_classes:
        return list(range(1, records.num_classes + 1))
    return coco_category_ids(records.source_ids, records.format)


def coco_ground_truth(records: Records) -> dict:
    """A COCO detection dict (``images``, ``annotations``, ``categories``) for ``records``.

    Returns:
        A dict that ``faster_coco_eval.COCO(...)`` and ``pycocotools.coco.COCO`` accept
        (set ``.dataset`` then ``createIndex()``). Boxes are ``bbox`` xywh absolute pixels.
    """
    cats = category_ids(records)
    images, anns = [], []
    for r in records.images:
        images.append(
            {
                "id": int(r.image_id),
                "width": int(r.width),
                "height": int(r.height),
                "file_name": r.file.name if r.file else "",
            }
        )
        if not r.num_boxes:
            continue
        xywh = xyxy_to_xywh(r.boxes)  # [N, 4]
        crowd = np.asarray(r.iscrowd, bool) | np.asarray(r.difficult, bool)
        for box, area, label, is_crowd in zip(
            xywh.tolist(), gt_areas(r, xywh).tolist(), np.asarray(r.labels).tolist(), crowd.tolist()
        ):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": int(r.image_id),
                    "category_id": cats[label],
                    "bbox": box,
                    "area": area,
                    "iscrowd": int(is_crowd),
                }
            )
    categories = [{"id": cid, "name": name} for cid, name in zip(cats, records.class_names)]
    return {"images": images, "annotations": anns, "categories": categories}


def gt_areas(record, xywh: np.ndarray) -> np.ndarray:
    """``float64 [N]`` the area COCO ranges a record's boxes by: the annotation's ``area``
    where the source gave one (``extra["area"]``, NaN where an annotation had none), else ``w * h``."""
    box_area = xywh[:, 2] * xywh[:, 3]
    given = record.extra.get("area")
    if given is None or len(given) != len(box_area):
        return box_area
    given = np.asarray(given, np.float64)
    return np.where(np.isfinite(given), given, box_area)


def area_rule(records: Records) -> str:
    """Which area definition :func:`coco_ground_truth` uses for ``records``, in words (for the metrics stamp)."""
    given = sum(
        int(np.isfinite(np.asarray(r.extra["area"], np.float64)).sum())
        for r in records.images
        if "area" in r.extra
    )
    if given == 0:
        return "box w*h (the annotations carry no area)"
    if given == records.num_boxes:
        return "the annotations' 'area' field, as pycocotools"
    return f"the annotations' 'area' field where given ({given} of {records.num_boxes} boxes), else box w*h"


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``float64 [M, 4]`` xyxy → xywh."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def coco_results(
    image_ids: np.ndarray, boxes_xywh: np.ndarray, scores: np.ndarray, category_id: np.ndarray
) -> list[dict]:
    """Detections in COCO results format (what pycocotools' ``loadRes`` reads).

    Args:
        image_ids: ``int64 [M]``.
        boxes_xywh: ``float64 [M, 4]`` ``[x, y, w, h]`` absolute pixels.
        scores: ``[M]``.
        category_id: ``int64 [M]`` COCO category ids (see :func:`category_ids`).

    Returns:
        ``[{"image_id", "category_id", "bbox", "score"}, …]`` with plain Python numbers.
    """
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(
            np.asarray(image_ids).tolist(),
            np.asarray(category_id).tolist(),
            np.asarray(boxes_xywh, np.float64).tolist(),
            np.asarray(scores, np.float64).tolist(),
        )
    ]


def _detections_coco(gt, image_ids, boxes_xywh, scores, category_id, rows: list[dict] | None = None):
    """A faster-coco-eval ``COCO`` of the detections, built directly: the fields ``loadRes`` adds for
    boxes (``id``, ``area`` = w*h, ``iscrowd``), without the polygon it adds for segmentation use.
    ``rows`` (results-file dicts matching the arrays row by row) are completed in place, not copied."""
    from faster_coco_eval import COCO

    area = (boxes_xywh[:, 2] * boxes_xywh[:, 3]).tolist()  # [M], as loadRes: w * h
    if rows is None:
        rows = [
            {"id": k, "image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "iscrowd": 0}
            for k, (i, c, b, s, a) in enumerate(
                zip(image_ids.tolist(), category_id.tolist(), boxes_xywh.tolist(), scores.tolist(), area), 1
            )
        ]
    else:
        for k, (row, i, c, a) in enumerate(zip(rows, image_ids.tolist(), category_id.tolist(), area), 1):
            row["id"], row["image_id"], row["category_id"], row["area"], row["iscrowd"] = k, i, c, a, 0
    dt = COCO()
    dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": rows}
    dt.createIndex()
    return dt


def summary_names(max_dets: Sequence[int], area_ranges: dict) -> list[str]:
    """Names of the summary numbers, in the order COCO's ``summarize`` computes them.

    Default settings give the standard 12: ``AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl``
    (then ``AR50 AR75``, which faster-coco-eval adds).
    """
    areas = [_AREA_SHORT.get(a, f"_{a}") for a in area_ranges]
    return (
        ["AP", "AP50", "AP75"]
        + [f"AP{a}" for a in areas]
        + [f"AR{d}" for d in max_dets]
        + [f"AR{a}" for a in areas]
        + ["AR50", "AR75"]
    )


def evaluate_coco(
    records: Records,
    image_ids: np.ndarray,
    boxes_xywh: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    max_dets: Sequence[int] = (1, 10, 100),
    area_ranges: dict | None = None,
    ground_truth: dict | None = None,
    rows: list[dict] | None = None,
) -> dict:
    """COCO box AP/AR with faster-coco-eval.

    Args:
        records: the ground truth split.
        image_ids: ``int64 [M]`` ids of images in ``records``.
        boxes_xywh: ``float64 [M, 4]`` ``[x, y, w, h]`` absolute pixels.
        scores: ``[M]``.
        labels: ``int64 [M]`` class indices ``0..C-1``.
        max_dets: per-image (per class) detection limits; AP uses the last.
        area_ranges: ``{label: (lo, hi)}`` in px²; default COCO's small/medium/large.
        ground_truth: a prebuilt :func:`coco_ground_truth` dict, to reuse.
        rows: the results-file dicts the arrays came from (same order), completed in place
            instead of building new ones (see :func:`read_results`).

    Returns:
        ``{"AP", "AP50", …, "per_class": {name: AP}, "per_class_AP50": {name: AP50},
        "max_dets": [...], "area_ranges": {...}, "area": the area rule in words}`` with NaN
        where COCO gives -1.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    area_ranges = dict(DEFAULT_AREA_RANGES if area_ranges is None else area_ranges)
    gt = COCO()
    gt.dataset = ground_truth if ground_truth is not None else coco_ground_truth(records)
    gt.createIndex()
    cats = np.asarray(category_ids(records), np.int64)
    dt = _detections_coco(
        gt,
        np.asarray(image_ids, np.int64),
        np.asarray(boxes_xywh, np.float64).reshape(-1, 4),
        np.asarray(scores, np.float64),
        cats[np.asarray(labels, np.int64)],
        rows,
    )
    ev = COCOeval_faster(
        gt,
        dt,
        "bbox",
        print_function=lambda *a, **k: None,
        ranges={k: list(v) for k, v in area_ranges.items()},
    )
    ev.params.maxDets = sorted(int(d) for d in max_dets)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = np.asarray(ev.all_stats, np.float64)
    stats = np.where(stats < 0, np.nan, stats)
    out = dict(zip(summary_names(ev.params.maxDets, area_ranges), stats.tolist()))
    column = np.searchsorted(np.asarray(ev.params.catIds), cats)  # [C] class index → precision's K axis
    out["per_class"], out["per_class_AP50"] = per_class_ap(
        ev.eval["precision"][:, :, column], ev.params.iouThrs, records.class_names
    )
    out["max_dets"], out["area_ranges"] = (
        list(ev.params.maxDets),
        {k: list(v) for k, v in area_ranges.items()},
    )
    out["area"] = area_rule(records)
    return out


def per_class_ap(precision: np.ndarray, iou_thrs: np.ndarray, class_names: list[str]) -> tuple[dict, dict]:
    """Per-class AP@[.5:.95] and AP@.5 from COCO's accumulated precision.

    Args:
        precision: ``[T, R, K, A, D]`` (``-1`` where undefined), ``K`` in class-index order.
        iou_thrs: ``[T]``.
        class_names: ``K`` names.

    Returns:
        ``({name: AP}, {name: AP50})``, NaN for classes without GT.
    """
    p = precision[:, :, :, 0, -1]  # [T, R, K]: area=all, largest maxDets
    valid = p > -1
    sums, counts = np.where(valid, p, 0).sum(axis=(0, 1)), valid.sum(axis=(0, 1))
    ap = np.divide(sums, counts, out=np.full(len(sums), np.nan), where=counts > 0)
    t50 = int(np.argmin(np.abs(np.asarray(iou_thrs) - 0.5)))
    s50, c50 = np.where(valid[t50], p[t50], 0).sum(0), valid[t50].sum(0)
    ap50 = np.divide(s50, c50, out=np.full(len(s50), np.nan), where=c50 > 0)
    return dict(zip(class_names, ap.tolist())), dict(zip(class_names, ap50.tolist()))


def _results_list(path: Path) -> list:
    """The JSON list of a results file (a bare list, or an object's ``annotations``).

    Parsed with orjson (a results file is hundreds of thousands of small dicts: 3x faster than
    ``json``); a file orjson refuses is parsed again by ``json``, which also reads the ``NaN`` that
    some tools write (then reported as a non-finite score) and names the line of a real syntax error.
    """
    import orjson

    try:
        with open(path, "rb") as f:
            raw = f.read()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg}) — fix the file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}) — check the --dets path") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise DataError(
            f"{path}: top level is not a list — a COCO results file is "
            "[{image_id, category_id, bbox: [x, y, w, h], score}, …]"
        )
    return data


def _first_malformed(rows: list, path: Path) -> DataError:
    """The one-line error for the first entry that is not a results row."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            return DataError(
                f"{path}: [{i}]: not an object — each result is {{image_id, category_id, bbox, score}}"
            )
        for key, kind in (("image_id", "an integer"), ("category_id", "an integer"), ("score", "a number")):
            value = row.get(key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or (kind == "an integer" and float(value) != int(value)):
                return DataError(f"{path}: [{i}].{key}: {value!r} is not {kind} — fix the entry")
        box = row.get("bbox")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        ):
            return DataError(f"{path}: [{i}].bbox: {box!r} is not [x, y, w, h] (4 numbers) — fix the entry")
    return DataError(f"{path}: malformed results — fix the file")


def read_results(path: str | Path, records: Records) -> tuple[dict[str, np.ndarray], list[Problem]]:
    """Read a COCO results file and map it onto ``records``' images and classes.

    Args:
        path: JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
            (extra keys are ignored); ``category_id`` in :func:`category_ids` of ``records``.
        records: the ground truth the results are scored against.

    Returns:
        ``(detections, problems)``: ``{"image_ids": int64 [M], "boxes_xywh": float64 [M, 4],
        "scores": float64 [M], "labels": int64 [M], "rows": the M file dicts}`` for the rows that name a known
        image and category, and one ``skipped`` :class:`Problem` per kind of unknown id
        (with the count and a few examples) — never a silent drop.

    Raises:
        DataError: unreadable file, or a malformed row (names the index and the field).
    """
    path = Path(path)
    rows = _results_list(path)
    try:
        image_ids = np.array([r["image_id"] for r in rows], np.float64)
        cat_ids = np.array([r["category_id"] for r in rows], np.float64)
        scores = np.array([r["score"] for r in rows], np.float64)
        xywh = np.array([r["bbox"] for r in rows], np.float64).reshape(len(rows), 4)
    except (KeyError, TypeError, ValueError, IndexError):
        raise _first_malformed(rows, path) from None
    for name, arr in (("image_id", image_ids), ("category_id", cat_ids)):
        bad = np.flatnonzero(arr != np.round(arr))
        if len(bad):
            raise DataError(
                f"{path}: [{bad[0]}].{name}: {rows[bad[0]][name]!r} is not an integer — fix the entry"
            )
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise DataError(
            f"{path}: [{bad[0]}].score: {rows[bad[0]]['score']!r} is not a finite number — fix the entry"
        )
    bad = np.flatnonzero(~np.isfinite(xywh).all(1) | (xywh[:, 2] < 0) | (xywh[:, 3] < 0))
    if len(bad):
        raise DataError(
            f"{path}: [{bad[0]}].bbox: {rows[bad[0]]['bbox']!r} needs finite x, y and w, h >= 0 "
            "(COCO [x, y, w, h]) — fix the entry"
        )
    dets, problems, keep = _map_ids(
        path, records, image_ids.astype(np.int64), cat_ids.astype(np.int64), xywh, scores
    )
    dets["rows"] = rows if keep.all() else [rows[i] for i in np.flatnonzero(keep).tolist()]
    return dets, problems


def _map_ids(path, records, image_ids, cat_ids, xywh, scores):
    """Keep rows with known image and category ids; report the others (counted)."""
    cats = np.asarray(category_ids(records), np.int64)
    order = np.argsort(cats)
    pos = np.clip(np.searchsorted(cats[order], cat_ids), 0, max(len(cats) - 1, 0))
    cat_ok = (
        cats[order][pos] == cat_ids if len(cats) else np.zeros(len(cat_ids), bool)
    )  # no class: none is known
    labels = order[pos] if len(cats) else np.zeros(len(cat_ids), np.int64)
    known_images = np.fromiter((r.image_id for r in records.images), np.int64, len(records.images))
    img_ok = np.isin(image_ids, known_images)
    problems = []
    for ok, field_name, values, fix in (
        (img_ok, "image_id", image_ids, "image ids must be the dataset's (COCO ids for COCO data)"),
        (cat_ok, "category_id", cat_ids, f"category ids must be {_describe_ids(records, cats)}"),
    ):
        if not ok.all():
            unknown = np.unique(values[~ok])
            problems.append(
                Problem(
                    str(path),
                    field_name,
                    f"{int((~ok).sum())} results with an unknown {field_name} "
                    f"(e.g. {', '.join(map(str, unknown[:5].tolist()))})",
                    f"{fix} — those results were left out",
                    "skipped",
                )
            )
    keep = img_ok & cat_ok
    return (
        {
            "image_ids": image_ids[keep],
            "boxes_xywh": xywh[keep],
            "scores": scores[keep],
            "labels": labels[keep].astype(np.int64),
        },
        problems,
        keep,
    )


def _describe_ids(records: Records, cats: np.ndarray) -> str:
    if records.format == "coco":
        return (
            f"the COCO file's ids of categories with boxes ({', '.join(map(str, cats[:8].tolist()))}"
            f"{', …' if len(cats) > 8 else ''}); results on a category without boxes change no AP or AR, "
            "as in pycocotools"
        )
    return f"1..{len(cats)} in class order for {records.format} data"
