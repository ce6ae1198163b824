"""`detlab eval` (both modes), `evaluate(model, dataset)` and the plots it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_eval_coco import chess_records
from test_eval_voc import CASE_DETS, CASE_GT, make_records

from detlab.cli import main
from detlab.evaluation import command
from detlab.evaluation.evaluator import evaluate, flatten_metrics
from detlab.report import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _results(records, rows):
    cats = list(range(1, records.num_classes + 1))
    return [
        {"image_id": i, "category_id": cats[c], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
        for i, c, s, x1, y1, x2, y2 in rows
    ]


def test_gt_dets_mode_prints_tables_and_writes_stamped_files(tmp_path, monkeypatch, capsys):
    records = make_records(CASE_GT, ["cat", "dog", "bird"])
    monkeypatch.setattr(command, "_load_records", lambda spec, args, classes=None: records)
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(
        json.dumps(
            _results(records, CASE_DETS)
            + [{"image_id": 77, "category_id": 1, "bbox": [0, 0, 3, 3], "score": 0.1}]
        )
    )
    assert main(["eval", "--gt", "anything", "--dets", str(dets_path)]) == 0
    cap = capsys.readouterr()
    assert "1 results with an unknown image_id (e.g. 77)" in cap.err
    assert "VOC12 mAP@0.5 (all-point): 27.8" in cap.out  # (5/9 + 0) / 2
    assert "VOC07 mAP@0.5 (11-point): 27.3" in cap.out  # (6/11 + 0) / 2
    out = tmp_path / "eval"
    meta = json.loads((out / "metrics.json").read_text())
    assert set(meta["protocols"]) == {"coco", "voc07", "voc12"}
    assert meta["detections"] == str(dets_path) and meta["split"] == "test" and meta["checkpoint"] is None
    assert meta["results"]["voc12"]["per_class"]["dog"] is None  # no GT: NaN → null
    assert meta["results"]["voc12"]["mAP"] == pytest.approx(5 / 18)
    assert len(meta["skipped"]) == 1
    ana = json.loads((out / "analysis.json").read_text())
    assert "protocol" in ana and ana["confusion"]["labels"][-1] == "background"
    for name in ("per_class_ap.png", "pr_curves.png", "confusion_matrix.png", "errors.png"):
        assert (out / name).read_bytes()[:8] == PNG


def test_gt_dets_mode_on_chess_with_the_data_layer(chess, tmp_path, capsys):
    pytest.importorskip("detlab.data.dataset")
    records = chess_records(chess)
    rows = [
        {
            "image_id": r.image_id,
            "category_id": int(records.source_ids[lab]),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": 0.9,
        }
        for r in records.images
        for b, lab in zip(r.boxes.astype(np.float64), r.labels)
    ]
    path = tmp_path / "perfect.json"
    path.write_text(json.dumps(rows))
    code = main(
        [
            "eval",
            "--gt",
            f"{chess}:test",
            "--dets",
            str(path),
            "--protocol",
            "coco,voc12",
            "--no-analysis",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "o" / "metrics.json").read_text())["results"]
    assert result["coco"]["AP"] == pytest.approx(1.0) and result["voc12"]["mAP"] == pytest.approx(1.0)
    assert "voc07" not in result


@pytest.mark.parametrize(
    "argv, code, text",
    [
        (["eval", "--gt", "x"], 2, "--gt DATA and --dets RESULTS.json go together"),
        (["eval"], 2, "give a RUN folder"),
        (["eval", "run", "--protocol", "coco,map"], 2, "protocol: map"),
    ],
)
def test_usage_errors_are_one_line(argv, code, text, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1


def test_malformed_results_exit_1_with_index_and_field(tmp_path, monkeypatch, capsys):
    records = make_records(CASE_GT, ["cat", "dog", "bird"])
    monkeypatch.setattr(command, "_load_records", lambda spec, args, classes=None: records)
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            [
                {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
                {"image_id": 1, "category_id": 1, "bbox": "oops", "score": 0.5},
            ]
        )
    )
    assert main(["eval", "--gt", "x", "--dets", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("detlab: ") and "bad.json: [1].bbox:" in err and len(err.splitlines()) == 1


class TinyDataset(torch.utils.data.Dataset):
    """Images fed at twice the annotated size (a resize transform), targets in that frame."""

    def __init__(self, records):
        self.records = records
        self.class_names = records.class_names

    def __len__(self):
        return len(self.records.images)

    def __getitem__(self, i):
        r = self.records.images[i]
        target = {
            "boxes": torch.as_tensor(r.boxes) * 2,
            "labels": torch.as_tensor(r.labels),
            "image_id": r.image_id,
            "orig_size": (r.height, r.width),
        }
        return torch.zeros(3, 2 * r.height, 2 * r.width), target


class Oracle(torch.nn.Module):
    """Returns each image's targets (in the fed image's pixels, as the dataset gives them, images in
    dataset order) plus one far-off low-score false positive."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        self.next_index = 0
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images):
        outs = []
        for im in images:
            _, t = self.dataset[self.next_index]
            self.next_index += 1
            assert tuple(im.shape[1:]) == (2 * t["orig_size"][0], 2 * t["orig_size"][1])
            boxes = torch.cat([t["boxes"], torch.tensor([[300.0, 300.0, 310.0, 310.0]])])
            outs.append(
                {
                    "boxes": boxes,
                    "scores": torch.cat([torch.ones(len(t["boxes"])), torch.tensor([0.1])]),
                    "labels": torch.cat([t["labels"], torch.tensor([0])]),
                }
            )
        return outs

    def val_losses(self, images, targets):
        return {"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(float(len(images)))}


def test_evaluate_runs_model_maps_boxes_back_and_averages_losses():
    records = make_records(CASE_GT, ["cat", "dog", "bird"], fmt="coco")
    ds = TinyDataset(records)
    model = Oracle(ds)
    model.train()
    result = evaluate(model, ds, ("coco", "voc12"), batch_size=2, with_loss=True, progress=False)
    assert model.training  # mode restored
    assert result["voc12"]["per_class"]["cat"] == pytest.approx(1.0)  # difficult box ignored, FP ranked last
    assert result["coco"]["AP50"] == pytest.approx(1.0)
    # batches of 2 and 1 images: loss_b = (2·2 + 1·1) / 3
    assert result["val_loss"]["loss_b"] == pytest.approx(5 / 3)
    assert result["val_loss"]["loss"] == pytest.approx(1 + 5 / 3)
    flat = flatten_metrics(result)
    assert flat["voc12/mAP"] == pytest.approx(1.0) and flat["val/loss_a"] == pytest.approx(1.0)
    assert "coco/per_class" not in flat and all(isinstance(v, float) for v in flat.values())


def test_run_mode_uses_detector_and_run_config(tmp_path, monkeypatch, capsys):
    import detlab.data.dataset as dataset_module
    import detlab.predict as predict_module

    records = make_records(CASE_GT, ["cat", "dog", "bird"], fmt="coco")
    ds = TinyDataset(records)

    class FakeDetector:
        model_name = "oracle"
        class_names = ["cat", "dog", "bird"]
        config = {"val": "somewhere:val"}
        device = torch.device("cpu")
        precision = "fp32"

        def __init__(self):
            self.model = Oracle(ds)

    seen = {}
    monkeypatch.setattr(
        predict_module.Detector,
        "from_run",
        classmethod(lambda cls, run, checkpoint, device, precision: FakeDetector()),
    )
    monkeypatch.setattr(dataset_module, "load_dataset", lambda spec, **kw: seen.update(spec=spec, **kw) or ds)
    monkeypatch.setattr(dataset_module, "load_ground_truth", lambda spec, **kw: records)
    run = tmp_path / "run"
    assert main(["eval", str(run), "--protocol", "voc12", "--no-analysis"]) == 0
    assert seen["spec"] == "somewhere:val" and seen["classes"] == ["cat", "dog", "bird"]
    meta = json.loads((run / "eval" / "metrics.json").read_text())
    assert meta["checkpoint"] == f"{run} (best)" and meta["results"]["voc12"]["mAP"] == pytest.approx(1.0)
    assert meta["precision"] == "fp32"


def test_training_curves_from_metrics_jsonl(tmp_path, capsys):
    lines = [
        {
            "type": "train",
            "iter": i,
            "epoch": 1 + i // 10,
            "lr": 0.01 * (1 - i / 40),
            "loss": 3 - i / 20,
            "loss_cls": 2 - i / 30,
            "loss_box": 1 - i / 60,
            "sec_per_iter": 0.1,
            "data_sec": 0.01,
        }
        for i in range(1, 40)
    ]
    lines += [
        {
            "type": "eval",
            "epoch": e,
            "iter": 10 * e,
            "coco/AP": 0.1 * e,
            "coco/AP50": 0.2 * e,
            "coco/ARs": 0.05,
            "voc07/mAP": 0.15 * e,
            "val/loss": 2.0 / e,
            "val/loss_cls": 1.0 / e,
        }
        for e in (1, 2, 3)
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    made = plots.plot_training_curves(path, tmp_path / "plots")
    assert [p.name for p in made] == ["loss.png", "lr.png", "val_loss.png", "val_metrics.png"]
    assert all(p.read_bytes()[:8] == PNG for p in made)
    assert "1 lines are not valid JSON" in capsys.readouterr().err
    train, evals = plots.read_metrics(path)
    assert len(train) == 39 and len(evals) == 3


def test_per_class_ap_plot_accepts_nested_and_plain(tmp_path):
    nested = {
        "coco": {"AP": 0.3, "per_class": {"a": 0.5, "b": float("nan")}},
        "voc12": {"per_class": {"a": 0.7, "b": None}},
    }
    assert plots.plot_per_class_ap(nested, tmp_path / "x.png").read_bytes()[:8] == PNG
    assert plots.plot_per_class_ap({"a": 0.2, "b": 0.9}, tmp_path / "y.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError):
        plots.plot_per_class_ap({"coco": {"AP": 0.1}}, tmp_path / "z.png")


def test_pr_curve_pages(tmp_path):
    curves = [{"precision": np.array([1.0, 0.5]), "recall": np.array([0.5, 0.5]), "AP": 0.5, "num_gt": 2}] * 5
    made = plots.plot_pr_curves(curves, [f"c{i}" for i in range(5)], tmp_path, per_page=3)
    assert [p.name for p in made] == ["pr_curves_1.png", "pr_curves_2.png"]


def test_thresholded_results_file_is_said_to_give_a_lower_bound(tmp_path, monkeypatch, capsys):
    records = make_records(CASE_GT, ["cat", "dog", "bird"])
    monkeypatch.setattr(command, "_load_records", lambda spec, args, classes=None: records)
    cut = [row for row in _results(records, CASE_DETS) if row["score"] > 0.05]
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(cut))
    assert main(["eval", "--gt", "x", "--dets", str(path), "--no-analysis"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}: score: lowest score is {min(r['score'] for r in cut):.3g}" in err
    assert "AP/AR are a lower bound" in err
    full = cut + [{**cut[0], "score": 0.06}] * 99  # one image holds the model's full quota of 100 detections
    path.write_text(json.dumps(full))
    assert main(["eval", "--gt", "x", "--dets", str(path), "--no-analysis"]) == 0
    assert "lower bound" not in capsys.readouterr().err
