"""DETR on small data: train ``DETR_SMALL_DATA_RECIPE`` on BCCD train, report COCO AP50 on BCCD val.

DETR fine-tunes on a few hundred images often end at AP 0. This script is the
measurement behind ``detlab.models.detr.DETR_SMALL_DATA_RECIPE``: it trains the
recipe (or a variant given on the command line) on CPU within a bounded budget
and prints the COCO metrics (faster-coco-eval, pycocotools-identical) of the
validation split.

    .venv/bin/python benchmarks/detr_small_data.py --minutes 10
    .venv/bin/python benchmarks/detr_small_data.py --epochs 3 --queries 30 --size 320

It reads the data with detlab's VOC reader and keeps the training loop minimal
(AdamW with a backbone learning-rate multiplier, gradient clipping, a step LR
drop, horizontal flips) so that the figure depends on the model and the recipe
only, not on the engine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detlab.data.formats.voc import read_voc_year
from detlab.models.detr import DETR_SMALL_DATA_RECIPE, build_detr

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "bccd" / "BCCD"


def load_split(split: str, classes: list[str] | None) -> tuple[list, list[str]]:
    """``[(uint8 image [3, H, W], boxes [N, 4] xyxy px, labels [N], image_id)]`` and class names."""
    records = read_voc_year(BCCD, split=split, classes=classes)
    items = []
    for r in records.images:
        image = torch.from_numpy(np.asarray(Image.open(r.file).convert("RGB"))).permute(2, 0, 1).contiguous()
        keep = (r.boxes[:, 2] > r.boxes[:, 0]) & (r.boxes[:, 3] > r.boxes[:, 1])  # two zero-size RBC boxes
        items.append((image, torch.from_numpy(r.boxes[keep]), torch.from_numpy(r.labels[keep]), r.image_id))
    return items, records.class_names


def coco_ap(model: torch.nn.Module, items: list, class_names: list[str]) -> dict[str, float]:
    """COCO metrics of ``model`` on ``items`` with faster-coco-eval."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(class_names)]}
    dets = []
    model.eval()
    with torch.no_grad():
        for image, boxes, labels, image_id in items:
            gt["images"].append({"id": image_id, "height": image.shape[1], "width": image.shape[2]})
            for b, c in zip(boxes.tolist(), labels.tolist()):
                w, h = b[2] - b[0], b[3] - b[1]
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": c,
                                          "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
            out = model([image.float() / 255])[0]
            for b, s, c in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                dets.append({"image_id": image_id, "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                             "score": s})
    coco_gt = COCO(gt)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), "bbox", print_function=lambda *a: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def train_epoch(model, items, optimizer, batch_size: int, clip: float, rng: np.random.Generator) -> float:
    model.train()
    order, losses = rng.permutation(len(items)), []
    for start in range(0, len(order), batch_size):
        images, targets = [], []
        for i in order[start : start + batch_size]:
            image, boxes, labels, _ = items[i]
            image = image.float() / 255
            if rng.random() < 0.5:  # horizontal flip
                image = image.flip(-1)
                boxes = torch.stack([image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0], boxes[:, 3]], 1)
            images.append(image)
            targets.append({"boxes": boxes, "labels": labels})
        loss_dict = model(images, targets)
        loss = sum(v for k, v in loss_dict.items() if k.startswith("loss_"))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def main() -> None:
    r = DETR_SMALL_DATA_RECIPE
    k = r["model_knobs"]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=r["epochs"])
    p.add_argument("--minutes", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--size", type=int, default=k["min_size"])
    p.add_argument("--queries", type=int, default=k["num_queries"])
    p.add_argument("--lr", type=float, default=r["lr"])
    p.add_argument("--batch", type=int, default=r["batch_size"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train, class_names = load_split("train", None)
    val, _ = load_split("val", class_names)
    knobs = dict(k, num_queries=args.queries, min_size=args.size, max_size=max(k["max_size"], args.size))
    model = build_detr(r["model"], len(class_names), weights=r["weights"], **knobs)
    backbone = [p for n, p in model.named_parameters() if n.startswith(model.backbone_prefixes) and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith(model.backbone_prefixes) and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": rest}, {"params": backbone, "lr": args.lr * r["backbone_lr_mult"]}],
        lr=args.lr, weight_decay=r["weight_decay"],
    )
    drop_at = round(args.epochs * r["lr_drop_epoch"] / r["epochs"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(drop_at, 1), gamma=0.1)
    print(f"{r['model']} {knobs} lr={args.lr} batch={args.batch} epochs={args.epochs} (lr drop at {drop_at})")
    start = time.time()
    for epoch in range(args.epochs):
        loss = train_epoch(model, train, optimizer, args.batch, r["clip_grad_norm"], rng)
        scheduler.step()
        print(f"epoch {epoch + 1}: loss {loss:.3f}  {time.time() - start:.0f}s", flush=True)
        if args.minutes is not None and time.time() - start > args.minutes * 60:
            break
    train_s = time.time() - start
    metrics = coco_ap(model, val, class_names)
    print(f"bccd val: AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
          f"(train {train_s:.0f}s, {epoch + 1} epochs, {args.threads} threads)")


if __name__ == "__main__":
    main()
