"""Is the data loader fast enough? Loader-only throughput against the training step's.

Loader: ``DataLoader`` over ``load_dataset(BCCD train)`` with the model's training
transforms (``build_transforms(model.transform_recipe, train=True)``), the default
batch size and worker count of :class:`detlab.config.TrainConfig`, shuffled,
iterated without a model (images/s; the first batch, which pays for worker start-up,
is excluded and reported apart). Train step: forward, loss sum, backward and an
SGD step of a CPU-friendly model at its default size on batches taken from the
same loader beforehand (images/s). The ratio loader / train step should be ≥ 3:
then the loader is never what the training waits for.

    .venv/bin/python benchmarks/data_speed.py [--model ssdlite_effl0] [--batches 12] [--steps 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from detlab.config import TrainConfig
from detlab.data.dataset import collate, load_dataset
from detlab.data.transforms import build_transforms
from detlab.models.catalogue import build_model

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd" / "BCCD"


def loader_speed(loader: DataLoader, batches: int) -> tuple[float, float]:
    """``(images/s after the first batch, seconds to the first batch)``."""
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            imgs, _ = next(it)
        except StopIteration:
            break
        images += len(imgs)
    return images / (time.perf_counter() - start), first


def train_speed(model, batches: list, steps: int) -> float:
    """Images/s of full training steps (forward, loss sum, backward, SGD step)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    model.train()

    def step(imgs, tgts):
        losses = model(imgs, tgts)
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(*batches[0])  # warm-up
    start, images = time.perf_counter(), 0
    for i in range(steps):
        imgs, tgts = batches[(i + 1) % len(batches)]
        step(imgs, tgts)
        images += len(imgs)
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ssdlite_effl0")
    parser.add_argument("--batches", type=int, default=12, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=4, help="training steps timed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig()
    model = build_model(args.model, 3, weights="none")
    dataset = load_dataset(
        str(BCCD), split="train", transforms=build_transforms(model.transform_recipe, train=True)
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        persistent_workers=False,
    )
    ips_loader, first = loader_speed(loader, args.batches)
    batches = [
        b
        for _, b in zip(
            range(2),
            DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=0, collate_fn=collate),
        )
    ]
    ips_train = train_speed(model, batches, args.steps)
    print(
        f"CPU, {args.threads} torch threads; BCCD train, '{model.transform_recipe}' training transforms, "
        f"batch {cfg.batch_size}, {cfg.num_workers} workers; model {args.model} (default size)"
    )
    print(f"loader only: {ips_loader:.1f} images/s (first batch after {first:.1f} s of worker start-up)")
    print(f"train step:  {ips_train:.2f} images/s")
    ratio = ips_loader / ips_train
    print(f"loader / train step: {ratio:.1f}× (target ≥ 3×)")
    return 0 if ratio >= 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
