"""DETR on small data: train ``detlab.config.RECIPES["detr"]`` on BCCD train, report COCO AP50 on BCCD val.

DETR fine-tunes on a few hundred images often end at AP 0. This script is the
measurement behind ``detlab.config.RECIPES["detr"]``: it trains the
recipe (or a variant given on the command line) on CPU and prints the COCO
metrics (faster-coco-eval, pycocotools-identical) of the validation split.

    .venv/bin/python benchmarks/detr_small_data.py --threads 1 --eval-every 10 --cache /tmp/bccd384.pt
    .venv/bin/python benchmarks/detr_small_data.py --threads 1 --cache /tmp/bccd384.pt --knob query_selection=false
    .venv/bin/python benchmarks/detr_small_data.py --epochs 24 --lr-drop 8 --knob dropout=0.1

It reads the data with detlab's VOC reader and keeps the training loop minimal
(AdamW with a backbone learning-rate multiplier, gradient clipping, a step LR
drop, horizontal flips) so that the figure depends on the model and the recipe
only, not on the engine. With a frozen backbone its features (of each image and
its mirror) are computed once, which trains exactly as recomputing them would;
``--cache`` keeps them on disk between runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from detlab.config import RECIPES
from detlab.data.formats.voc import read_voc_year
from detlab.models.detr import build_detr

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "bccd" / "BCCD"
MODEL = "detr_effl0"  # the recipe's model: its EfficientNet-Lite0 ImageNet weights are offline


def load_split(split: str, classes: list[str] | None) -> tuple[list, list[str]]:
    """``[(uint8 image [3, H, W], boxes [N, 4] xyxy px, labels [N], image_id)]`` and class names."""
    records = read_voc_year(BCCD, split=split, classes=classes)
    items = []
    for r in records.images:
        image = torch.from_numpy(np.array(Image.open(r.file).convert("RGB"))).permute(2, 0, 1).contiguous()
        keep = (r.boxes[:, 2] > r.boxes[:, 0]) & (r.boxes[:, 3] > r.boxes[:, 1])  # two zero-size RBC boxes
        items.append((image, torch.from_numpy(r.boxes[keep]), torch.from_numpy(r.labels[keep]), r.image_id))
    return items, records.class_names


def encode_all(model, items: list, flips: bool) -> list:
    """Per item, the frozen backbone's ``(feature, mask, pos)`` — and of its mirror image too."""
    cached = []
    with torch.no_grad():
        for image, *_ in items:
            image = image.float() / 255
            views = [image, image.flip(-1)] if flips else [image]
            cached.append([model.encode([v]) for v in views])
    return cached


def run_batch(model, items: list, cached: list | None, indices, flips: list[bool]) -> dict:
    """Raw outputs for ``items[indices]`` (mirrored where ``flips``): cached features when given."""
    if cached is None:
        images = [
            items[i][0].float().div(255).flip(-1) if f else items[i][0].float().div(255)
            for i, f in zip(indices, flips)
        ]
        return model.forward_raw(images)
    parts = [cached[i][int(f)] for i, f in zip(indices, flips)]  # same image size throughout: no padding
    return model.decode(*(torch.cat([p[j] for p in parts]) for j in range(3)))


def flipped_targets(items: list, indices, flips: list[bool]) -> tuple[list, list]:
    shapes, targets = [], []
    for i, f in zip(indices, flips):
        image, boxes, labels, _ = items[i]
        if f:
            w = image.shape[-1]
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        shapes.append(image)
        targets.append({"boxes": boxes, "labels": labels})
    return shapes, targets


def train_epoch(
    model, items, cached, optimizer, batch_size: int, clip: float, rng: np.random.Generator
) -> float:
    model.train()
    order, losses = rng.permutation(len(items)), []
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        flips = [bool(rng.random() < 0.5) for _ in indices]
        images, targets = flipped_targets(items, indices, flips)
        loss_dict = model.criterion(
            run_batch(model, items, cached, indices, flips), model.targets_to_detr(images, targets)
        )
        loss = sum(v for k, v in loss_dict.items() if k.startswith("loss_"))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def coco_ap(model, items: list, cached: list | None, class_names: list[str]) -> dict[str, float]:
    """COCO metrics of ``model`` on ``items`` with faster-coco-eval (AP50 = IoU 0.5, maxDets 100)."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for i, n in enumerate(class_names)],
    }
    dets = []
    model.eval()
    with torch.no_grad():
        for n, (image, boxes, labels, image_id) in enumerate(items):
            gt["images"].append({"id": image_id, "height": image.shape[1], "width": image.shape[2]})
            for b, c in zip(boxes.tolist(), labels.tolist()):
                w, h = b[2] - b[0], b[3] - b[1]
                gt["annotations"].append(
                    {
                        "id": len(gt["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": c,
                        "bbox": [b[0], b[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
            out = model.postprocess(run_batch(model, items, cached, [n], [False]), [tuple(image.shape[-2:])])[
                0
            ]
            for b, s, c in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                dets.append(
                    {
                        "image_id": image_id,
                        "category_id": c,
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                        "score": s,
                    }
                )
    coco_gt = COCO(gt)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), "bbox", print_function=lambda *a: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def query_spread(model, items: list, cached: list | None, n: int = 8) -> float:
    """How much each query's box (cx, cy, w, h, normalised) moves between the first ``n`` images.

    Near 0 means the decoder ignores the image and predicts fixed prior boxes (collapse):
    AP then stays at chance level whatever the schedule.
    """
    model.eval()
    with torch.no_grad():
        boxes = torch.stack(
            [
                run_batch(model, items, cached, [i], [False])["pred_boxes"][0]
                for i in range(min(n, len(items)))
            ]
        )
    return float(boxes.std(0).mean())  # boxes: [n, Q, 4]


def main() -> None:
    r = RECIPES["detr"]
    k = r["model_kwargs"]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=r["epochs"])
    p.add_argument("--minutes", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N epochs")
    p.add_argument(
        "--eval-train",
        action="store_true",
        help="at those evaluations, also score the training images (underfit or overfit?)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="file keeping the frozen backbone's features between runs of the same size",
    )
    p.add_argument("--size", type=int, default=k["min_size"])
    p.add_argument("--queries", type=int, default=k["num_queries"])
    p.add_argument("--lr", type=float, default=r["base_lr"])
    p.add_argument("--batch", type=int, default=r["batch_size"])
    p.add_argument(
        "--lr-drop", type=int, default=None, help="epoch of the lr × 0.1 step (default: the recipe's, scaled)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--knob", action="append", default=[], help="extra model knob, e.g. --knob train_backbone=false"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train, class_names = load_split("train", None)
    val, _ = load_split("val", class_names)
    knobs = dict(k, num_queries=args.queries, min_size=args.size, max_size=max(k["max_size"], args.size))
    for item in args.knob:
        key, value = item.split("=", 1)
        knobs[key] = yaml.safe_load(value)
    model = build_detr(MODEL, len(class_names), weights="imagenet", **knobs)
    backbone = [
        p for n, p in model.named_parameters() if n.startswith(model.backbone_prefixes) and p.requires_grad
    ]
    rest = [
        p
        for n, p in model.named_parameters()
        if not n.startswith(model.backbone_prefixes) and p.requires_grad
    ]
    optimizer = torch.optim.AdamW(
        [{"params": rest}, {"params": backbone, "lr": args.lr * r["backbone_lr_mult"]}],
        lr=args.lr,
        weight_decay=r["weight_decay"],
    )
    drop_at = args.lr_drop if args.lr_drop is not None else round(args.epochs * r["milestones"][0])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(drop_at, 1), gamma=0.1)
    print(f"{MODEL} {knobs} lr={args.lr} batch={args.batch} epochs={args.epochs} (lr drop at {drop_at})")
    start = time.time()
    frozen = not any(
        p.requires_grad for n, p in model.named_parameters() if n.startswith(model.backbone_prefixes)
    )
    # A frozen backbone gives the same features every epoch: computing them once (both flips)
    # trains exactly as running it every step would, in a fraction of the CPU time.
    train_cache = val_cache = None
    if frozen and args.cache is not None and args.cache.is_file():
        train_cache, val_cache = torch.load(args.cache, weights_only=True)
    elif frozen:
        train_cache, val_cache = encode_all(model, train, flips=True), encode_all(model, val, flips=False)
        if args.cache is not None:
            torch.save((train_cache, val_cache), args.cache)
    print(
        f"backbone features {'cached' if frozen else 'computed every step'}: {time.time() - start:.0f}s",
        flush=True,
    )
    for epoch in range(args.epochs):
        loss = train_epoch(model, train, train_cache, optimizer, args.batch, r["clip_grad_norm"], rng)
        scheduler.step()
        print(f"epoch {epoch + 1}: loss {loss:.3f}  {time.time() - start:.0f}s", flush=True)
        if args.eval_every and (epoch + 1) % args.eval_every == 0:
            line = f"  val AP50 {coco_ap(model, val, val_cache, class_names)['AP50']:.4f}"
            line += f"  spread {query_spread(model, val, val_cache):.4f}"
            if args.eval_train:
                line += f"  train AP50 {coco_ap(model, train, train_cache, class_names)['AP50']:.4f}"
            print(line, flush=True)
        if args.minutes is not None and time.time() - start > args.minutes * 60:
            break
    train_s = time.time() - start
    metrics = coco_ap(model, val, val_cache, class_names)
    print(
        f"bccd val: AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
        f"spread {query_spread(model, val, val_cache):.4f}  (train {train_s:.0f}s wall, {time.process_time():.0f}s CPU in all, {epoch + 1} epochs, {args.threads} threads)"
    )


if __name__ == "__main__":
    main()
