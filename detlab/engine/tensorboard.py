"""What a training run shows in TensorBoard at each evaluation, beside its scalars.

* **PR curves per class** (``pr/<class>``) from the evaluation's own VOC matching at IoU 0.5
  (:func:`detlab.evaluation.matching.match_detections`): at each of :data:`PR_THRESHOLDS` score
  thresholds the true and false positives kept and the ground-truth boxes missed, so recall is
  over every ground-truth box of the class (TensorBoard's ``add_pr_curve`` would only see the
  detections and count a box no detection found as nothing). A class without ground truth has
  no recall and gets no curve; the text note says so.
* **Drawn validation images** (``val/<file name>``): the first :data:`DRAWN_IMAGES` images of the
  split, the same ones every evaluation, ground truth dashed and the detections at the
  F1-maximising score (:func:`detlab.evaluation.analysis.operating_point`), drawn by
  :mod:`detlab.report.draw`.
* **No NaN scalars**: an undefined metric (APs on data without small objects) is left out of the
  scalars and named in the text note ``eval/undefined``.

Legend for shape comments: ``M`` detections of the split, ``T`` thresholds, ``G`` boxes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

DRAWN_IMAGES = 4
PR_THRESHOLDS = 101  # 0, 0.01, …, 1: the grid TensorBoard's own PR plugin uses by default is 127


def split_scalars(flat: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """``(finite scalars, names of the undefined ones)``: NaN / inf / -1 placeholders are not plotted."""
    finite, undefined = {}, []
    for k, v in flat.items():
        (finite.__setitem__(k, float(v)) if math.isfinite(v) else undefined.append(k))
    return finite, undefined


def flat_detections(records, detections: Mapping[int, Mapping]):
    """Every detection of the split as flat arrays, and the split's ground truth.

    Returns:
        ``(gt, det_image int64 [M], boxes float64 [M, 4] xyxy px, scores float64 [M], labels int64 [M])``
        for detections of images in ``records``.
    """
    from detlab.evaluation import matching

    gt = matching.GroundTruth.from_records(records)
    ids, boxes, scores, labels = [], [], [], []
    for image_id, det in detections.items():
        n = len(det["scores"])
        ids.append(np.full(n, int(image_id), np.int64))
        boxes.append(np.asarray(det["boxes"], np.float64).reshape(-1, 4))
        scores.append(np.asarray(det["scores"], np.float64).reshape(-1))
        labels.append(np.asarray(det["labels"], np.int64).reshape(-1))
    if not ids:
        return gt, np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    det_image = matching.image_index(gt, np.concatenate(ids))
    keep = det_image >= 0  # detections of images outside the split score nothing
    return (
        gt,
        det_image[keep],
        np.concatenate(boxes)[keep],
        np.concatenate(scores)[keep],
        np.concatenate(labels)[keep],
    )


def pr_counts(
    tp: np.ndarray, fp: np.ndarray, scores: np.ndarray, num_gt: int, thresholds: np.ndarray
) -> dict:
    """Counts and curve of one class at each threshold (a detection is kept when ``score >= t``).

    Args:
        tp, fp: ``bool [M_c]`` the class's matched / unmatched detections (ignored ones neither).
        scores: ``[M_c]``; num_gt: the class's non-ignored boxes; thresholds: ``[T]`` ascending.

    Returns:
        ``tp, fp, fn, precision, recall``: ``[T]`` each; precision is 1 where nothing is kept.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    kept_from = np.searchsorted(sorted_scores, thresholds, side="left")  # [T] first kept index
    ctp = np.concatenate([[0], np.cumsum(tp[order][::-1])])[::-1]  # [M_c + 1] TPs kept from index i on
    cfp = np.concatenate([[0], np.cumsum(fp[order][::-1])])[::-1]
    tps, fps = ctp[kept_from].astype(np.float64), cfp[kept_from].astype(np.float64)
    kept = tps + fps
    precision = np.divide(tps, kept, out=np.ones_like(tps), where=kept > 0)
    return {"tp": tps, "fp": fps, "fn": num_gt - tps, "precision": precision, "recall": tps / num_gt}


def log_pr_curves(tb, records, detections: Mapping[int, Mapping], step: int) -> list[str]:
    """Write ``pr/<class>`` for every class with ground truth; return the names of those without."""
    from detlab.evaluation import matching

    gt, det_image, boxes, scores, labels = flat_detections(records, detections)
    match = matching.match_detections(gt, det_image, boxes, scores, labels, 0.5)
    num_gt = gt.num_positives()  # [C]
    thresholds = np.linspace(0.0, 1.0, PR_THRESHOLDS)
    skipped = []
    for c, name in enumerate(records.class_names):
        if num_gt[c] == 0:
            skipped.append(name)
            continue
        mine = (labels == c) & (match["tp"] | match["fp"])
        counts = pr_counts(match["tp"][mine], match["fp"][mine], scores[mine], int(num_gt[c]), thresholds)
        tb.add_pr_curve_raw(
            f"pr/{name}",
            true_positive_counts=counts["tp"],
            false_positive_counts=counts["fp"],
            true_negative_counts=np.zeros(PR_THRESHOLDS),  # detection has no negatives to count
            false_negative_counts=counts["fn"],
            precision=counts["precision"],
            recall=counts["recall"],
            global_step=step,
            num_thresholds=PR_THRESHOLDS,
        )
    return skipped


def log_drawn_images(tb, records, detections: Mapping[int, Mapping], step: int) -> float:
    """Write ``val/<file>`` for the split's first images; return the score the detections are drawn at."""
    from detlab.data.dataset import read_image
    from detlab.evaluation.analysis import operating_point
    from detlab.report.draw import draw_boxes

    score = operating_point(*flat_detections(records, detections))["score"]
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    for rec in records.images[:DRAWN_IMAGES]:
        image = read_image(Path(rec.file))[0]  # float32 [3, H, W], the frame the boxes are in
        drawn = draw_boxes(image, rec.boxes, rec.labels, records.class_names, ground_truth=True)
        det = detections.get(rec.image_id, empty)
        keep = np.asarray(det["scores"], np.float64) >= score
        drawn = draw_boxes(
            drawn,
            np.asarray(det["boxes"], np.float64).reshape(-1, 4)[keep],
            np.asarray(det["labels"], np.int64)[keep],
            records.class_names,
            scores=np.asarray(det["scores"], np.float64)[keep],
        )  # uint8 [3, H, W]
        tb.add_image(f"val/{Path(rec.file).name}", drawn.numpy(), step, dataformats="CHW")
    return score


def log_evaluation(tb, flat: Mapping[str, float], step: int, records=None, detections=None) -> None:
    """One evaluation in TensorBoard: finite scalars, and with the detections PR curves and images.

    Args:
        tb: a ``torch.utils.tensorboard.SummaryWriter``.
        flat: the evaluation's flat metrics (``coco/AP``, ``val/loss``, …).
        step: the optimizer step.
        records: the validation split's ground truth (``Records``), or ``None``.
        detections: ``image_id -> {"boxes" [K, 4] xyxy px, "scores" [K], "labels" [K]}``, or ``None``.
    """
    finite, undefined = split_scalars(flat)
    for k, v in finite.items():
        tb.add_scalar(k, v, step)
    notes = [f"{k}: undefined on this split (no ground truth it applies to), not plotted" for k in undefined]
    if records is not None and detections is not None:
        no_gt = log_pr_curves(tb, records, detections, step)
        notes += [f"pr/{name}: no ground-truth box in the split, no curve" for name in no_gt]
        score = log_drawn_images(tb, records, detections, step)
        notes.append(f"val images: ground truth dashed, detections at score >= {score:.2f} (F1-maximising)")
    if notes:
        tb.add_text("eval/notes", "  \n".join(notes), step)
