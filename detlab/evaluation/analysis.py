"""Where a detector goes wrong: PR curves, a confusion matrix and a TIDE-style error breakdown.

Legend for shape comments: ``M`` detections of the whole split, ``G`` GT boxes,
``P`` (detection, GT) pairs in the same image, ``C`` classes.

Everything here is built on the VOC matching of :mod:`detlab.evaluation.matching` at
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

Operating point: the counts a person reads ("how many boxes are wrong") depend on the
score a deployment keeps, so :func:`analyse` counts errors and fills the confusion
matrix at one score threshold, by default the F1-maximising one of all classes pooled
(:func:`operating_point`). dAP still integrates over every detection, as TIDE defines it.
A detection's type does not depend on the threshold (VOC matching is greedy in descending
score, so only higher-scoring detections decide it); only ``missed`` does.

dAP of a type = mAP (VOC all-point, at ``iou``) after fixing every error of that type and
re-running the matching, minus the mAP before. Fixes: a localization error takes its
target GT box, a classification error takes its target GT's class — or, when that GT
box already has a true positive, the detection is removed (it would be a duplicate);
duplicate, background and both errors are removed; missed GT boxes are removed from
the ground truth. Fixes of different types overlap, so their dAPs do not add up.
"""

from __future__ import annotations

import numpy as np

from detlab.evaluation import matching, voc

ERROR_TYPES = ("classification", "localization", "both", "duplicate", "background", "missed")


def _mean_ap(gt: matching.GroundTruth, det_image, boxes, scores, labels, iou: float) -> float:
    match = matching.match_detections(gt, det_image, boxes, scores, labels, iou)
    npos = gt.num_positives()
    curves = matching.pr_curves(match["tp"], match["fp"], scores, labels, npos)
    return voc.mean_ap(voc.voc_ap(curves, npos, eleven_point=False))


def best_other_class(
    gt: matching.GroundTruth, det_image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's best IoU with a non-ignored GT box of *another* class in its image.

    Returns:
        ``(iou float64 [M], gt_index int64 [M])``: ``0`` / ``-1`` when there is none.
    """
    pair_det, pair_gt, _ = matching.candidate_pairs(gt, det_image)  # class-agnostic [P]
    iou = matching.box_iou_pairs(boxes[pair_det], gt.boxes[pair_gt])
    iou = np.where((gt.labels[pair_gt] == labels[pair_det]) | gt.ignore[pair_gt], -1.0, iou)
    best, index = matching.max_per_detection(iou, pair_det, pair_gt, len(labels))
    none = best < 0
    best[none], index[none] = 0.0, -1
    return best, index


def classify_errors(
    gt: matching.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
    background_iou: float = 0.1,
) -> dict[str, np.ndarray]:
    """The error type of every detection and the missed GT boxes (module docstring).

    Returns:
        ``{"match": matching.match_detections(...), "type": object [M] ('' for TP / ignored),
        "target": int64 [M] GT index a loc/cls error points at (-1 otherwise),
        "missed": bool [G]}``.
    """
    match = matching.match_detections(gt, det_image, boxes, scores, labels, iou)
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


DEFAULT_SCORE = 0.5  # the operating point when F1 has no maximum to find (no GT or no true positive)


def operating_point(
    gt: matching.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
) -> dict:
    """The score threshold that maximises F1 of all classes pooled (VOC matching at ``iou``).

    Candidates are the detections' own scores (a threshold keeps ``score >= t``, so tied
    scores go in or out together); of equal F1 the highest threshold wins.

    Returns:
        ``{"score", "precision", "recall", "f1", "tp", "fp", "num_gt", "rule"}``; ``rule`` is
        ``"F1-max"``, or ``"default"`` with ``score`` :data:`DEFAULT_SCORE` when there is no GT
        box or no true positive.
    """
    scores = np.asarray(scores, np.float64)
    match = matching.match_detections(gt, det_image, np.asarray(boxes, np.float64), scores, labels, iou)
    counted = match["tp"] | match["fp"]  # ignored (difficult / crowd) detections count for nothing
    s, tp = scores[counted], match["tp"][counted]
    num_gt = int(gt.num_positives().sum())
    if num_gt == 0 or not tp.any():
        nan = float("nan")
        return dict(
            score=DEFAULT_SCORE, precision=nan, recall=nan, f1=nan, tp=0, fp=0, num_gt=num_gt, rule="default"
        )
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], tp[order]  # [M'] score-descending
    n_tp = np.cumsum(tp)
    n = np.arange(1, len(s) + 1)
    precision, recall = n_tp / n, n_tp / num_gt
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    f1[np.r_[s[1:] == s[:-1], False]] = -1.0  # only after the last of a run of tied scores
    k = int(np.argmax(f1))
    return dict(
        score=float(s[k]),
        precision=float(precision[k]),
        recall=float(recall[k]),
        f1=float(f1[k]),
        tp=int(n_tp[k]),
        fp=int(n[k] - n_tp[k]),
        num_gt=num_gt,
        rule="F1-max",
    )


def error_breakdown(
    gt: matching.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
    background_iou: float = 0.1,
    score_threshold: float | None = None,
) -> dict:
    """Counts of each error type and the mAP that fixing it would add.

    Args:
        gt: the split's boxes.
        det_image: ``int64 [M]`` image index (all valid); boxes: ``float64 [M, 4]`` xyxy;
        scores: ``[M]``; labels: ``int64 [M]``.
        iou: foreground threshold ``t_f``; background_iou: ``t_b``.
        score_threshold: count the errors of detections with ``score >= score_threshold`` only
            (and the GT boxes those miss); ``None`` counts every detection. dAP always uses all.

    Returns:
        ``{"mAP": base, "counts": {type: n}, "dAP": {type: mAP gain}, "iou", "background_iou",
        "score_threshold", "per_class_counts": {type: [C]}}``.
    """
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    errors = classify_errors(gt, det_image, boxes, scores, labels, iou, background_iou)
    kind, target = errors["type"], errors["target"]
    taken = np.zeros(len(gt.labels), bool)
    taken[errors["match"]["gt"][errors["match"]["tp"]]] = True
    base = _mean_ap(gt, det_image, boxes, scores, labels, iou)
    d_ap, counts, per_class = {}, {}, {}
    if score_threshold is None:
        counted = errors
    else:
        keep = scores >= score_threshold
        counted = classify_errors(
            gt, det_image[keep], boxes[keep], scores[keep], labels[keep], iou, background_iou
        )
        counted["labels"] = labels[keep]
    for name in ERROR_TYPES[:-1]:
        sel = counted["type"] == name
        counts[name] = int(sel.sum())
        per_class[name] = np.bincount(counted.get("labels", labels)[sel], minlength=gt.num_classes).tolist()
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
        d_ap[name] = fixed - base
    missed = errors["missed"]
    kept_gt = _subset(gt, ~missed)
    d_ap["missed"] = _mean_ap(kept_gt, det_image, boxes, scores, labels, iou) - base
    counts["missed"] = int(counted["missed"].sum())
    per_class["missed"] = np.bincount(gt.labels[counted["missed"]], minlength=gt.num_classes).tolist()
    return {
        "mAP": base,
        "counts": counts,
        "dAP": d_ap,
        "per_class_counts": per_class,
        "iou": iou,
        "background_iou": background_iou,
        "score_threshold": score_threshold,
    }


def _subset(gt: matching.GroundTruth, mask: np.ndarray) -> matching.GroundTruth:
    return matching.GroundTruth(
        gt.image_ids, gt.box_image[mask], gt.boxes[mask], gt.labels[mask], gt.ignore[mask], gt.num_classes
    )


def confusion_matrix(
    gt: matching.GroundTruth,
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
    pair_det, pair_gt, _ = matching.candidate_pairs(gt, det_image)
    pair_iou = matching.box_iou_pairs(boxes[pair_det], gt.boxes[pair_gt])  # [P]
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
    gt: matching.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
) -> list[dict[str, np.ndarray | float]]:
    """Per class ``{"precision", "recall", "scores": [M_c], "AP": all-point AP, "num_gt": int}``."""
    match = matching.match_detections(gt, det_image, np.asarray(boxes, np.float64), scores, labels, iou)
    npos = gt.num_positives()
    curves = matching.pr_curves(match["tp"], match["fp"], scores, labels, npos)
    ap = voc.voc_ap(curves, npos, eleven_point=False)
    return [{**cv, "AP": float(a), "num_gt": int(n)} for cv, a, n in zip(curves, ap, npos)]


def analyse(
    gt: matching.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
    background_iou: float = 0.1,
    score_threshold: float | None = None,
) -> dict:
    """PR curves, confusion matrix and error breakdown in one dict (arrays kept as numpy).

    Args:
        gt: the split's boxes (:meth:`matching.GroundTruth.from_records`).
        det_image: ``int64 [M]`` image index (:func:`matching.image_index`, all valid).
        boxes: ``[M, 4]`` xyxy absolute pixels; scores: ``[M]``; labels: ``int64 [M]`` in ``0..C-1``.
        iou, background_iou: TIDE's ``t_f`` / ``t_b``; ``iou`` is also the PR and confusion threshold.
        score_threshold: the operating point: detections counted in the confusion matrix and the
            error counts; ``None`` takes the F1-maximising score (:func:`operating_point`).

    Returns:
        ``{"pr_curves": [...], "confusion": {"matrix": int64 [C+1, C+1], "iou", "score_threshold"},
        "errors": error_breakdown(...), "operating_point": {...operating_point(), "chosen": float,
        "chosen_by": "F1-max" | "default" | "given"}}``; each PR curve also holds
        ``"at_operating_point": {"precision", "recall"}`` (NaN when the class has no GT).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64)
    point = operating_point(gt, det_image, boxes, scores, labels, iou)
    chosen = point["score"] if score_threshold is None else float(score_threshold)
    point = {**point, "chosen": chosen, "chosen_by": point["rule"] if score_threshold is None else "given"}
    curves = pr_curves_per_class(gt, det_image, boxes, scores, labels, iou)
    for curve in curves:
        kept = int(np.sum(np.asarray(curve["scores"]) >= chosen))  # the curve runs in descending score
        rec, prec = np.asarray(curve["recall"]), np.asarray(curve["precision"])
        at = (float(prec[kept - 1]), float(rec[kept - 1])) if kept and curve["num_gt"] else (np.nan, np.nan)
        curve["at_operating_point"] = {"precision": at[0], "recall": at[1], "score": chosen}
    return {
        "pr_curves": curves,
        "confusion": {
            "matrix": confusion_matrix(gt, det_image, boxes, scores, labels, iou, chosen),
            "iou": iou,
            "score_threshold": chosen,
        },
        "errors": error_breakdown(gt, det_image, boxes, scores, labels, iou, background_iou, chosen),
        "operating_point": point,
    }


def match_types(
    gt: matching.GroundTruth,
    det_image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float = 0.5,
    background_iou: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """What the report's browser shows at any score threshold, from one classification.

    Returns:
        ``(type object [M], found_at float64 [G])``: each detection's ``"true_positive"``,
        ``"ignored"`` or error type (:func:`classify_errors`, threshold-free: module docstring);
        each GT box's highest score among the detections that find it (a true positive, or a
        localization / classification error aimed at it), ``-1`` when none does — so the box is
        ``missed`` at threshold ``t`` exactly when ``found_at < t`` (``inf`` for ignored boxes).
    """
    scores = np.asarray(scores, np.float64)
    errors = classify_errors(
        gt, det_image, np.asarray(boxes, np.float64), scores, labels, iou, background_iou
    )
    kind = errors["type"].copy()
    kind[errors["match"]["tp"]] = "true_positive"
    kind[errors["match"]["ignored"]] = "ignored"
    found_at = np.full(len(gt.labels), -1.0)
    finder = np.where(errors["match"]["tp"], errors["match"]["gt"], errors["target"])  # [M] GT index or -1
    has = finder >= 0
    np.maximum.at(found_at, finder[has], scores[has])
    found_at[gt.ignore] = np.inf
    return kind, found_at
