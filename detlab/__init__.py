"""detlab: train, fine-tune, evaluate, compare and look at object detectors.

Public API (what the CLI calls; same names)::

    import detlab
    train_ds = detlab.load_dataset("path/VOC2007", split="trainval")
    model = detlab.build_model("fcos_r50_fpn", num_classes=train_ds.num_classes, weights="coco")
    run = detlab.train(model, train_ds, val_ds, out="runs/fcos", epochs=12)
    metrics = detlab.evaluate(run.model, val_ds, protocols=("coco", "voc07"))
    truth = detlab.load_ground_truth("instances_val2017.json")       # annotations only, no image needed
    metrics, skipped = detlab.score_results_file(truth, "results.json")
    detector = detlab.Detector.from_run("runs/fcos")
    detections = detector.predict(["img.jpg"], score=0.5)

Names are imported on first use so ``import detlab`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_dataset": "detlab.data.dataset",
    "load_ground_truth": "detlab.data.dataset",
    "DetectionDataset": "detlab.data.dataset",
    "build_model": "detlab.models.catalogue",
    "list_models": "detlab.models.catalogue",
    "train": "detlab.engine.train",
    "evaluate": "detlab.evaluation.evaluator",
    "evaluate_detections": "detlab.evaluation.evaluator",
    "score_results_file": "detlab.evaluation.evaluator",
    "Detector": "detlab.predict",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'detlab' has no attribute {name!r}")
