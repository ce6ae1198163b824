"""Index speed: detlab's COCO reader vs faster-coco-eval and pycocotools on one synthetic JSON.

Writes a synthetic COCO file (default 10,000 images, ~7 boxes each, 80 categories with
non-contiguous ids) to a temporary folder, then times, best of ``--repeat`` runs:

- ``detlab``: ``detlab.data.formats.coco.read_coco`` (JSON parse + per-image numpy arrays;
  no image is opened or decoded),
- ``faster_coco_eval.COCO(path)`` and ``pycocotools.coco.COCO(path)`` (JSON parse + index).

Run: ``.venv/bin/python benchmarks/index_speed.py [--images 10000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def write_synthetic_coco(path: Path, num_images: int, boxes_per_image: int = 7, seed: int = 0) -> int:
    """Write a COCO detection JSON with random boxes; return the number of annotations."""
    rng = np.random.default_rng(seed)
    cat_ids = np.sort(rng.choice(np.arange(1, 200), 80, replace=False))
    counts = rng.poisson(boxes_per_image, num_images)
    n = int(counts.sum())
    xy = rng.uniform(0, 500, (n, 2)).round(2)
    wh = rng.uniform(2, 140, (n, 2)).round(2)
    image_of = np.repeat(np.arange(num_images), counts)
    cats = rng.choice(cat_ids, n)
    data = {
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 640} for i in range(num_images)
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": int(image_of[k]),
                "category_id": int(cats[k]),
                "bbox": [*xy[k].tolist(), *wh[k].tolist()],
                "area": float(wh[k].prod()),
                "iscrowd": 0,
            }
            for k in range(n)
        ],
        "categories": [{"id": int(c), "name": f"class_{c}"} for c in cat_ids],
    }
    path.write_text(json.dumps(data))
    return n


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from detlab.data.formats.coco import read_coco

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instances_train.json"
        n = write_synthetic_coco(path, args.images)
        print(f"synthetic COCO: {args.images} images, {n} boxes, {path.stat().st_size / 1e6:.1f} MB")
        ours = best_time(lambda: read_coco(path, split="train", images=tmp), args.repeat)
        print(f"detlab read_coco            {ours:7.3f} s")
        try:
            import faster_coco_eval

            fce = best_time(lambda: faster_coco_eval.COCO(str(path)), args.repeat)
            print(f"faster_coco_eval.COCO       {fce:7.3f} s   detlab / faster_coco_eval = {ours / fce:.2f}")
        except ImportError:
            print("faster_coco_eval not installed")
        try:
            from pycocotools.coco import COCO

            pct = best_time(lambda: COCO(str(path)), args.repeat)
            print(f"pycocotools.coco.COCO       {pct:7.3f} s   detlab / pycocotools = {ours / pct:.2f}")
        except ImportError:
            print("pycocotools not installed")
        print("target: detlab < 2 s for 10,000 images:", "PASS" if ours < 2.0 else "FAIL")


if __name__ == "__main__":
    main()
