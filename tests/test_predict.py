"""detlab predict and the Detector API on a tiny run folder built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from test_report_runfolder import make_run, one_thread  # noqa: F401  (autouse fixture)
from torchvision.transforms.v2.functional import pil_to_tensor

from detlab.errors import DataError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # source ids as a COCO export would have them: not contiguous, not the class index
    return make_run(tmp_path_factory.mktemp("runs"), class_names=("a", "b", "c"), source_ids=(3, 7, 11))


def _noise_image(path, w, h, seed, exif_orientation=None):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    arr[h // 4 : h // 2, w // 4 : w // 2] = 255  # a bright block: something box-like to fire on
    im = Image.fromarray(arr)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, exif=exif, quality=95)
    else:
        im.save(path)
    return path


def test_boxes_are_in_the_original_exif_rotated_frame(run, tmp_path):
    from detlab.predict import Detector

    # stored 96×64 with orientation 6 ("rotate 90° clockwise to view"): the viewed image is 64 wide, 96 high
    path = _noise_image(tmp_path / "rotated.jpg", 96, 64, seed=1, exif_orientation=6)
    det = Detector.from_run(run, device="cpu")
    out = det.predict([path], score=0.0)[0]
    assert (out["width"], out["height"]) == (64, 96)
    with Image.open(path) as im:
        image = pil_to_tensor(ImageOps.exif_transpose(im).convert("RGB")).float() / 255
    with torch.no_grad():
        ref = det.model([image])[0]
    assert len(out["boxes"]) == len(ref["boxes"]) > 0
    order = ref["scores"].argsort(descending=True, stable=True)
    np.testing.assert_allclose(out["boxes"], ref["boxes"][order].numpy(), atol=1e-4)
    np.testing.assert_allclose(out["scores"], ref["scores"][order].numpy(), atol=1e-6)
    assert out["boxes"][:, [0, 2]].max() <= 64 + 1e-3 and out["boxes"][:, [1, 3]].max() <= 96 + 1e-3
    assert out["names"] == [("a", "b", "c")[i] for i in out["labels"]]
    assert (out["scores"][:-1] >= out["scores"][1:]).all()


def test_batched_equals_one_by_one(run, tmp_path):
    """On a folder of mixed sizes, as a phone, a scanner and a crop give them."""
    from detlab.predict import Detector

    for i, (w, h) in enumerate([(80, 60), (60, 90), (100, 100), (80, 60), (70, 50)]):
        _noise_image(tmp_path / f"im{i}.png", w, h, seed=10 + i)
    det = Detector.from_run(run, device="cpu")
    batched = det.predict(tmp_path, score=0.1, batch_size=4)
    single = det.predict(str(tmp_path / "*.png"), score=0.1, batch_size=1)
    assert [d["file"] for d in batched] == [d["file"] for d in single] and len(batched) == 5
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
        np.testing.assert_array_equal(a["labels"], b["labels"])


def test_predict_command_writes_coco_results(run, tmp_path, capsys):
    from detlab.cli import main

    src = tmp_path / "photos"
    src.mkdir()
    for i, (w, h) in enumerate([(80, 60), (60, 80), (72, 72)]):
        _noise_image(src / f"p{i}.jpg", w, h, seed=i)
    (src / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out"
    assert main(["predict", str(run), str(src), "--out", str(out), "--score", "0.0", "--batch", "2"]) == 0
    err = capsys.readouterr()
    assert "broken.jpg" in err.err and "skipped" in err.err
    assert "skipped 1 unreadable" in err.out

    meta = json.loads((out / "images.json").read_text())
    assert [im["file_name"].rsplit("/", 1)[-1] for im in meta["images"]] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert [im["id"] for im in meta["images"]] == [2, 3, 4]  # ids are positions in the sorted sources
    assert meta["categories"] == [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}, {"id": 11, "name": "c"}]
    results = json.loads((out / "detections.json").read_text())
    assert results and {r["category_id"] for r in results} <= {3, 7, 11}

    # the results load in the reference library against a ground truth made of the same images
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {
        "images": meta["images"],
        "categories": meta["categories"],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 3, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0}
        ],
    }
    gt.createIndex()
    dt = gt.loadRes(str(out / "detections.json"))
    assert len(dt.getAnnIds()) == len(results)

    per_image = json.loads((out / "json" / "p1.json").read_text())
    assert (per_image["width"], per_image["height"]) == (60, 80)
    n1 = sum(r["image_id"] == per_image["image_id"] for r in results)
    assert len(per_image["detections"]) == n1
    for d, r in zip(per_image["detections"], [r for r in results if r["image_id"] == per_image["image_id"]]):
        x1, y1, x2, y2 = d["box_xyxy"]
        assert r["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=2e-3)
    with Image.open(out / "drawn" / "p1.jpg") as im:
        assert im.size == (60, 80)


def test_errors_are_one_line(run, tmp_path, capsys):
    from detlab.cli import main

    assert main(["predict", str(run), str(tmp_path / "nothing*.jpg"), "--out", str(tmp_path / "o")]) == 1
    assert "no file matches it as a glob" in capsys.readouterr().err
    _noise_image(tmp_path / "x.png", 40, 40, seed=0)
    assert (
        main(
            ["predict", str(run), str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--backend", "onnx"]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "model.onnx" in err and "detlab export" in err and len(err.splitlines()) == 1
    assert (
        main(["predict", str(tmp_path / "no_run"), str(tmp_path / "x.png"), "--out", str(tmp_path / "o")])
        == 1
    )


def test_best_falls_back_to_last_with_a_note(tmp_path, capsys):
    from detlab.predict import Detector

    run = make_run(tmp_path, checkpoint="last", class_names=("cat", "dog"), source_ids=("cat", "dog"))
    det = Detector.from_run(run, device="cpu")
    assert "using" in capsys.readouterr().err and det.model_name == "fcos_r18_fpn"
    assert det.class_names == ["cat", "dog"]
    assert [det.category_id(i) for i in range(2)] == [1, 2]  # VOC names as ids → 1-based integers


def test_results_score_with_detlab_eval(tmp_path, chess):
    """Results written with --data's ids score the same through `detlab eval --gt --dets` as in memory."""
    from detlab.cli import main
    from detlab.data.dataset import load_dataset
    from detlab.evaluation.evaluator import evaluate_detections
    from detlab.predict import Detector, align_to_dataset, write_predictions

    data = str(chess / "valid")
    ds = load_dataset(data)
    recs = ds.records.images[:3]
    names = list(reversed(ds.class_names))  # the model's class order differs from the dataset's
    rng = np.random.default_rng(0)
    outputs = []
    for r in recs:  # an oracle: jittered ground truth plus one false positive per image
        boxes = np.concatenate([r.boxes + rng.normal(0, 2, r.boxes.shape), [[5, 5, 60, 60]]]).astype(
            np.float32
        )
        labels = np.array([names.index(ds.class_names[c]) for c in r.labels] + [0])
        outputs.append(
            {
                "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(labels),
                "scores": torch.from_numpy(rng.uniform(0.5, 1, len(labels)).astype(np.float32)),
            }
        )
    queue = iter(outputs)
    det = Detector(lambda images: [next(queue) for _ in images], names, device="cpu")
    files, ids = align_to_dataset(det, [r.file for r in recs], data)
    assert [ids[str(f)] for f in files] == [r.image_id for r in recs]
    write_predictions(det, files, tmp_path / "pred", score=0.0, progress=False, image_ids=ids)

    assert (
        main(
            [
                "eval",
                "--gt",
                data,
                "--dets",
                str(tmp_path / "pred" / "detections.json"),
                "--protocol",
                "coco,voc07",
                "--no-analysis",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"]
    in_memory = {}
    for r, o in zip(recs, outputs):
        in_memory[r.image_id] = {
            "boxes": o["boxes"].numpy(),
            "scores": o["scores"].numpy(),
            "labels": np.array([ds.class_names.index(names[c]) for c in o["labels"]]),
        }
    subset = type(ds.records)(list(recs), ds.class_names, ds.source_ids, ds.records.format, ds.records.root)
    expected = evaluate_detections(subset, in_memory, ("coco", "voc07"))
    full = evaluate_detections(ds.records, in_memory, ("coco", "voc07"))
    assert expected["coco"]["AP50"] > 0.5 and full["coco"]["AP"] > 0.01  # the oracle is good where it looked
    assert scored["coco"]["AP"] == pytest.approx(full["coco"]["AP"], abs=1e-3)
    assert scored["voc07"]["mAP"] == pytest.approx(full["voc07"]["mAP"], abs=1e-3)


def test_onnx_backend_uses_run_model_onnx(run, tmp_path, monkeypatch):
    """--backend onnx runs RUN/model.onnx through detlab.onnx_runtime.OnnxModel with the checkpoint's class map."""
    import detlab.onnx_runtime
    from detlab.cli import main

    seen = {}

    class FakeOnnx:  # stands in for ONNX Runtime: the wiring is what is tested here
        def __init__(self, path):
            seen["path"] = path

        def __call__(self, images):
            return [
                {
                    "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0]]),
                    "scores": torch.tensor([0.9]),
                    "labels": torch.tensor([2]),
                }
                for _ in images
            ]

    monkeypatch.setattr(detlab.onnx_runtime, "OnnxModel", FakeOnnx)
    (run / "model.onnx").write_bytes(b"stand-in")
    try:
        _noise_image(tmp_path / "x.png", 40, 30, seed=0)
        assert (
            main(
                [
                    "predict",
                    str(run),
                    str(tmp_path / "x.png"),
                    "--out",
                    str(tmp_path / "o"),
                    "--backend",
                    "onnx",
                ]
            )
            == 0
        )
    finally:
        (run / "model.onnx").unlink()
    assert seen["path"] == run / "model.onnx"
    results = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert results == [{"image_id": 1, "category_id": 11, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.9}]


def test_model_classes_missing_from_the_data_are_left_out_and_counted(tmp_path, chess, capsys):
    """A model trained where a class has boxes (chess train's `bishop`) predicts on a split without it."""
    from detlab.data.dataset import load_dataset
    from detlab.predict import Detector, align_to_dataset, write_predictions

    data = str(chess / "valid")
    ds = load_dataset(data)
    rec = ds.records.images[0]
    names = [*ds.class_names, "unicorn"]
    output = {
        "boxes": torch.tensor([[5.0, 5, 60, 60], [10, 10, 50, 50]]),
        "labels": torch.tensor([0, len(names) - 1]),
        "scores": torch.tensor([0.9, 0.8]),
    }
    det = Detector(lambda images: [output for _ in images], names, device="cpu")
    files, ids = align_to_dataset(det, [rec.file], data)
    assert "model classes unicorn are not in" in capsys.readouterr().err
    counts = write_predictions(det, files, tmp_path / "pred", score=0.0, progress=False, image_ids=ids)
    rows = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert counts["left_out"] == 1 and counts["detections"] == 1
    assert [r["category_id"] for r in rows] == [ds.source_ids[0]]
    categories = json.loads((tmp_path / "pred" / "images.json").read_text())["categories"]
    assert "unicorn" not in {c["name"] for c in categories}
    with pytest.raises(DataError, match="none of the model's classes"):
        align_to_dataset(Detector(lambda images: [], ["unicorn"], device="cpu"), [rec.file], data)


def test_predict_with_data_writes_every_detection_for_scoring(tmp_path, chess, monkeypatch, capsys):
    """Without --score, results meant for `eval --gt --dets` keep the low-scoring tail; drawings keep >= 0.5."""
    import detlab.report.draw as draw_module
    from detlab.cli import main
    from detlab.predict import Detector

    data = str(chess / "test")
    names = ["black-king", "black-bishop"]

    def model(images):
        return [
            {
                "boxes": torch.tensor([[5.0, 5.0, 60.0, 60.0], [70.0, 70.0, 90.0, 95.0]]),
                "labels": torch.tensor([0, 1]),
                "scores": torch.tensor([0.9, 0.07]),
            }
            for _ in images
        ]

    monkeypatch.setattr(
        Detector, "from_run", classmethod(lambda cls, run, **kw: Detector(model, names, device="cpu"))
    )
    drawn = []
    real_draw = draw_module.draw_boxes
    monkeypatch.setattr(
        draw_module,
        "draw_boxes",
        lambda image, boxes, *a, **kw: drawn.append(len(boxes)) or real_draw(image, boxes, *a, **kw),
    )
    assert main(["predict", "run", "--data", data, "--out", str(tmp_path / "all")]) == 0
    rows = json.loads((tmp_path / "all" / "detections.json").read_text())
    assert sorted({r["score"] for r in rows}) == [0.07, 0.9] and set(drawn) == {1}
    assert "detections at score >= 0 " in capsys.readouterr().out
    assert main(["predict", "run", "--data", data, "--out", str(tmp_path / "cut"), "--score", "0.5"]) == 0
    assert {r["score"] for r in json.loads((tmp_path / "cut" / "detections.json").read_text())} == {0.9}
    assert "AP/AR scored from it are a lower bound" in capsys.readouterr().err
