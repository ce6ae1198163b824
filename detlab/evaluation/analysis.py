"""Where a detector goes wrong: PR curves, a confusion matrix and a TIDE-style error breakdown.

Legend for shape comments: ``M`` detections of the whole split, ``G`` GT boxes,
``P`` (detection, GT) pairs in the same image, ``C`` classes.

Everything here is built on the VOC matching of :mod:`detlab.evaluation.voc` at
IoU ``iou`` (default 0.5; a match needs IoU strictly above it), with ``difficult`` /
crowd boxes ignored.

Error breakdown (after Bolya et al., "TIDE", ECCV 2020). Each false-positive detection
gets exactly one type, checked in this order; ``t_f`` = ``iou``, ``t_b`` =
``background_iou`` (0.1); "same" / "other" = best IoU with a GT box of the same / of
another class in the image:

1. ``background``: same < t_b and other < t_b.
2. ``localization``: t_b <= same <= t_f (right class, box off).
3. ``classification``: other > t_f (right box, wrong class).
4. ``duplicate``: same > t_f — its box was already taken by a higher-scoring detection.
5. ``both``: t_b <= other <= t_f (wrong class and box off).

``missed``: non-ignored GT boxes that no true positive matched and that are not the
target of a localization or classification error.

dAP of a type = mAP (VOC all-point, at ``iou``) after fixing every error of that type and
re-running the matching, minus the mAP before. Fixes: a localization error takes its
target GT box, a classification error takes its target GT's class — or, when that GT
box already has a true positive, the detection is removed (it would be a duplicate);
duplicate, background and both errors are removed; missed GT boxes are removed from
the ground truth. Fixes of different types overlap, so their dAPs do not add up.
"""

from __future__ import annotations

import numpy as np

from detlab.evaluation import voc

ERROR_TYPES = ("classification", "localization", "both", "duplicate", "background", "missed")


def _mean_ap(gt: voc.GroundTruth, det_image, boxes, scores, labels, iou: float) -> float:
    match = voc.match_detections(gt, det_image, boxes, scores, labels, iou)
    npos = gt.num_positives()
    curves = voc.pr_curves(match["tp"], match["fp"], scores, labels, npos)
    return voc.mean_ap(voc.voc_ap(curves, npos, eleven_point=False))


def best_other_class(
    gt: voc.GroundTruth, det_image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's best IoU with a non-ignored GT box of *another* class in its image.

    Returns:
        ``(iou float64 [M], gt_index int64 [M])``: ``0`` / ``-1`` when there is none.
    """
    pair_det, pair_gt, _ = voc.candidate_pairs(gt, det_image)  # class-agnostic [P]
    iou = voc.box_iou_pairs(boxes[pair_det], gt.boxes[pair_gt])
    iou = np.where((gt.labels[pair_gt] == labels[pair_det]) | gt.ignore[pair_gt], -1.0, iou)
    best, index = voc.max_per_detection(iou, pair_det, pair_gt, len(labels))
    none = best < 0
    best[none], index[none] = 0.0, -1
    return best, index


def classify_errors(
    gt: voc.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
    background_iou: float = 0.1,
) -> dict[str, np.ndarray]:
    """The error type of every detection and the missed GT boxes (module docstring).

    Returns:
        ``{"match": voc.match_detections(...), "type": object [M] ('' for TP / ignored),
        "target": int64 [M] GT index a loc/cls error points at (-1 otherwise),
        "missed": bool [G]}``.
    """
    match = voc.match_detections(gt, det_image, boxes, scores, labels, iou)
    same, same_gt = match["iou"], match["gt"]
    other, other_gt = best_other_class(gt, det_image, boxes, labels)
    fp = match["fp"]
    kind = np.full(len(labels), "", dtype=object)
    undecided = fp.copy()
    rules = (
        ("background", (same < background_iou) & (other < background_iou)),
        ("localization", (same >= background_iou) & (same <= iou)),
        ("classification", other > iou),
        ("duplicate", same > iou),
        ("both", (other >= background_iou) & (other <= iou)),
    )
    for name, rule in rules:
        hit = undecided & rule
        kind[hit] = name
        undecided &= ~hit
    target = np.full(len(labels), -1, np.int64)
    target[kind == "localization"] = same_gt[kind == "localization"]
    target[kind == "classification"] = other_gt[kind == "classification"]
    covered = np.zeros(len(gt.labels), bool)
    covered[match["gt"][match["tp"]]] = True
    covered[target[target >= 0]] = True
    return {"match": match, "type": kind, "target": target, "missed": ~covered & ~gt.ignore}


def error_breakdown(
    gt: voc.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
    background_iou: float = 0.1,
) -> dict:
    """Counts of each error type and the mAP that fixing it would add.

    Args:
        gt: the split's boxes.
        det_image: ``int64 [M]`` image index (all valid); boxes: ``float64 [M, 4]`` xyxy;
        scores: ``[M]``; labels: ``int64 [M]``.
        iou: foreground threshold ``t_f``; background_iou: ``t_b``.

    Returns:
        ``{"mAP": base, "counts": {type: n}, "dAP": {type: mAP gain}, "iou", "background_iou",
        "per_class_counts": {type: [C]}}``.
    """
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    errors = classify_errors(gt, det_image, boxes, scores, labels, iou, background_iou)
    kind, target = errors["type"], errors["target"]
    taken = np.zeros(len(gt.labels), bool)
    taken[errors["match"]["gt"][errors["match"]["tp"]]] = True
    base = _mean_ap(gt, det_image, boxes, scores, labels, iou)
    d_ap, counts, per_class = {}, {}, {}
    for name in ERROR_TYPES[:-1]:
        sel = kind == name
        keep, fixed_boxes, fixed_labels = ~sel, boxes.copy(), labels.copy()
        if name in ("localization", "classification"):
            repair = sel & (target >= 0)
            repair[repair] = ~taken[target[repair]]  # only real targets are looked up: a split may have no GT
            keep |= repair
            if name == "localization":
                fixed_boxes[repair] = gt.boxes[target[repair]]
            else:
                fixed_labels[repair] = gt.labels[target[repair]]
        fixed = _mean_ap(gt, det_image[keep], fixed_boxes[keep], scores[keep], fixed_labels[keep], iou)
        d_ap[name], counts[name] = fixed - base, int(sel.sum())
        per_class[name] = np.bincount(labels[sel], minlength=gt.num_classes).tolist()
    missed = errors["missed"]
    kept_gt = _subset(gt, ~missed)
    d_ap["missed"] = _mean_ap(kept_gt, det_image, boxes, scores, labels, iou) - base
    counts["missed"] = int(missed.sum())
    per_class["missed"] = np.bincount(gt.labels[missed], minlength=gt.num_classes).tolist()
    return {
        "mAP": base,
        "counts": counts,
        "dAP": d_ap,
        "per_class_counts": per_class,
        "iou": iou,
        "background_iou": background_iou,
    }


def _subset(gt: voc.GroundTruth, mask: np.ndarray) -> voc.GroundTruth:
    return voc.GroundTruth(
        gt.image_ids, gt.box_image[mask], gt.boxes[mask], gt.labels[mask], gt.ignore[mask], gt.num_classes
    )


def confusion_matrix(
    gt: voc.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """Class confusion of confident detections, with a background row and column.

    Detections with ``score >= score_threshold`` are matched to GT boxes of any class,
    one-to-one, greedily by descending IoU (pairs need IoU >= ``iou``). A matched pair
    counts at ``[gt class, detected class]``; an unmatched GT box at ``[gt class, C]``
    (missed); an unmatched detection at ``[C, detected class]`` (background), unless it
    overlaps an ignored (difficult / crowd) box by IoU >= ``iou``, when it is not counted.

    Returns:
        ``int64 [C + 1, C + 1]``: rows ground truth, columns prediction, index ``C`` background.
    """
    c = gt.num_classes
    keep = np.asarray(scores) >= score_threshold
    det_image, boxes, labels = det_image[keep], np.asarray(boxes, np.float64)[keep], labels[keep]
    pair_det, pair_gt, _ = voc.candidate_pairs(gt, det_image)
    pair_iou = voc.box_iou_pairs(boxes[pair_det], gt.boxes[pair_gt])  # [P]
    strong = pair_iou >= iou
    ignored_hit = np.zeros(len(labels), bool)
    ignored_hit[pair_det[strong & gt.ignore[pair_gt]]] = True
    cand = np.flatnonzero(strong & ~gt.ignore[pair_gt])
    cand = cand[np.argsort(-pair_iou[cand], kind="stable")]
    det_used, gt_used = np.zeros(len(labels), bool), np.zeros(len(gt.labels), bool)
    matrix = np.zeros((c + 1, c + 1), np.int64)
    for d, g in zip(pair_det[cand].tolist(), pair_gt[cand].tolist()):  # greedy: inherently sequential
        if not det_used[d] and not gt_used[g]:
            det_used[d] = gt_used[g] = True
            matrix[gt.labels[g], labels[d]] += 1
    missed = ~gt_used & ~gt.ignore
    np.add.at(matrix, (gt.labels[missed], c), 1)
    background = ~det_used & ~ignored_hit
    np.add.at(matrix, (c, labels[background]), 1)
    return matrix


def pr_curves_per_class(
    gt: voc.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
) -> list[dict[str, np.ndarray | float]]:
    """Per class ``{"precision", "recall", "scores": [M_c], "AP": all-point AP, "num_gt": int}``."""
    match = voc.match_detections(gt, det_image, np.asarray(boxes, np.float64), scores, labels, iou)
    npos = gt.num_positives()
    curves = voc.pr_curves(match["tp"], match["fp"], scores, labels, npos)
    ap = voc.voc_ap(curves, npos, eleven_point=False)
    return [{**cv, "AP": float(a), "num_gt": int(n)} for cv, a, n in zip(curves, ap, npos)]


def analyse(
    gt: voc.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
    background_iou: float = 0.1,
    score_threshold: float = 0.5,
) -> dict:
    """PR curves, confusion matrix and error breakdown in one dict (arrays kept as numpy).

    Args:
        gt: the split's boxes (:meth:`voc.GroundTruth.from_records`).
        det_image: ``int64 [M]`` image index (:func:`voc.image_index`, all valid).
        boxes: ``[M, 4]`` xyxy absolute pixels; scores: ``[M]``; labels: ``int64 [M]`` in ``0..C-1``.
        iou, background_iou: TIDE's ``t_f`` / ``t_b``; ``iou`` is also the PR and confusion threshold.
        score_threshold: detections counted in the confusion matrix.

    Returns:
        ``{"pr_curves": [...], "confusion": {"matrix": int64 [C+1, C+1], "iou", "score_threshold"},
        "errors": error_breakdown(...)}``.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64)
    return {
        "pr_curves": pr_curves_per_class(gt, det_image, boxes, scores, labels, iou),
        "confusion": {
            "matrix": confusion_matrix(gt, det_image, boxes, scores, labels, iou, score_threshold),
            "iou": iou,
            "score_threshold": score_threshold,
        },
        "errors": error_breakdown(gt, det_image, boxes, scores, labels, iou, background_iou),
    }
