"""Evaluation speed: detlab (COCO + VOC07 + VOC12 + per-class, one call) vs faster-coco-eval and pycocotools.

Synthetic split: 5,000 images, 100 detections each, 80 classes (COCO's non-contiguous
category ids), a few ``difficult`` and crowd boxes, and an ``area`` that is a mask-like
0.4–0.9 of the box's w·h, as in real COCO files. Every contender starts from the same two
JSON files on disk — ground truth and results — with **no image file anywhere**, and ends
with the summary numbers. Times are process CPU seconds (user + sys), so other work on a
shared machine does not count against any contender:

* detlab: ``load_ground_truth(gt.json)`` then ``score_results_file`` — read the annotations,
  read + validate the results, map ids, COCO (12 numbers + per-class), VOC07 and VOC12
  (what ``detlab eval --gt --dets`` computes before printing).
* faster-coco-eval: ``COCO(gt.json) → loadRes(file) → evaluate → accumulate → summarize``.
* pycocotools: the same calls.

It also checks that the COCO numbers agree (detlab vs pycocotools, to 1e-6), which with
this ``area`` also checks that small/medium/large follow the annotation's area field.

    .venv/bin/python benchmarks/eval_speed.py [--images 5000] [--dets 100] [--repeat 1] [--no-pycocotools]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from detlab.data.records import ImageRecord, Records
from detlab.evaluation.coco import category_ids, coco_ground_truth

# COCO's 80 category ids (1..90 with gaps), so the id mapping is exercised.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def synthetic_split(
    num_images: int = 5000, num_classes: int = 80, seed: int = 0, size: tuple[int, int] = (640, 480)
) -> Records:
    """Ground truth: 0..15 boxes per image, sizes 4..320 px, ~5% difficult, ~1% crowd."""
    rng = np.random.default_rng(seed)
    w, h = size
    images = []
    for i in range(num_images):
        n = int(rng.integers(0, 16))
        wh = rng.uniform(4, 320, (n, 2))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([w, h]) - wh)
        boxes = np.round(np.concatenate([xy, xy + wh], 1), 2).astype(np.float32)  # [N, 4] xyxy
        images.append(
            ImageRecord(
                image_id=i + 1,
                file=Path(f"img_{i:05d}.jpg"),
                width=w,
                height=h,
                boxes=boxes,
                labels=rng.integers(0, num_classes, n).astype(np.int64),
                difficult=rng.random(n) < 0.05,
                iscrowd=rng.random(n) < 0.01,
            )
        )
    ids = COCO_IDS[:num_classes] if num_classes <= len(COCO_IDS) else list(range(1, num_classes + 1))
    return Records(images, [f"class{c}" for c in range(num_classes)], ids, "coco", Path("synthetic"), "val")


def jittered_detections(
    records: Records,
    per_image: int = 100,
    seed: int = 1,
    keep: float = 0.9,
    noise: float = 0.08,
    wrong_class: float = 0.05,
) -> list[dict]:
    """Realistic detections as a COCO results list (xywh, the records' category ids).

    Per image: each GT box is found with probability ``keep`` (box jittered by ``noise``
    of its size, class swapped with probability ``wrong_class``, high score), some found
    twice (duplicates), and random false positives with lower scores fill up to
    ``per_image`` detections (``per_image=None``: as many false positives as boxes).
    """
    rng = np.random.default_rng(seed)
    cats = np.asarray(category_ids(records))
    out = []
    for r in records.images:
        b = r.boxes.astype(np.float64)
        found = rng.random(len(b)) < keep
        dup = found & (rng.random(len(b)) < 0.1)
        src = np.concatenate([np.flatnonzero(found), np.flatnonzero(dup)])
        wh = b[src, 2:] - b[src, :2]
        xy = b[src, :2] + rng.normal(0, noise, (len(src), 2)) * wh
        wh = wh * np.exp(rng.normal(0, noise, (len(src), 2)))
        labels = np.where(
            rng.random(len(src)) < wrong_class, rng.integers(0, len(cats), len(src)), r.labels[src]
        )
        scores = rng.uniform(0.3, 1.0, len(src))
        n_fp = max((per_image or 2 * len(b)) - len(src), 0)
        fwh = rng.uniform(4, 200, (n_fp, 2))
        fxy = rng.uniform(0, 1, (n_fp, 2)) * (np.array([r.width, r.height]) - fwh)
        xywh = np.round(np.concatenate([np.concatenate([xy, wh], 1), np.concatenate([fxy, fwh], 1)]), 2)
        labels = np.concatenate([labels, rng.integers(0, len(cats), n_fp)])
        scores = np.round(np.concatenate([scores, rng.uniform(0.0, 0.7, n_fp)]), 4)
        for box, lab, s in zip(xywh.tolist(), labels.tolist(), scores.tolist()):
            out.append({"image_id": int(r.image_id), "category_id": int(cats[lab]), "bbox": box, "score": s})
    return out


def mask_like_areas(gt_dict: dict, seed: int = 2) -> dict:
    """Give every annotation an ``area`` below its box's w·h, as a mask inside the box has."""
    rng = np.random.default_rng(seed)
    for ann in gt_dict["annotations"]:
        ann["area"] = round(ann["bbox"][2] * ann["bbox"][3] * float(rng.uniform(0.4, 0.9)), 2)
    return gt_dict


def _peer(coco_cls, eval_cls, gt_path: Path, results_path: Path) -> tuple[float, np.ndarray]:
    t0 = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls(str(gt_path))
        dt = gt.loadRes(str(results_path))
        ev = eval_cls(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return time.process_time() - t0, np.asarray(ev.stats[:12], np.float64)


def run_detlab(gt_path: Path, results_path: Path) -> tuple[float, dict]:
    from detlab.data.dataset import load_ground_truth
    from detlab.evaluation.evaluator import score_results_file

    t0 = time.process_time()
    truth = load_ground_truth(gt_path, verbose=False)
    result, _ = score_results_file(truth, results_path, ("coco", "voc07", "voc12"))
    return time.process_time() - t0, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per contender (the minimum is kept)")
    ap.add_argument("--no-pycocotools", action="store_true")
    args = ap.parse_args(argv)

    from faster_coco_eval import COCO as FCOCO
    from faster_coco_eval import COCOeval_faster

    records = synthetic_split(args.images, args.classes)
    results = jittered_detections(records, args.dets)
    gt_dict = mask_like_areas(coco_ground_truth(records))
    print(
        f"{len(records.images)} images, {records.num_boxes} GT boxes, {len(results)} detections, "
        f"{records.num_classes} classes; no image files"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path, gt_path = Path(tmp) / "results.json", Path(tmp) / "instances_val.json"
        path.write_text(json.dumps(results))
        gt_path.write_text(json.dumps(gt_dict))
        ours, fce, ref = [], [], []
        for _ in range(args.repeat):
            t, result = run_detlab(gt_path, path)
            ours.append(t)
            fce.append(_peer(FCOCO, COCOeval_faster, gt_path, path)[0])
        if not args.no_pycocotools:
            from pycocotools.coco import COCO as PCOCO
            from pycocotools.cocoeval import COCOeval as PCOCOeval

            t, stats = _peer(PCOCO, PCOCOeval, gt_path, path)
            ref.append(t)
            names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
            mine = np.array([result["coco"][n] for n in names])
            diff = np.nanmax(np.abs(mine - np.where(stats < 0, np.nan, stats)))
            print(f"COCO parity with pycocotools: max |diff| over the 12 numbers = {diff:.2e}")
    t_ours, t_fce = min(ours), min(fce)
    print(f"detlab  coco+voc07+voc12+per-class (reading both JSON): {t_ours:6.2f} s")
    print(
        f"faster-coco-eval coco only:                            {t_fce:7.2f} s   ratio detlab/fce = {t_ours / t_fce:.3f}"
    )
    if ref:
        print(
            f"pycocotools coco only:                                 {ref[0]:7.2f} s   "
            f"ratio detlab/pycocotools = {t_ours / ref[0]:.3f}"
        )
    print(
        f"COCO AP {result['coco']['AP']:.4f}  VOC07 mAP {result['voc07']['mAP']:.4f}  "
        f"VOC12 mAP {result['voc12']['mAP']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
