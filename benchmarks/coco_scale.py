"""COCO scale: detlab's COCO reader vs pycocotools ``COCO(path)`` on a train2017-sized JSON.

Writes one synthetic file shaped like ``instances_train2017.json`` (118,287 images,
860,001 boxes, 80 categories with COCO's non-contiguous ids; images carry
``license``/``coco_url``/``date_captured``/``flickr_url``, annotations carry polygon
``segmentation``, ``area`` and ``iscrowd``, ~1 % crowd boxes with uncompressed RLE),
then runs each contender in its **own fresh subprocess**, in interleaved rounds
(A B, B A, …):

* pycocotools: ``COCO(path)`` (JSON parse + index),
* detlab: ``detlab.data.formats.read_records(path)`` (JSON parse + per-image records;
  no image file exists and none is opened).

Per contender it prints wall seconds and CPU seconds (user + sys of the call, so other
work on a shared machine counts less) and the peak RSS of the whole process
(``ru_maxrss``, imports included: both import in ~30 MiB; the file is written by
another subprocess, since a child's ``ru_maxrss`` starts at its parent's size), and the ratios detlab /
pycocotools as medians of the per-round ratios. Target: both ratios ≤ 1.0.

    .venv/bin/python benchmarks/coco_scale.py                      # ~3 min: writes ~0.3 GB to a temp dir
    .venv/bin/python benchmarks/coco_scale.py --images 5000 --boxes 36000 --repeat 1   # quick try
    .venv/bin/python benchmarks/coco_scale.py --json instances_train2017.json          # reuse a file
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# COCO's 80 category ids (1..90 with gaps) and names, so the id mapping is exercised.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]

# Runs in the child: import first, then time the call alone; ru_maxrss is the process peak.
CHILD = r"""
import json, resource, sys, time
which, path = sys.argv[1], sys.argv[2]
if which == "detlab":
    from detlab.data.formats import read_records
    call = lambda: read_records(path)
else:
    import contextlib, io
    from pycocotools.coco import COCO
    def call():
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(path)
usage = lambda: resource.getrusage(resource.RUSAGE_SELF)
before, start = usage(), time.perf_counter()
result = call()
wall, after = time.perf_counter() - start, usage()
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
size = len(result.images) if which == "detlab" else len(result.imgs)
print(json.dumps(dict(wall=wall, cpu=cpu, rss_mib=after.ru_maxrss / 1024, import_mib=before.ru_maxrss / 1024, images=size)))
"""


def write_synthetic_coco(
    path: Path, num_images: int, num_boxes: int, points: int = 12, seed: int = 0
) -> None:
    """Write a COCO instances JSON shaped like train2017's (sizes, keys, polygons, crowd RLE).

    Args:
        path: where to write.
        num_images: images; about 1 % get no box, as in COCO.
        num_boxes: annotations, spread over the images with a long tail (Poisson-like).
        points: mean polygon vertices per annotation (COCO's are longer; shorter makes the
            parse a smaller share of the time, which is the harder case for the reader).
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.choice(
        [[640, 480], [480, 640], [640, 427], [500, 375], [640, 640]], num_images
    )  # [I, 2] w, h
    weights = rng.gamma(1.2, 1.0, num_images) * (rng.random(num_images) > 0.01)
    image_of = np.sort(rng.choice(num_images, num_boxes, p=weights / weights.sum()))
    ids = rng.permutation(np.arange(1, 10 * num_images))[:num_images] + 1  # unique, unordered, like COCO's
    wh = rng.uniform(0.02, 0.6, (num_boxes, 2)) * sizes[image_of]
    xy = rng.uniform(0, 1, (num_boxes, 2)) * (sizes[image_of] - wh)
    boxes = np.round(np.concatenate([xy, wh], 1), 2)  # [A, 4] xywh
    crowd = rng.random(num_boxes) < 0.01
    cats = rng.choice(COCO_IDS, num_boxes)
    images = [
        {
            "license": int(rng.integers(1, 9)),
            "file_name": f"{ids[i]:012d}.jpg",
            "coco_url": f"http://images.cocodataset.org/train2017/{ids[i]:012d}.jpg",
            "height": int(sizes[i, 1]),
            "width": int(sizes[i, 0]),
            "date_captured": "2013-11-14 11:18:45",
            "flickr_url": f"http://farm4.staticflickr.com/3153/{ids[i]}_c6b4bbd1c4_z.jpg",
            "id": int(ids[i]),
        }
        for i in range(num_images)
    ]
    verts = np.maximum(3, rng.poisson(points, num_boxes))  # [A] vertices per polygon
    at = np.concatenate([[0], np.cumsum(2 * verts)]).tolist()
    owner = np.repeat(np.arange(num_boxes), verts)
    poly = np.stack(
        [
            boxes[owner, 0] + boxes[owner, 2] * rng.random(len(owner)),
            boxes[owner, 1] + boxes[owner, 3] * rng.random(len(owner)),
        ],
        1,
    )  # [V, 2]
    flat = np.round(poly, 2).ravel().tolist()
    box_list, area = boxes.tolist(), np.round(boxes[:, 2] * boxes[:, 3] * 0.6, 4).tolist()
    img_of, cat_of, hw = ids[image_of].tolist(), cats.tolist(), sizes[image_of][:, ::-1].tolist()
    anns = []
    for k in range(num_boxes):
        if crowd[k]:
            seg = {"counts": rng.integers(0, 400, 2 * int(rng.integers(10, 60))).tolist(), "size": hw[k]}
        else:
            seg = [flat[at[k] : at[k + 1]]]
        anns.append(
            {
                "segmentation": seg,
                "area": area[k],
                "iscrowd": int(crowd[k]),
                "image_id": img_of[k],
                "bbox": box_list[k],
                "category_id": cat_of[k],
                "id": k + 1,
            }
        )
    data = {
        "info": {"description": "synthetic COCO train2017-sized file", "version": "1.0", "year": 2017},
        "licenses": [
            {"url": f"http://creativecommons.org/licenses/{i}/", "id": i, "name": f"License {i}"}
            for i in range(1, 9)
        ],
        "images": images,
        "annotations": anns,
        "categories": [{"supercategory": "thing", "id": c, "name": f"class_{c}"} for c in COCO_IDS],
    }
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))


def run_child(which: str, path: Path) -> dict:
    """One contender in a fresh interpreter; its own figures, read from its last stdout line."""
    done = subprocess.run([sys.executable, "-c", CHILD, which, str(path)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{which} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="reuse this COCO JSON instead of writing one")
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--boxes", type=int, default=860_001)
    parser.add_argument("--points", type=int, default=12, help="mean polygon vertices per box")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (each runs both once)")
    parser.add_argument("--write", type=Path, help="only write the synthetic file here and exit")
    args = parser.parse_args()
    if args.write:
        write_synthetic_coco(args.write, args.images, args.boxes, args.points)
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = args.json
        if path is None:
            path = Path(tmp) / "instances_train2017.json"
            # In its own process: a child's ru_maxrss starts at its parent's peak at fork time
            # (Linux carries the pre-exec high-water mark over), so this process must stay small.
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--write",
                    str(path),
                    "--images",
                    str(args.images),
                    "--boxes",
                    str(args.boxes),
                    "--points",
                    str(args.points),
                ],
                check=True,
            )
        print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MiB")
        rounds: dict[str, list[dict]] = {"pycocotools": [], "detlab": []}
        for r in range(args.repeat):
            for which in ("pycocotools", "detlab") if r % 2 == 0 else ("detlab", "pycocotools"):
                rounds[which].append(run_child(which, path))
    print(
        f"{'':12} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13}   (medians of {args.repeat} rounds; imports ~30 MiB)"
    )
    for which, runs in rounds.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "rss_mib")}
        print(
            f"{which:12} {med['wall']:8.2f} {med['cpu']:8.2f} {med['rss_mib']:13.0f}   images: {runs[0]['images']}"
        )
    ratio = {
        k: statistics.median(d[k] / p[k] for d, p in zip(rounds["detlab"], rounds["pycocotools"]))
        for k in ("wall", "cpu", "rss_mib")
    }
    print(f"{'detlab/pct':12} {ratio['wall']:7.2f}× {ratio['cpu']:7.2f}× {ratio['rss_mib']:12.2f}×")
    ok = ratio["cpu"] <= 1.0 and ratio["rss_mib"] <= 1.0
    print("target: CPU and peak RSS ratios ≤ 1.0:", "PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
