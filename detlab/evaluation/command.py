"""``detlab eval``: score a run on its data, or a COCO results file against annotations.

The protocols themselves are in :mod:`detlab.evaluation.evaluator`; this module reads the
command's inputs, prints the tables and writes ``metrics.json``, ``analysis.json`` and the
analysis figures (:func:`write_evaluation`, also used by a training run's final evaluation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from detlab.data.records import Problem, Records
from detlab.data.results import THRESHOLDED_SCORE
from detlab.errors import ConfigError
from detlab.evaluation import coco as coco_protocol
from detlab.evaluation import matching
from detlab.evaluation.evaluator import (
    PROTOCOL_DESCRIPTIONS,
    DetectionEvaluator,
    _gc_paused,
    check_protocols,
    evaluate_arrays,
    json_ready,
    predict_split,
)
from detlab.log import logger


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def format_result(result: Mapping, class_names: Sequence[str]) -> str:
    """The tables ``detlab eval`` prints: COCO's 12 numbers, VOC mAPs, per-class AP (in %)."""
    lines = []
    if "coco" in result:
        c = result["coco"]
        names = [n for n in coco_protocol.summary_names(c["max_dets"], c["area_ranges"])[:-2] if n in c]
        lines += [
            "COCO (IoU 0.50:0.95, maxDets " + "/".join(map(str, c.get("max_dets", []))) + ")",
            "  " + " ".join(f"{n:>6}" for n in names),
            "  " + " ".join(f"{_pct(c[n]):>6}" for n in names),
        ]
    for p in ("voc07", "voc12"):
        if p in result:
            kind = "11-point" if p == "voc07" else "all-point"
            lines.append(f"{p.upper()} mAP@{result[p]['iou']:g} ({kind}): {_pct(result[p]['mAP'])}")
    cols = [
        (p, key)
        for p in ("coco", "voc07", "voc12")
        if p in result
        for key in (("per_class", "per_class_AP50") if p == "coco" else ("per_class",))
    ]
    if cols:
        heads = {("coco", "per_class"): "COCO AP", ("coco", "per_class_AP50"): "COCO AP50"}
        width = max([len("class")] + [len(n) for n in class_names])
        lines.append("per-class AP (%)")
        lines.append(
            "  " + f"{'class':<{width}} " + " ".join(f"{heads.get(c, c[0].upper()):>9}" for c in cols)
        )
        for name in class_names:
            lines.append(
                "  " + f"{name:<{width}} " + " ".join(f"{_pct(result[p][k].get(name)):>9}" for p, k in cols)
            )
    return "\n".join(lines)


def eval_command(args) -> int:
    """``detlab eval RUN [--data DATA]`` or ``detlab eval --gt DATA --dets RESULTS.json``.

    Prints the tables, writes ``metrics.json`` (every protocol, stamped with dataset, split,
    checkpoint or results file) and, unless ``--no-analysis``, ``analysis.json`` and the
    PNGs (per-class AP, PR curves, confusion matrix, error breakdown) to ``--out``.
    """
    protocols = check_protocols(args.protocol)
    try:
        max_dets = tuple(int(d) for d in str(args.max_dets).split(",") if d.strip())
    except ValueError:
        raise ConfigError(
            f"--max-dets: {args.max_dets!r} — give a comma list of integers, e.g. 1,10,100"
        ) from None
    if not 0.0 < args.iou < 1.0:
        raise ConfigError(f"--iou: {args.iou} — give a threshold between 0 and 1")
    opts = {"iou": args.iou, "max_dets": max_dets or (1, 10, 100)}
    if args.gt or args.dets:
        if not (args.gt and args.dets) or args.run:
            raise ConfigError("eval: --gt DATA and --dets RESULTS.json go together, without RUN")
        records = _load_records(args.gt, args)
        with _gc_paused():
            dets, problems = coco_protocol.read_results(args.dets, records)
            result = evaluate_arrays(records, dets, protocols, **opts)
        out = Path(args.out) if args.out else Path(args.dets).parent / "eval"
        stamp = {
            "detections": str(args.dets),
            "checkpoint": None,
            "lowest_score": float(dets["scores"].min()) if len(dets["scores"]) else None,
        }
        for p in _thresholded(args.dets, dets, opts["max_dets"]):
            logger.info(p.line())
    elif args.run:
        records, dets, problems, result, stamp = _run_model_eval(args, protocols, opts)
        out = Path(args.out) if args.out else Path(args.run) / "eval"
    else:
        raise ConfigError("eval: give a RUN folder, or --gt DATA --dets RESULTS.json")
    for p in problems:
        logger.info(p.line())
    write_evaluation(
        records,
        dets,
        result,
        problems,
        protocols,
        stamp,
        out,
        iou=args.iou,
        score=args.score,
        analysis=not args.no_analysis,
    )
    return 0


def _load_records(spec: str, args, classes=None) -> Records:
    from detlab.data.dataset import load_ground_truth

    return load_ground_truth(spec, split=args.split, images=args.images, classes=classes or args.classes)


def _thresholded(path, dets: Mapping[str, np.ndarray], max_dets: Sequence[int]) -> list[Problem]:
    """A warning when a results file looks cut at a score threshold (its AP/AR are then a lower bound).

    A low end above :data:`THRESHOLDED_SCORE` is expected when images hold the full per-image quota of
    detections (models keep their best ``max_dets``); when none does, the low end is a threshold.
    """
    scores = dets["scores"]
    if not len(scores) or scores.min() <= THRESHOLDED_SCORE:
        return []
    if np.unique(dets["image_ids"], return_counts=True)[1].max() >= max(max_dets):
        return []
    return [
        Problem(
            str(path),
            "score",
            f"lowest score is {scores.min():.3g} and no image holds "
            f"{max(max_dets)} detections: the file was thresholded, so every PR curve stops early and "
            "AP/AR are a lower bound",
            f"write every detection down to the model's own floor (<= {THRESHOLDED_SCORE:g}); "
            "`detlab predict RUN --data DATA` does",
            "warning",
        )
    ]


def _eval_data(args, det) -> tuple[str, object, Records]:
    """``(spec, dataset, ground truth)`` a run is evaluated on: ``--data``, else what validated it."""
    from detlab.data.dataset import load_dataset, load_ground_truth
    from detlab.errors import DataError
    from detlab.runfolder import held_out_dataset, held_out_name, holds_out, validation_spec

    config, classes = det.config or {}, list(det.class_names)
    if holds_out(config, args.data):  # the images training held out (of those that decoded)
        dataset = held_out_dataset(config, classes=classes)
        return held_out_name(config), dataset, dataset.records
    spec = validation_spec(config, args.data)
    dataset = load_dataset(spec, split=args.split, images=args.images, classes=classes)
    if list(dataset.class_names) != classes:
        raise DataError(
            f"{spec}: classes {dataset.class_names} differ from the model's {classes} "
            "— evaluate on data with the run's classes"
        )
    # The model sees the images that decode; the score is against every annotation (as `eval --gt --dets`
    # scores `predict --data`'s file), so an unreadable image's boxes count as missed, not as absent.
    truth = load_ground_truth(spec, split=args.split, images=args.images, classes=classes, verbose=False)
    return spec, dataset, truth


def _run_model_eval(args, protocols, opts):
    """Rebuild the run's model, run it on the evaluation data; ``(records, dets, problems, result, stamp)``."""
    from detlab.predict import Detector

    det = Detector.from_run(
        args.run, checkpoint=args.checkpoint, device=args.device, precision=getattr(args, "precision", "fp32")
    )
    spec, dataset, truth = _eval_data(args, det)
    ev = DetectionEvaluator(truth, protocols, **opts)
    detections, _, _ = predict_split(
        det.model, dataset, batch_size=args.batch, device=det.device, precision=det.precision
    )
    ev.process(list(detections), list(detections.values()))
    dets = ev.arrays()
    result = evaluate_arrays(truth, dets, ev.protocols, ev.gt, **{**opts, "max_dets": ev.max_dets})
    stamp = {
        "checkpoint": f"{args.run} ({args.checkpoint})",
        "model": det.model_name,
        "detections": None,
        "precision": det.precision,
    }
    unseen = {r.image_id for r in truth.images} - {r.image_id for r in dataset.records.images}
    problems = list(ev.problems)
    if unseen:
        boxes = sum(r.num_boxes for r in truth.images if r.image_id in unseen)
        problems.append(
            Problem(
                str(spec),
                "images",
                f"{len(unseen)} images could not be read, so the model saw none of them",
                f"their {boxes} boxes count as missed — fix or remove those images",
                "warning",
            )
        )
    return truth, dets, problems, result, stamp


def write_evaluation(
    records: Records,
    dets: Mapping[str, np.ndarray],
    result: Mapping,
    problems: Sequence[Problem],
    protocols: Sequence[str],
    stamp: Mapping,
    out: Path,
    *,
    iou: float = 0.5,
    score: float | None = None,
    analysis: bool = True,
) -> None:
    """Print the tables; write ``out/metrics.json`` and, with ``analysis``, the analysis JSON + PNGs.

    Args:
        records: the ground truth scored against.
        dets: the evaluator's detection arrays (:meth:`DetectionEvaluator.arrays`).
        result: the protocols' result dict.
        problems: findings to record in ``metrics.json`` (``skipped``).
        protocols: the protocols asked for.
        stamp: what was scored (checkpoint or results file, model, precision), kept in the JSON.
        out: the folder to write.
        iou: IoU of the analysis' matching (PR curves, confusion, errors).
        score: score threshold for the confusion matrix and error counts; None: the
            F1-maximising operating point.
    """

    print(
        f"{records.root} ({records.format}, split {records.split or '-'}): {len(records.images)} images, "
        f"{records.num_boxes} boxes, {len(dets['scores'])} detections"
    )
    print(format_result(result, records.class_names))
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "protocols": {p: PROTOCOL_DESCRIPTIONS[p] for p in protocols},
        "dataset": str(records.root),
        "format": records.format,
        "split": records.split,
        **stamp,
        "num_images": len(records.images),
        "num_boxes": records.num_boxes,
        "num_detections": int(len(dets["scores"])),
        "skipped": [p.line() for p in problems],
    }
    (out / "metrics.json").write_text(json.dumps(json_ready({**meta, "results": result}), indent=1))
    written = [out / "metrics.json"]
    if analysis:
        written += _write_analysis(records, dets, result, meta, out, iou, score)
    print(f"wrote {', '.join(str(p) for p in written)}")


def _write_analysis(records, dets, result, meta, out: Path, iou: float, score: float | None) -> list:
    from detlab.evaluation.analysis import analyse
    from detlab.report import plots

    gt = matching.GroundTruth.from_records(records)
    index = dets.get("image_index")
    index = index if index is not None else matching.image_index(gt, dets["image_ids"])
    boxes = dets.get("boxes")
    if boxes is None:
        xywh = dets["boxes_xywh"]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)  # [M, 4] xyxy
    found = analyse(gt, index, boxes, dets["scores"], dets["labels"], iou=iou, score_threshold=score)
    errors = found["errors"]
    print(
        "errors (TIDE-style, AP50): "
        + ", ".join(f"{k} {errors['counts'][k]} (dAP {_pct(errors['dAP'][k])})" for k in errors["counts"])
    )
    names = records.class_names
    summary = {
        **meta,
        "protocol": f"analysis at IoU {iou:g} (VOC matching, all-point AP)",
        "pr": {
            n: {"AP": c["AP"], "num_gt": c["num_gt"], "num_detections": len(c["scores"])}
            for n, c in zip(names, found["pr_curves"])
        },
        "confusion": {**found["confusion"], "labels": names + ["background"]},
        "errors": errors,
        "operating_point": found["operating_point"],
    }
    (out / "analysis.json").write_text(json.dumps(json_ready(summary), indent=1))
    return [out / "analysis.json"] + plots.plot_analysis(found, result, names, out)
