"""PASCAL VOC protocols: VOC2007 11-point and VOC2012 all-point AP at one IoU threshold.

Works on any dataset detlab reads (VOC, COCO, YOLO, folders). Detections are matched to
ground truth as the VOC devkit does (:mod:`detlab.evaluation.matching`, which documents the
rules); this module turns the matched curves into AP.

Classes without ground truth (no non-ignored box in the split): their AP is
undefined; it is reported as ``NaN`` per class (``null`` in JSON) and left out of
``mAP``, which is the mean over the classes that have ground truth. A class with
ground truth and no detection has AP 0. There is no per-image detection limit.
"""

from __future__ import annotations

import numpy as np

from detlab.evaluation.matching import GroundTruth, match_detections, pr_curves


def average_precision(precision: np.ndarray, recall: np.ndarray, eleven_point: bool) -> float:
    """VOC AP of one precision/recall curve.

    Args:
        precision, recall: ``[K]`` after each detection, in descending score.
        eleven_point: VOC2007's mean of the interpolated precision at recall
            ``0, 0.1, …, 1``; else VOC2010+'s area under the monotone envelope.

    Returns:
        AP in ``0..1``.
    """
    if eleven_point:
        # k / 10 exactly: a recall of exactly 0.3, 0.6 or 0.7 reaches its point, as the protocol says;
        # ports that step 0.1 at a time (arange(0, 1.1, 0.1)) land a rounding error above and miss it.
        pts = [precision[recall >= t].max(initial=0.0) for t in np.arange(11) / 10]
        return float(np.mean(pts))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, non-increasing
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def voc_ap(curves: list[dict[str, np.ndarray]], num_positives: np.ndarray, eleven_point: bool) -> np.ndarray:
    """``float64 [C]`` AP per class; NaN for classes without GT."""
    return np.array(
        [
            average_precision(cv["precision"], cv["recall"], eleven_point) if npos else np.nan
            for cv, npos in zip(curves, num_positives)
        ]
    )


def mean_ap(ap: np.ndarray) -> float:
    """Mean over the classes that have ground truth (NaN when none has)."""
    valid = ~np.isnan(ap)
    return float(ap[valid].mean()) if valid.any() else float("nan")


def evaluate_voc(
    gt: GroundTruth,
    class_names: list[str],
    det_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_labels: np.ndarray,
    protocols: tuple[str, ...] = ("voc07", "voc12"),
    iou: float = 0.5,
) -> dict[str, dict]:
    """VOC07 and/or VOC12 AP from one matching pass.

    Args:
        gt: the split's boxes (:meth:`GroundTruth.from_records`).
        class_names: ``C`` names, for ``per_class``.
        det_image: ``int64 [M]`` image index of each detection (all valid).
        det_boxes: ``float64 [M, 4]`` xyxy absolute pixels.
        det_scores: ``[M]``; det_labels: ``int64 [M]`` in ``0..C-1``.
        protocols: any of ``voc07`` (11-point) and ``voc12`` (all-point).
        iou: match threshold.

    Returns:
        ``{protocol: {"mAP": float, "per_class": {name: AP or NaN}, "iou": iou,
        "num_classes_with_gt": int}}``.
    """
    match = match_detections(gt, det_image, det_boxes, det_scores, det_labels, iou)
    npos = gt.num_positives()
    curves = pr_curves(match["tp"], match["fp"], det_scores, det_labels, npos)
    out = {}
    for name in protocols:
        ap = voc_ap(curves, npos, eleven_point=(name == "voc07"))
        out[name] = {
            "mAP": mean_ap(ap),
            "per_class": dict(zip(class_names, ap.tolist())),
            "iou": iou,
            "num_classes_with_gt": int((npos > 0).sum()),
        }
    return out
