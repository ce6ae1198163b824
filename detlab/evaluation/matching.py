"""Matching detections to ground truth, from flat arrays: the engine under every protocol's curves.

VOC AP (:mod:`.voc`), the PR curves, confusion matrix and error breakdown
(:mod:`.analysis`), the report's browser and TensorBoard's PR curves all match here,
with no Python loop over images or detections: a handful of numpy passes.

Legend for shape comments: ``G`` ground-truth boxes of the whole split, ``M``
detections of the whole split, ``P`` (detection, same-image same-class GT) pairs,
``C`` classes.

Matching follows the VOC devkit (``VOCevaldet.m``) exactly:

* detections of a class are taken in descending score over the whole split;
* each detection looks only at the GT box of its class *in its image* with the
  highest IoU (first one on ties); the match needs ``IoU > iou`` (strictly, as in the
  devkit);
* if that box is ``difficult`` the detection is ignored: neither TP nor FP;
* otherwise the first (highest-scoring) detection to pick the box is a TP and every
  later one is a duplicate FP — the devkit does *not* fall back to the next-best box;
* a detection whose best IoU is ``<= iou`` is an FP.

Box frame and IoU: boxes are ``xyxy`` in continuous pixels (the data contract), so
IoU is ``area(∩) / area(∪)`` with no ``+1``: the devkit's ``+1`` belongs to its
1-based inclusive pixel indices, which ``data/formats/voc.py`` already shifted.

``difficult`` and ``iscrowd`` boxes are both *ignored* boxes here: never counted in
the number of positives, and a detection matched to one is dropped from the curve.
(VOC has no crowds; treating a crowd like a difficult box is the nearest VOC meaning.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detlab.data.records import Records


@dataclass
class GroundTruth:
    """The boxes of a whole split as flat arrays, in ``Records`` order.

    Attributes:
        image_ids: ``int64 [I]`` every image id of the split (images without boxes too).
        box_image: ``int64 [G]`` index into ``image_ids`` of each box's image.
        boxes: ``float64 [G, 4]`` xyxy absolute pixels.
        labels: ``int64 [G]`` class indices ``0..C-1``.
        ignore: ``bool [G]`` difficult or crowd: neither a miss nor a match target that scores.
        num_classes: ``C``.
    """

    image_ids: np.ndarray
    box_image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    num_classes: int

    @classmethod
    def from_records(cls, records: Records) -> GroundTruth:
        """Flatten ``records`` (one pass over images, one concatenate per field)."""
        images = records.images
        counts = np.fromiter((r.num_boxes for r in images), np.int64, len(images))

        def cat(get, dtype, shape) -> np.ndarray:
            if not images:
                return np.zeros((0,) + shape[1:], dtype)
            return np.concatenate([np.asarray(get(r), dtype).reshape(shape) for r in images])

        ignore = cat(lambda r: r.difficult, bool, (-1,)) | cat(lambda r: r.iscrowd, bool, (-1,))
        return cls(
            image_ids=np.fromiter((r.image_id for r in images), np.int64, len(images)),
            box_image=np.repeat(np.arange(len(images)), counts),
            boxes=cat(lambda r: r.boxes, np.float64, (-1, 4)),
            labels=cat(lambda r: r.labels, np.int64, (-1,)),
            ignore=ignore,
            num_classes=records.num_classes,
        )

    def num_positives(self) -> np.ndarray:
        """``int64 [C]``: non-ignored boxes per class (VOC's ``npos``)."""
        return np.bincount(self.labels[~self.ignore], minlength=self.num_classes)[: self.num_classes]


def box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row ``i`` of ``a`` with row ``i`` of ``b``.

    Args:
        a, b: ``float64 [P, 4]`` xyxy boxes.

    Returns:
        ``float64 [P]``; 0 where the union is empty.
    """
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def image_index(gt: GroundTruth, image_ids: np.ndarray) -> np.ndarray:
    """``int64 [M]`` index into ``gt.image_ids`` of each id; ``-1`` for ids not in the split."""
    order = np.argsort(gt.image_ids, kind="stable")
    sorted_ids = gt.image_ids[order]
    pos = np.searchsorted(sorted_ids, image_ids)
    pos = np.clip(pos, 0, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[pos] == image_ids) if len(sorted_ids) else np.zeros(len(image_ids), bool)
    return np.where(found, order[pos] if len(order) else -1, -1)


def candidate_pairs(
    gt: GroundTruth, det_image: np.ndarray, det_labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, GT box) pair that shares an image (and a class, when labels are given).

    Args:
        gt: the split's boxes.
        det_image: ``int64 [M]`` index into ``gt.image_ids`` (see :func:`image_index`).
        det_labels: ``int64 [M]`` class indices, or ``None`` for class-agnostic pairs.

    Returns:
        ``(pair_det int64 [P], pair_gt int64 [P], count int64 [M])``: pairs grouped by
        detection in ascending order; within a detection, GT boxes in ``Records`` order.
    """
    c = 1 if det_labels is None else max(gt.num_classes, int(det_labels.max(initial=-1)) + 1, 1)
    gkey = gt.box_image * c + (0 if det_labels is None else gt.labels)
    gidx = np.argsort(gkey, kind="stable")  # within a key, Records order is kept (devkit tie rule)
    gkey = gkey[gidx]
    dkey = det_image * c + (0 if det_labels is None else det_labels)
    start, end = np.searchsorted(gkey, dkey, "left"), np.searchsorted(gkey, dkey, "right")
    count = end - start  # [M] candidate boxes per detection
    total = int(count.sum())
    pair_det = np.repeat(np.arange(len(det_image)), count)  # [P]
    pair_gt = gidx[
        np.arange(total) - np.repeat(np.cumsum(count) - count, count) + np.repeat(start, count)
    ]  # [P]
    return pair_det, pair_gt, count


def max_per_detection(
    values: np.ndarray, pair_det: np.ndarray, pair_gt: np.ndarray, num_dets: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per detection, the largest pair value and the GT box that has it (first on ties).

    Args:
        values: ``float64 [P]`` one value per pair (e.g. IoU); pairs grouped by detection.
        pair_det, pair_gt: ``int64 [P]`` from :func:`candidate_pairs`.
        num_dets: ``M``.

    Returns:
        ``(max float64 [M], gt_index int64 [M])``: ``0`` and ``-1`` for detections without pairs.
    """
    best, gt_index = np.zeros(num_dets), np.full(num_dets, -1, np.int64)
    if len(values):
        starts = np.flatnonzero(np.r_[True, pair_det[1:] != pair_det[:-1]])
        dets = pair_det[starts]
        best[dets] = np.maximum.reduceat(values, starts)
        at_max = np.flatnonzero(values == best[pair_det])
        hit_dets, first_hit = np.unique(pair_det[at_max], return_index=True)
        gt_index[hit_dets] = pair_gt[at_max[first_hit]]
    return best, gt_index


def best_gt(
    gt: GroundTruth, det_image: np.ndarray, det_boxes: np.ndarray, det_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's best-IoU GT box among the boxes of its class in its image.

    Args:
        gt: the split's boxes.
        det_image: ``int64 [M]`` index into ``gt.image_ids``.
        det_boxes: ``float64 [M, 4]`` xyxy.
        det_labels: ``int64 [M]`` class indices.

    Returns:
        ``(iou_max float64 [M], gt_index int64 [M])``: ``0`` and ``-1`` when the image
        has no box of that class. Ties go to the first box in ``Records`` order.
    """
    pair_det, pair_gt, _ = candidate_pairs(gt, det_image, det_labels)
    iou = box_iou_pairs(det_boxes[pair_det], gt.boxes[pair_gt])  # [P]
    return max_per_detection(iou, pair_det, pair_gt, len(det_labels))


def match_detections(
    gt: GroundTruth,
    det_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_labels: np.ndarray,
    iou: float = 0.5,
) -> dict[str, np.ndarray]:
    """VOC matching of every detection of the split (see the module docstring).

    Args:
        gt: the split's boxes.
        det_image: ``int64 [M]`` image index (from :func:`image_index`; all valid).
        det_boxes: ``float64 [M, 4]`` xyxy absolute pixels.
        det_scores: ``[M]`` confidences.
        det_labels: ``int64 [M]`` class indices ``0..C-1``.
        iou: the match threshold (a match needs IoU strictly above it).

    Returns:
        ``{"tp", "fp", "ignored": bool [M], "iou": float64 [M] best same-class IoU,
        "gt": int64 [M] that box's index or -1}``, in the input order.
    """
    iou_max, gt_index = best_gt(gt, det_image, det_boxes, det_labels)
    hit = iou_max > iou
    ignored = np.zeros(len(hit), bool)  # indexed through `hit` only: a split without GT has no box to look up
    ignored[hit] = gt.ignore[gt_index[hit]]
    candidate = hit & ~ignored
    order = np.argsort(-np.asarray(det_scores, np.float64), kind="stable")  # [M] score-descending
    cand_sorted = order[candidate[order]]
    _, first = np.unique(gt_index[cand_sorted], return_index=True)  # first pick of each box wins
    tp = np.zeros(len(det_labels), bool)
    tp[cand_sorted[first]] = True
    fp = ~tp & ~ignored
    return {"tp": tp, "fp": fp, "ignored": ignored, "iou": iou_max, "gt": gt_index}


def pr_curves(
    tp: np.ndarray, fp: np.ndarray, scores: np.ndarray, labels: np.ndarray, num_positives: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """Per-class precision / recall after each detection, in descending score.

    Args:
        tp, fp: ``bool [M]`` from :func:`match_detections` (ignored detections have both False
            and are left out).
        scores: ``[M]``; labels: ``int64 [M]``.
        num_positives: ``int64 [C]`` non-ignored GT boxes per class.

    Returns:
        ``C`` dicts ``{"precision", "recall", "scores": float64 [M_c]}`` (recall is NaN
        for a class without GT).
    """
    keep = tp | fp
    scores, labels, tp = np.asarray(scores, np.float64)[keep], labels[keep], tp[keep]
    order = np.lexsort((-scores, labels))  # by class, then score descending (stable)
    scores, labels, tp = scores[order], labels[order], tp[order]
    bounds = np.searchsorted(labels, np.arange(len(num_positives) + 1))
    ctp_all = np.cumsum(tp)
    curves = []
    for c, npos in enumerate(num_positives):
        lo, hi = bounds[c], bounds[c + 1]
        ctp = (ctp_all[lo:hi] - (ctp_all[lo - 1] if lo else 0)).astype(np.float64)
        rank = np.arange(1, hi - lo + 1, dtype=np.float64)  # detections so far = tp + fp
        recall = ctp / npos if npos else np.full(hi - lo, np.nan)
        curves.append({"precision": ctp / rank, "recall": recall, "scores": scores[lo:hi]})
    return curves
