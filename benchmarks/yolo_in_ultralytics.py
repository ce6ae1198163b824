"""detlab's YOLO exports read by Ultralytics itself: ``check_det_dataset`` on the written data.yaml
from another working directory, then ``YOLODataset`` on each split, every label checked against
the source COCO file (read here with ``json``): same files, same boxes, and each class index names
the box's own category. Ultralytics drops a label line that repeats another exactly; so does the
comparison (``detlab check`` warns of such repeats).

Two sources: chess (Roboflow COCO export, train/valid/test, one category without boxes) and chess
train rewritten with odd category ids and an unused category after each (COCO-80's gaps).

Needs ultralytics beside detlab (not a detlab dependency), e.g. from the repository root::

    python -m venv /tmp/ulv && echo "$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')" \\
        > "$(/tmp/ulv/bin/python -c 'import site; print(site.getsitepackages()[0])')/detlab-venv.pth"
    /tmp/ulv/bin/pip install ultralytics
    PYTHONPATH=. /tmp/ulv/bin/python benchmarks/yolo_in_ultralytics.py

Prints one line per split and exits 1 when any label differs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from detlab.data.convert import convert

CHESS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "chess"


def source_boxes(coco: dict) -> tuple[dict[str, list[tuple[str, np.ndarray]]], int]:
    """file name → [(category name, normalised cxcywh)], as YOLO labels hold them, and how many
    exact repeats (same image, category and bbox) were left out: Ultralytics' loader drops them."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    out: dict[str, list] = {im["file_name"]: [] for im in coco["images"]}
    seen, repeats = set(), 0
    for a in coco["annotations"]:
        key = (a["image_id"], a["category_id"], *a["bbox"])
        repeats += key in seen
        if key in seen:
            continue
        seen.add(key)
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        cxcywh = np.array(
            [(x + w / 2) / im["width"], (y + h / 2) / im["height"], w / im["width"], h / im["height"]]
        )
        out[im["file_name"]].append((names[a["category_id"]], cxcywh))
    return out, repeats


def mismatches(labels: list[dict], names: dict, source: dict, atol: float = 1e-4) -> list[str]:
    """Files whose Ultralytics labels differ from the source: missing, extra or moved boxes."""
    bad = []
    seen = set()
    for lab in labels:
        name = Path(lab["im_file"]).name
        seen.add(name)
        left = [(names[int(c)], b) for c, b in zip(lab["cls"].reshape(-1), lab["bboxes"].reshape(-1, 4))]
        for cat, box in source.get(name, []):
            hit = next(
                (k for k, (n, b) in enumerate(left) if n == cat and np.abs(b - box).max() <= atol), None
            )
            if hit is None:
                bad.append(f"{name}: {cat} box not among Ultralytics' labels")
                break
            left.pop(hit)
        else:
            if left:
                bad.append(f"{name}: {len(left)} labels the source does not have")
    bad += [f"{f}: not loaded" for f in sorted(set(source) - seen)]
    return bad


def interleaved(chess: Path, folder: Path) -> tuple[Path, dict]:
    coco = json.loads((chess / "train" / "_annotations.coco.json").read_text())
    by_id = sorted(coco["categories"], key=lambda c: c["id"])
    new_id = {c["id"]: 2 * k + 1 for k, c in enumerate(by_id)}
    coco["categories"] = [
        d
        for k, c in enumerate(by_id)
        for d in ({**c, "id": 2 * k + 1}, {"id": 2 * k + 2, "name": f"unused-{k}"})
    ]
    for a in coco["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    path = folder / "interleaved.json"
    path.write_text(json.dumps(coco))
    return path, coco


def check(yml: Path, sources: dict[str, dict], elsewhere: Path) -> bool:
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    os.chdir(elsewhere)  # Ultralytics resolves a relative `path:` against the working directory
    data = check_det_dataset(str(yml), autodownload=False)
    ok = True
    for key, coco in sources.items():
        ds = YOLODataset(img_path=data[key], data=data, task="detect", augment=False)
        source, repeats = source_boxes(coco)
        bad = mismatches(ds.labels, data["names"], source)
        n_boxes = sum(len(lab["cls"]) for lab in ds.labels)
        dropped = f" (the source's {repeats} exact repeats aside, which Ultralytics drops)" if repeats else ""
        print(
            f"{yml.parent.name} {key}: {len(ds.labels)} images, {n_boxes} boxes, nc {data['nc']}: "
            + (f"every label matches the source{dropped}" if not bad else f"{len(bad)} differ, e.g. {bad[0]}")
        )
        ok &= not bad
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chess", type=Path, default=CHESS)
    args = ap.parse_args()
    chess = args.chess.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "elsewhere").mkdir()
        for split in ("train", "valid", "test"):
            convert(f"{chess}:{split}", tmp / "chess_yolo", "yolo")
        sources = {
            key: json.loads((chess / split / "_annotations.coco.json").read_text())
            for key, split in (("train", "train"), ("val", "valid"), ("test", "test"))
        }
        ok = check(tmp / "chess_yolo" / "data.yaml", sources, tmp / "elsewhere")
        src, coco = interleaved(chess, tmp)
        yml, _ = convert(src, tmp / "interleaved_yolo", "yolo", images=str(chess / "train"))
        convert(src, tmp / "interleaved_yolo", "yolo", split="val", images=str(chess / "train"))
        ok &= check(yml, {"train": coco, "val": coco}, tmp / "elsewhere")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
