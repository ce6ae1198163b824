"""The final evaluation of a training run: what ``detlab eval RUN`` writes, without running it.

Called once by the training loop after the best weights are loaded, so ``report.html``
has its PR curves, confusion matrix, error breakdown and prediction browser straight
away. Writes into ``RUN/eval/``:

- ``metrics.json``, ``analysis.json`` and the analysis PNGs, exactly as ``detlab eval RUN``
  (errors and confusion counted at the F1-maximising score, :func:`analysis.operating_point`);
- ``predictions.json``: every validation image's detections as the model gave them
  (``{"class_names", "images": [{"image_id", "file", "width", "height", "boxes": [[x1, y1,
  x2, y2], …] absolute pixels of the annotated image, "scores", "labels": 0..C-1}]}``),
  which the report's browser draws.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from detlab.log import logger

PREDICTIONS = "predictions.json"


def predictions_json(records, detections: Mapping[int, Mapping[str, np.ndarray]]) -> dict:
    """The ``predictions.json`` document (module docstring) of ``{image_id: detections}``."""
    images = []
    for rec in records.images:
        det = detections.get(rec.image_id)
        boxes = np.zeros((0, 4)) if det is None else np.asarray(det["boxes"], np.float64).reshape(-1, 4)
        images.append(
            {
                "image_id": rec.image_id,
                "file": str(rec.file),
                "width": rec.width,
                "height": rec.height,
                "boxes": np.round(boxes, 1).tolist(),
                "scores": [] if det is None else np.round(np.asarray(det["scores"], float), 4).tolist(),
                "labels": [] if det is None else np.asarray(det["labels"], np.int64).tolist(),
            }
        )
    return {"class_names": list(records.class_names), "images": images}


def final_evaluation(out: str | Path, model, dataset, cfg, device, detections: Mapping | None = None) -> None:
    """Evaluate the deployed weights on the validation data and write ``RUN/eval/`` (module docstring).

    Args:
        out: the run folder.
        model: the best weights, eval mode (the model contract of :func:`evaluator.evaluate`).
        dataset: the validation ``DetectionDataset`` or ``None`` (then nothing is written).
        cfg: the run's ``TrainConfig`` (protocols, eval batch size, quiet).
        device: where the model is.
        detections: the training-time evaluation's detections of these same weights
            (``image_id -> boxes, scores, labels``), scored again instead of predicted again;
            ``None`` (a resumed run, whose best evaluation was in an earlier process): predict.

    A failure is one line on stderr: a finished run must not be lost to its analysis.
    """
    if dataset is None:
        return
    from detlab.evaluation import evaluator
    from detlab.evaluation.command import write_evaluation

    try:
        ev = evaluator.DetectionEvaluator(dataset.records, list(cfg.protocols))
        if detections is None:
            detections, _, _ = evaluator.predict_split(
                model,
                dataset,
                batch_size=cfg.eval_batch_size,
                device=device,
                progress=not cfg.quiet,
                desc="final eval",
            )
        ev.process(list(detections), list(detections.values()))
        dets, result = ev.arrays(), ev.evaluate()
        folder = Path(out) / "eval"
        stamp = {"checkpoint": f"{out} (best)", "model": getattr(model, "name", None), "detections": None}
        # score None: errors and confusion at the F1-maximising operating point
        write_evaluation(
            dataset.records, dets, result, ev.problems, ev.protocols, stamp, folder, iou=0.5, score=None
        )
        (folder / PREDICTIONS).write_text(json.dumps(predictions_json(dataset.records, detections)))
    except Exception as e:  # noqa: BLE001  (same rule as the report: the checkpoints are already safe)
        logger.info(
            f"detlab: final evaluation not written ({type(e).__name__}: {e}); `detlab eval {out}` retries"
        )
