"""Analysis: TIDE-style error types and dAP, confusion matrix, PR curves (hand-computed cases)."""

from __future__ import annotations

import numpy as np
import pytest
from test_eval_voc import dets, make_records

from detlab.evaluation import analysis, matching
from detlab.evaluation.evaluator import evaluate_detections


def flat(records, rows):
    """Records + ``[(image_id, label, score, x1, y1, x2, y2)]`` → (gt, image index, boxes, scores, labels)."""
    gt = matching.GroundTruth.from_records(records)
    a = np.asarray(rows, np.float64).reshape(-1, 7)
    return gt, matching.image_index(gt, a[:, 0].astype(np.int64)), a[:, 3:], a[:, 2], a[:, 1].astype(np.int64)


# cat A, dog B, cat C (nobody looks at it: missed), cat D.
ERR_GT = [
    {
        "id": 1,
        "boxes": [[0, 0, 10, 10], [100, 0, 110, 10], [200, 200, 210, 210], [50, 50, 60, 60]],
        "labels": [0, 1, 0, 0],
    }
]
ERR_DETS = [
    (1, 0, 0.9, 0, 0, 10, 10),  # TP on A
    (1, 0, 0.8, 0, 0, 10, 10),  # duplicate of A
    (1, 0, 0.7, 50, 50, 56, 56),  # localization: IoU .36 with D
    (1, 0, 0.6, 100, 0, 110, 10),  # classification: a cat on dog B (IoU 1)
    (1, 0, 0.5, 105, 0, 115, 10),  # both: IoU 1/3 with dog B, no cat near
    (1, 1, 0.4, 300, 300, 310, 310),  # background
]


def test_error_types_and_dap_hand_computed():
    records = make_records(ERR_GT, ["cat", "dog"])
    out = analysis.error_breakdown(*flat(records, ERR_DETS))
    assert out["counts"] == {
        "classification": 1,
        "localization": 1,
        "both": 1,
        "duplicate": 1,
        "background": 1,
        "missed": 1,
    }
    # Base: cat (npos 3) ranks TP, FP×4 → AP 1/3; dog (npos 1) only an FP → 0; mAP 1/6.
    assert out["mAP"] == pytest.approx(1 / 6)
    d = out["dAP"]
    # localization fixed: cat TP, FP, TP → 1/3·1 + 1/3·2/3 = 5/9; mAP 5/18 → +1/9.
    assert d["localization"] == pytest.approx(5 / 18 - 1 / 6)
    # classification fixed: the cat on B becomes a dog TP ranked above the dog FP → dog AP 1;
    # mAP (1/3 + 1)/2 = 2/3 → +1/2.
    assert d["classification"] == pytest.approx(2 / 3 - 1 / 6)
    # missed fixed: C leaves the GT → cat npos 2, AP 1/2; mAP 1/4 → +1/12.
    assert d["missed"] == pytest.approx(1 / 4 - 1 / 6)
    # FPs ranked below every TP of their class cost nothing here.
    assert d["duplicate"] == pytest.approx(0) and d["both"] == pytest.approx(0)
    assert d["background"] == pytest.approx(0)
    assert out["per_class_counts"]["missed"] == [1, 0]


def test_background_error_ranked_first_costs_half_the_ap():
    # cat GT; a background FP (.9) above the TP (.8): precision 0 then 1/2 at recall 1 → AP 1/2.
    records = make_records([{"id": 1, "boxes": [[0, 0, 10, 10]], "labels": [0]}], ["cat"])
    out = analysis.error_breakdown(*flat(records, [(1, 0, 0.9, 50, 50, 60, 60), (1, 0, 0.8, 0, 0, 10, 10)]))
    assert out["mAP"] == pytest.approx(0.5)
    assert out["counts"]["background"] == 1 and out["dAP"]["background"] == pytest.approx(0.5)


def test_confusion_matrix_hand_computed():
    records = make_records(
        [
            {
                "id": 1,
                "boxes": [[0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60], [80, 80, 90, 90]],
                "labels": [0, 1, 0, 1],
                "difficult": [False, False, False, True],
            }
        ],
        ["cat", "dog"],
    )
    rows = [
        (1, 0, 0.9, 0, 0, 10, 10),  # cat on cat A        → [cat, cat]
        (1, 0, 0.8, 20, 0, 30, 10),  # cat on dog B        → [dog, cat]
        (1, 1, 0.7, 200, 200, 210, 210),  # dog on nothing      → [bg, dog]
        (1, 1, 0.6, 80, 80, 90, 90),  # on the difficult box → not counted
        (1, 0, 0.55, 0, 0, 10, 10),  # second cat on A      → [bg, cat]
        (1, 1, 0.3, 50, 50, 60, 60),
    ]  # below the score threshold → not counted
    m = analysis.confusion_matrix(*flat(records, rows), iou=0.5, score_threshold=0.5)
    # rows GT (cat, dog, bg), columns prediction (cat, dog, bg); cat C is missed.
    assert m.tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 0]]


def test_pr_curves_agree_with_voc12():
    from test_eval_voc import CASE_DETS, CASE_GT

    records = make_records(CASE_GT, ["cat", "dog", "bird"])
    curves = analysis.pr_curves_per_class(*flat(records, CASE_DETS))
    v12 = evaluate_detections(records, dets(CASE_DETS), ("voc12",))["voc12"]["per_class"]
    np.testing.assert_allclose([c["AP"] for c in curves], list(v12.values()), equal_nan=True)
    cat = curves[0]
    np.testing.assert_allclose(cat["recall"], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(cat["precision"], [1, 1 / 2, 2 / 3, 1 / 2])
    assert [c["num_gt"] for c in curves] == [3, 0, 1]
