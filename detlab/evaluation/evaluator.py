"""All evaluation protocols from one pass over the predictions (``detlab eval`` is :mod:`.command`).

Legend for shape comments: ``M`` detections of the whole split, ``K`` detections of
one image.

Result dict (what every protocol returns; only the protocols asked for)::

    {"coco": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
              "ARs", "ARm", "ARl", "AR50", "AR75", "per_class": {name: AP},
              "per_class_AP50": {name: AP50}, "max_dets": [...], "area_ranges": {...},
              "area": which area decides small/medium/large},
     "voc07": {"mAP", "per_class": {name: AP}, "iou", "num_classes_with_gt"},
     "voc12": {...},
     "val_loss": {"loss": sum of parts, "loss_<part>": ...}}      # evaluate(with_loss=True)

Values are fractions in ``0..1``; ``NaN`` where a number is undefined (no GT).
:func:`flatten_metrics` turns it into ``{"coco/AP": .., "voc07/mAP": .., "val/loss": ..}``.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from detlab.data.records import Problem, Records
from detlab.errors import ConfigError
from detlab.evaluation import coco as coco_protocol
from detlab.evaluation import matching
from detlab.evaluation import voc as voc_protocol
from detlab.log import logger

PROTOCOLS = ("coco", "voc07", "voc12")
PROTOCOL_DESCRIPTIONS = {
    "coco": "COCO box AP/AR, IoU 0.50:0.95, 101 recall points (faster-coco-eval; difficult boxes as crowd/ignore)",
    "voc07": "PASCAL VOC2007 AP, 11-point interpolation, difficult/crowd boxes ignored",
    "voc12": "PASCAL VOC2010+ AP, all-point (area under the envelope), difficult/crowd boxes ignored",
}


def check_protocols(protocols: str | Iterable[str]) -> tuple[str, ...]:
    """``"coco,voc07"`` or an iterable → a tuple of known protocol names (order kept, no duplicates)."""
    names = protocols.split(",") if isinstance(protocols, str) else list(protocols)
    names = [n.strip().lower() for n in names if n and n.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise ConfigError(
            f"protocol: {', '.join(unknown) or 'none given'} — choose from {', '.join(PROTOCOLS)}"
        )
    return tuple(dict.fromkeys(names))


def _max_dets(max_dets: int | Sequence[int]) -> tuple[int, ...]:
    """An int means COCO's usual ladder ending there (``100`` → ``1, 10, 100``)."""
    if isinstance(max_dets, (int, np.integer)):
        return tuple(sorted({d for d in (1, 10) if d < max_dets} | {int(max_dets)}))
    return tuple(sorted(int(d) for d in max_dets))


class DetectionEvaluator:
    """detectron2-style evaluator: ``reset()``, ``process(image_ids, detections)`` per batch, ``evaluate()``.

    Every protocol is computed from the same gathered arrays; the VOC protocols share
    one matching pass.

    Args:
        records: the ground truth split.
        protocols: any of ``coco``, ``voc07``, ``voc12``.
        iou: IoU threshold of the VOC protocols.
        max_dets: COCO's per-image limits (an int ``n`` means ``1, 10, n``).
        area_ranges: COCO's ``{label: (lo, hi)}`` in px² (default small/medium/large).

    Attributes:
        problems: detections left out (unknown image id, label out of range), counted.
    """

    def __init__(
        self,
        records: Records,
        protocols: str | Iterable[str] = PROTOCOLS,
        iou: float = 0.5,
        max_dets: int | Sequence[int] = 100,
        area_ranges: dict | None = None,
    ) -> None:
        self.records = records
        self.protocols = check_protocols(protocols)
        self.iou = float(iou)
        self.max_dets = _max_dets(max_dets)
        self.area_ranges = area_ranges
        self.gt = matching.GroundTruth.from_records(records)
        self.reset()

    def reset(self) -> None:
        """Forget every processed detection."""
        self._parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.problems: list[Problem] = []

    def process(self, image_ids: Sequence[int], detections: Sequence[Mapping]) -> None:
        """Add one batch.

        Args:
            image_ids: ``Records`` image ids, one per image.
            detections: per image ``{"boxes": [K, 4] xyxy absolute pixels of the annotated
                image, "scores": [K], "labels": [K] in 0..C-1}`` (numpy or torch).
        """
        for image_id, det in zip(image_ids, detections):
            boxes = _numpy(det["boxes"], np.float64).reshape(-1, 4)  # [K, 4]
            self._parts.append(
                (
                    int(image_id),
                    boxes,
                    _numpy(det["scores"], np.float64).reshape(-1),
                    _numpy(det["labels"], np.int64).reshape(-1),
                )
            )

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything processed as flat arrays, with unusable rows left out and reported."""
        parts = self._parts
        counts = np.fromiter((len(p[2]) for p in parts), np.int64, len(parts))
        image_ids = np.repeat(np.fromiter((p[0] for p in parts), np.int64, len(parts)), counts)  # [M]
        boxes = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 4))  # [M, 4]
        scores = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
        labels = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int64)
        index = matching.image_index(self.gt, image_ids)
        checks = (
            (index >= 0, "image_id", "detections for images that are not in the dataset"),
            (
                (labels >= 0) & (labels < self.records.num_classes),
                "labels",
                f"labels outside 0..{self.records.num_classes - 1}",
            ),
            (np.isfinite(boxes).all(1) & np.isfinite(scores), "boxes", "non-finite boxes or scores"),
        )
        keep = np.ones(len(labels), bool)
        for ok, field_name, what in checks:
            bad = keep & ~ok
            if bad.any():
                self.problems.append(
                    Problem(
                        "detections",
                        field_name,
                        f"{int(bad.sum())} {what}",
                        "left out of the evaluation",
                        "skipped",
                    )
                )
            keep &= ok
        return {
            "image_ids": image_ids[keep],
            "image_index": index[keep],
            "boxes": boxes[keep],
            "scores": scores[keep],
            "labels": labels[keep],
        }

    def evaluate(self) -> dict:
        """Run every protocol on what was processed; return the result dict (module docstring)."""
        return evaluate_arrays(
            self.records,
            self.arrays(),
            self.protocols,
            self.gt,
            iou=self.iou,
            max_dets=self.max_dets,
            area_ranges=self.area_ranges,
        )


def evaluate_arrays(
    records: Records,
    dets: Mapping[str, np.ndarray],
    protocols: Sequence[str],
    gt: matching.GroundTruth | None = None,
    iou: float = 0.5,
    max_dets: Sequence[int] = (1, 10, 100),
    area_ranges: dict | None = None,
) -> dict:
    """The protocols on flat detection arrays (all rows valid).

    Args:
        records: the ground truth split.
        dets: ``image_ids int64 [M]``, ``boxes float64 [M, 4]`` xyxy (or ``boxes_xywh``, or both:
            COCO then uses ``boxes_xywh`` exactly as given), ``scores [M]``, ``labels int64 [M]``,
            optionally ``image_index`` (see :func:`matching.image_index`) and ``rows`` (the results-file
            dicts of the same detections, which COCO then completes in place instead of rebuilding).
        protocols: checked protocol names.
        gt: a prebuilt :class:`matching.GroundTruth` of ``records``, to reuse.
        iou, max_dets, area_ranges: as :class:`DetectionEvaluator`.
    """
    result: dict = {}
    xywh = dets.get("boxes_xywh")
    xyxy = dets.get("boxes")
    if "coco" in protocols:
        xywh_c = xywh if xywh is not None else coco_protocol.xyxy_to_xywh(xyxy)
        result["coco"] = coco_protocol.evaluate_coco(
            records,
            dets["image_ids"],
            xywh_c,
            dets["scores"],
            dets["labels"],
            max_dets,
            area_ranges,
            rows=dets.get("rows"),
        )
    voc = [p for p in protocols if p.startswith("voc")]
    if voc:
        gt = gt if gt is not None else matching.GroundTruth.from_records(records)
        if xyxy is None:
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)  # [M, 4]
        index = dets.get("image_index")
        index = index if index is not None else matching.image_index(gt, dets["image_ids"])
        result.update(
            voc_protocol.evaluate_voc(
                gt, records.class_names, index, xyxy, dets["scores"], dets["labels"], tuple(voc), iou
            )
        )
    return {p: result[p] for p in protocols}


def evaluate_detections(
    records: Records,
    detections: Mapping[int, Mapping],
    protocols: str | Iterable[str] = PROTOCOLS,
    iou: float = 0.5,
    max_dets: int | Sequence[int] = 100,
    area_ranges: dict | None = None,
    verbose: bool = True,
) -> dict:
    """Evaluate detections of a whole split with every protocol asked for.

    Args:
        records: the ground truth split.
        detections: ``image_id -> {"boxes": [K, 4] xyxy absolute pixels, "scores": [K],
            "labels": [K] in 0..C-1}``; images without an entry have no detections.
        protocols: any of ``coco``, ``voc07``, ``voc12`` (a comma string works too).
        iou: IoU threshold of the VOC protocols.
        max_dets: COCO's per-image limit (``100`` → ``1, 10, 100``) or the whole ladder.
        area_ranges: COCO's ``{label: (lo, hi)}`` in px².
        verbose: print the counted problems (left-out detections) to stderr.

    Returns:
        The result dict described in the module docstring.
    """
    ev = DetectionEvaluator(records, protocols, iou, max_dets, area_ranges)
    ev.process(list(detections.keys()), list(detections.values()))
    result = ev.evaluate()
    if verbose:
        for p in ev.problems:
            logger.info(p.line())
    return result


def score_results_file(
    records: Records,
    path,
    protocols: str | Iterable[str] = PROTOCOLS,
    iou: float = 0.5,
    max_dets: int | Sequence[int] = 100,
    area_ranges: dict | None = None,
) -> tuple[dict, list[Problem]]:
    """Evaluate a COCO results file against ``records`` (``detlab eval --gt --dets``, without printing).

    Args:
        records: the ground truth split.
        path: COCO results JSON (``[{image_id, category_id, bbox: [x, y, w, h], score}, …]``),
            ids as :func:`coco.category_ids` and ``Records`` image ids.
        protocols, iou, max_dets, area_ranges: as :func:`evaluate_detections`.

    Returns:
        ``(result, problems)``: the result dict, and the counted rows left out (unknown ids).

    Raises:
        DataError: unreadable file or malformed row (names the index and the field).
    """
    protocols = check_protocols(protocols)
    with _gc_paused():
        dets, problems = coco_protocol.read_results(path, records)
        result = evaluate_arrays(
            records, dets, protocols, iou=iou, max_dets=_max_dets(max_dets), area_ranges=area_ranges
        )
    return result, problems


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector: a results file is hundreds of thousands of small
    acyclic dicts, and collections triggered by their allocation only re-scan them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype)


def flatten_metrics(result: Mapping) -> dict[str, float]:
    """``{"coco": {"AP": .4}, "voc07": {"mAP": .6}, "val_loss": {"loss": 1.2}}`` →
    ``{"coco/AP": .4, "voc07/mAP": .6, "val/loss": 1.2}``: the scalar numbers only
    (per-class tables and settings stay in the nested result)."""
    flat: dict[str, float] = {}
    for section, values in result.items():
        if not isinstance(values, Mapping):
            continue
        prefix = "val" if section == "val_loss" else section
        for key, value in values.items():
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and key != "iou":
                flat[f"{prefix}/{key}"] = float(value)
    return flat


def json_ready(obj):
    """Result dicts → JSON-safe values (NaN → ``None``, numpy → Python)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _to_original_frame(det: Mapping, image: torch.Tensor, target: Mapping) -> dict[str, np.ndarray]:
    """Boxes in the fed image's pixels → the annotated image's pixels (resize-only transforms)."""
    boxes = _numpy(det["boxes"], np.float64).reshape(-1, 4)  # [K, 4] xyxy
    h, w = image.shape[-2:]
    oh, ow = target.get("orig_size", (h, w))
    if (int(oh), int(ow)) != (h, w):
        boxes = boxes * np.array([ow / w, oh / h, ow / w, oh / h])
    return {
        "boxes": boxes,
        "scores": _numpy(det["scores"], np.float64),
        "labels": _numpy(det["labels"], np.int64),
    }


def evaluate(
    model: torch.nn.Module,
    dataset,
    protocols: str | Iterable[str] = PROTOCOLS,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    with_loss: bool = False,
    progress: bool = True,
    num_workers: int = 0,
    precision: str = "fp32",
    **opts,
) -> dict:
    """Run ``model`` over ``dataset`` and evaluate.

    Args:
        model: a detector following the model contract (eval mode: ``model(images)`` →
            per image ``boxes [K, 4]`` xyxy in the fed image's pixels, ``scores``, ``labels``).
        dataset: a ``DetectionDataset`` (``ds[i] -> (image, target)`` with ``image_id`` and
            ``orig_size``; ``dataset.records`` is the ground truth).
        protocols: any of ``coco``, ``voc07``, ``voc12``.
        batch_size: images per forward pass.
        device: where the model runs.
        with_loss: also average ``model.val_losses`` over the images → ``result["val_loss"]``.
        progress: show progress (a bar on a terminal, a line every few seconds otherwise).
        num_workers: DataLoader workers.
        precision: a :data:`detlab.config.PRECISIONS` word (``fp32``, ``bf16``, ``fp16``, ``auto``);
            the network only, decoding in float32 (:mod:`detlab.models.precision`); validation
            losses stay float32.
        **opts: ``iou``, ``max_dets``, ``area_ranges`` (see :class:`DetectionEvaluator`).

    Returns:
        The result dict described in the module docstring.
    """
    ev = DetectionEvaluator(dataset.records, protocols, **opts)
    detections, sums, seen = predict_split(
        model,
        dataset,
        batch_size=batch_size,
        device=device,
        with_loss=with_loss,
        progress=progress,
        num_workers=num_workers,
        precision=precision,
    )
    ev.process(list(detections), list(detections.values()))
    result = ev.evaluate()
    for p in ev.problems:
        logger.info(p.line())
    if with_loss and seen:
        result["val_loss"] = mean_losses(sums, seen)
    return result


def predict_split(
    model: torch.nn.Module,
    dataset,
    indices: Sequence[int] | None = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    with_loss: bool = False,
    progress: bool = True,
    num_workers: int = 0,
    precision: str = "fp32",
    desc: str = "eval",
) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, float], int]:
    """The one evaluation loop: feed ``dataset`` (or the ``indices`` of it one rank owns) to ``model``.

    Used by :func:`evaluate`, ``detlab eval RUN`` and training-time evaluation
    (:func:`detlab.engine.distributed.evaluate_sharded`), so every door gives the same numbers.

    Args:
        model: eval-mode detector (see :func:`evaluate`); ``model.val_losses`` when ``with_loss``.
        dataset: ``ds[i] -> (image, target)`` with ``image_id`` and ``orig_size``.
        indices: the images to run (default all).
        batch_size, device, num_workers, precision: as :func:`evaluate`.
        with_loss: also sum ``model.val_losses`` (float32) over the images.
        progress: a bar on a terminal, else a line every few seconds with the time left.
        desc: the progress label.

    Returns:
        ``(detections, loss_sums, seen)``: ``{image_id: {"boxes": float64 [K, 4] xyxy in the
        annotated image's pixels, "scores": [K], "labels": int64 [K]}}``, ``{"loss_<part>": sum
        over images}`` and the number of images run.
    """
    from torch.utils.data import DataLoader, Subset

    from detlab.data.dataset import collate, targets_to
    from detlab.models.precision import amp_dtype, autocast_network

    subset = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    was_training = model.training
    model.eval()
    device = torch.device(device)
    dtype = amp_dtype(precision, device)
    detections, sums, seen = {}, {}, 0
    bar = Progress(len(subset), desc, enabled=progress)
    with torch.inference_mode():
        for images, targets in loader:
            images = [im.to(device) for im in images]
            with autocast_network(model, dtype, device.type):
                outputs = model(images)
            for image, target, out in zip(images, targets, outputs):
                detections[int(target["image_id"])] = _to_original_frame(out, image, target)
            if with_loss and hasattr(model, "val_losses"):
                for k, v in model.val_losses(images, targets_to(targets, device)).items():
                    if k.startswith("loss"):
                        sums[k] = sums.get(k, 0.0) + float(v) * len(images)
            seen += len(images)
            bar.update(len(images))
    bar.close()
    model.train(was_training)
    return detections, sums, seen


def mean_losses(sums: Mapping[str, float], seen: int) -> dict[str, float]:
    """Summed per-image loss parts → ``{"loss": sum of the means, "loss_<part>": mean}``."""
    parts = {k: v / seen for k, v in sorted(sums.items())}
    return {"loss": sum(v for k, v in parts.items() if k.startswith("loss_")), **parts}


class Progress:
    """Progress of a long step: a tqdm bar on a terminal; elsewhere (a log file, CI) one line every
    ``every`` seconds with the count and the time left, so a redirected run is never silent for long."""

    def __init__(self, total: int, desc: str, enabled: bool = True, every: float = 10.0) -> None:
        import time

        self.total, self.desc, self.every, self.done = total, desc, every, 0
        self.clock = time.monotonic
        self.start = self.last = self.clock()
        self.bar = None
        self.enabled = enabled and total > 0
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if self.enabled and now - self.last >= self.every and self.done < self.total:
            left = (now - self.start) / self.done * (self.total - self.done)
            print(
                f"{self.desc}: {self.done}/{self.total} images, about {left:.0f} s left",
                file=sys.stderr,
                flush=True,
            )
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
