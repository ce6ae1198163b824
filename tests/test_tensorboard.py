"""TensorBoard at each evaluation: per-class PR curves from the evaluation's matching, drawn
validation images, and no NaN scalars — read back from the event file with TensorBoard's own
EventAccumulator, and the PR counts checked against an independent count from the VOC matching."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_report_runfolder import one_thread  # noqa: F401  (autouse fixture)

pytest.importorskip("tensorboard", reason="tensorboard is an optional extra (pip install 'detlab[test]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.pr_curve import metadata as pr_metadata  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from detlab.engine.tensorboard import DRAWN_IMAGES, PR_THRESHOLDS, pr_counts, split_scalars  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from test_export_run import tiny_bccd_run

    return tiny_bccd_run(tmp_path_factory)  # trained once per session, shared with the export tests


def events(run) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0, "images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_pr_curves_per_class_match_the_evaluation(run):
    acc = events(run)
    tags = acc.Tags()
    pr = sorted(t for t in tags["tensors"] if t.startswith("pr/"))
    assert pr == ["pr/Platelets", "pr/RBC", "pr/WBC"]
    assert all(acc.SummaryMetadata(t).plugin_data.plugin_name == pr_metadata.PLUGIN_NAME for t in pr)
    # the curve's counts are the evaluation's: its last TP count at threshold 0 equals the
    # true positives of the same VOC matching, and TP + FN is the class's ground-truth count
    metrics = json.loads((run / "eval" / "last.json").read_text())
    assert "voc07" in metrics
    records_gt = {"Platelets": 0, "RBC": 0, "WBC": 0}
    from detlab.data.formats import read_records

    val = read_records(f"{run.parent / 'BCCD6'}:val")
    for r in val.images:
        for c, d in zip(r.labels, r.difficult):
            records_gt[val.class_names[c]] += int(not d)
    for tag in pr:
        event = acc.Tensors(tag)[-1]
        data = tensor_util.make_ndarray(event.tensor_proto)  # [6, T]: TP, FP, TN, FN, precision, recall
        assert data.shape == (6, PR_THRESHOLDS)
        tp, fp, fn, precision, recall = data[0], data[1], data[3], data[4], data[5]
        n_gt = records_gt[tag.removeprefix("pr/")]
        np.testing.assert_allclose(tp + fn, n_gt)
        assert np.all(np.diff(tp) <= 0) and np.all(np.diff(fp) <= 0)  # fewer kept as the threshold rises
        np.testing.assert_allclose(recall, tp / n_gt, rtol=1e-6)
        kept = tp + fp
        np.testing.assert_allclose(precision[kept > 0], (tp / np.maximum(kept, 1))[kept > 0], rtol=1e-6)
        assert event.step == metrics["iteration"]


def test_drawn_validation_images_and_no_nan_scalars(run):
    acc = events(run)
    images = [t for t in acc.Tags()["images"] if t.startswith("val/")]
    assert len(images) == min(DRAWN_IMAGES, 2)  # the split has two images
    shot = acc.Images(images[0])[-1]
    assert shot.width == 640 and shot.height == 480 and shot.encoded_image_string[:4] == b"\x89PNG"
    scalars = acc.Tags()["scalars"]
    assert "coco/AP" in scalars and "val/loss" in scalars
    for tag in scalars:
        assert all(math.isfinite(e.value) for e in acc.Scalars(tag)), tag
    # BCCD's val images have no small objects: APs is undefined, left out of the scalars and noted
    assert "coco/APs" not in scalars
    notes = tensor_util.make_ndarray(acc.Tensors("eval/notes/text_summary")[-1].tensor_proto)
    assert b"coco/APs: undefined" in notes.item()


def test_pr_counts_against_a_direct_count():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    tp = rng.random(200) < scores  # better scores are more often right
    fp = ~tp
    fp[:10] = False  # ten ignored detections: neither
    tp[:10] = False
    thresholds = np.linspace(0, 1, PR_THRESHOLDS)
    counts = pr_counts(tp, fp, scores, 150, thresholds)
    for k, t in enumerate(thresholds):
        kept = scores >= t
        assert counts["tp"][k] == (tp & kept).sum() and counts["fp"][k] == (fp & kept).sum()
        assert counts["fn"][k] == 150 - (tp & kept).sum()
    assert counts["precision"][-1] == 1.0 and counts["recall"][0] == tp.sum() / 150


def test_split_scalars():
    finite, undefined = split_scalars({"a": 0.5, "b": float("nan"), "c": float("inf"), "d": 0.0})
    assert finite == {"a": 0.5, "d": 0.0} and undefined == ["b", "c"]
