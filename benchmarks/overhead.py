"""No overhead: every family's detlab model against the plain model with the same weights, on CPU.

For the torchvision-based families the peer is an instance of the torchvision class
itself (``FasterRCNN``, ``FCOS``, ``RetinaNet``, ``SSD``) sharing the detlab model's
state — the same modules, the same weights, the same settings — so the only
difference is detlab's wrapper (label mapping, loss-key renaming, the contract). For
DETR the peer calls the inner modules in order (preprocess → backbone → input_proj →
transformer → heads → postprocess) without ``DETR.forward``.

Inference (``torch.inference_mode``) and one training step (forward, loss sum,
backward) are timed in interleaved rounds on the same real images (BCCD, 480x640);
the ratio detlab / peer must stay within 1.05. The post-processing share (decode,
top-k, NMS, box mapping) of the detlab model's inference time is printed beside it;
with untrained (random-init) heads the number of detections is unrealistic, which
the ``dets/img`` column shows.

    .venv/bin/python benchmarks/overhead.py [--models fcos_r18_fpn,...] [--iters 6] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from detlab.bench import interleaved, round_ratio, run_bench
from detlab.data.dataset import load_dataset
from detlab.models.catalogue import build_model

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd" / "BCCD"
MODELS = ["faster_rcnn_effl0_fpn", "fcos_r18_fpn", "retinanet_r50_fpn", "ssdlite_effl0", "detr_r18"]
SIZE = {"min_size": 320, "max_size": 448}  # shorter/longer side inside the model, same for every family


def plain_peer(model: nn.Module):
    """The torchvision class the detlab model subclasses, sharing its state; DETR: its inner modules."""
    if model.family == "detr":

        def detr_inner(images, targets=None):
            batch, mask = model.preprocess(images)
            feature, mask, pos = model.backbone(batch, mask)
            hs = model.transformer(model.input_proj(feature), mask, model.query_embed.weight, pos)
            out = {"pred_logits": model.class_embed(hs)[-1], "pred_boxes": model.bbox_embed(hs).sigmoid()[-1]}
            if targets is not None:
                return model.criterion(out, targets)
            return model.postprocess(out, [tuple(im.shape[-2:]) for im in images])

        return detr_inner
    # torchvision FasterRCNN / FCOS / RetinaNet / SSD: the first torchvision class the model extends
    base = next(c for c in type(model).__mro__ if c.__module__.startswith("torchvision."))
    peer = object.__new__(base)
    peer.__dict__ = model.__dict__  # same modules, parameters, buffers and flags: only the class differs
    return peer


def peer_targets(model: nn.Module, targets: list[dict]) -> list[dict]:
    """Targets in the peer's own convention, converted once outside the timed region."""
    if model.family == "detr":
        return model.targets_to_detr(images_cache, targets)
    from detlab.models.contract import loss_targets

    return loss_targets(targets, model.label_offset)


images_cache: list[torch.Tensor] = []


def knobs(name: str) -> dict:
    if name.startswith("ssd"):
        return {"size": SIZE["min_size"]}
    return dict(SIZE)


def measure(name: str, images, targets, iters: int) -> dict:
    model = build_model(name, 3, weights="none", **knobs(name)).eval()
    peer = plain_peer(model)
    tgt_peer = peer_targets(model, targets)

    def infer(fn):
        def call():
            with torch.inference_mode():
                fn(images)

        return call

    inference = interleaved({"detlab": infer(model), "peer": infer(peer)}, iters, warmup=1)

    def step(fn, tgts):
        def call():
            losses = fn(images, tgts)
            # torchvision's FCOS / RetinaNet name losses without the ``loss_`` prefix detlab adds
            sum(v for k, v in losses.items() if k.startswith("loss_") or fn is not model).backward()
            model.zero_grad(set_to_none=True)

        return call

    model.train()
    training = interleaved({"detlab": step(model, targets), "peer": step(peer, tgt_peer)}, iters, warmup=1)
    model.eval()
    bench = run_bench(model, images=images, batch=len(images), iters=iters, warmup=1, device="cpu")
    return {
        "infer_ratio": round_ratio(inference, "detlab", "peer"),
        "train_ratio": round_ratio(training, "detlab", "peer"),
        "infer_ms": 1000 * sorted(inference["detlab"])[len(inference["detlab"]) // 2] / len(images),
        "post_share": bench["eager"]["postprocess_share"],
        "dets": bench["eager"]["detections_per_image"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=2, help="BCCD val images per call")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(str(BCCD), split="val")
    pairs = [dataset[i] for i in range(args.images)]
    images_cache[:] = [p[0] for p in pairs]
    targets = [{k: v for k, v in p[1].items() if k in ("boxes", "labels", "iscrowd")} for p in pairs]
    print(
        f"CPU, {args.threads} threads, {args.images} BCCD val images [3, 480, 640] per call, inner size "
        f"{SIZE['min_size']}/{SIZE['max_size']} (SSD {SIZE['min_size']} square), {args.iters} interleaved rounds"
    )
    print(
        f"{'model':<24} {'infer detlab/peer':>17} {'train detlab/peer':>17} {'ms/img':>8} {'post share':>10} {'dets/img':>8}"
    )
    worst = 0.0
    for name in args.models.split(","):
        torch.manual_seed(0)
        r = measure(name, images_cache, targets, args.iters)
        worst = max(worst, r["infer_ratio"], r["train_ratio"])
        print(
            f"{name:<24} {r['infer_ratio']:>16.3f}× {r['train_ratio']:>16.3f}× {r['infer_ms']:>8.0f} "
            f"{100 * r['post_share']:>9.1f}% {r['dets']:>8.1f}",
            flush=True,
        )
    print(f"worst ratio {worst:.3f}× (target ≤ 1.05×)")
    return 0 if worst <= 1.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
