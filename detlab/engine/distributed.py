"""One loop for one process or many: process group, sharded sampling, gathered evaluation.

Under ``torchrun --nproc_per_node N -m detlab train …`` the environment carries
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`setup` joins the process group
(NCCL on GPU, gloo on CPU). Without it, everything here degrades to one process
with the same code path (world size 1), so single-process and DDP runs sample,
augment and evaluate identically.

Reproducible data order and augmentation (what exact resume relies on):
the sampler is a ``DistributedSampler`` (its permutation depends only on
``seed + epoch``) that can skip the samples an interrupted epoch already consumed,
and it yields ``(index, sample_seed)`` keys. :class:`SeededDataset` seeds the
RNGs from ``sample_seed`` around each ``__getitem__`` — in a fork of the RNG
state — so a sample's random augmentation does not depend on which worker loads
it, on how many samples were skipped, or on the main process's RNG.

Legend: ``K`` detections of one image.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from detlab.device import pick_device


@dataclass
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device_name: str = "auto") -> DistContext:
    """Join the torchrun process group when the environment asks for one.

    Args:
        device_name: config ``device`` (auto | cpu | cuda | cuda:N).

    Returns:
        The context; a single-process context when ``WORLD_SIZE`` is unset or 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup() -> None:
    """Leave the process group (no-op for one process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank (``[obj]`` for one process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP syncs buffers at the start of each forward, so after the last training step each
    rank holds the statistics of its own last batch; evaluation must use one set.
    """
    if dist.is_initialized():
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (a collective: every rank must call it)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(t)
    return int(t.item()) == 0


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields ``(index, sample_seed)`` and can skip a consumed prefix.

    Args:
        dataset: the dataset to sample (only its length is used).
        num_replicas, rank: the process group shape (1 and 0 for one process).
        shuffle: new permutation per epoch from ``seed + epoch``.
        seed: shared by every rank.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the current epoch."""
        self.start = int(start)

    def __iter__(self):
        indices = list(super().__iter__())[self.start :]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch), "start": self.start, "seed": int(self.seed)}


class SeededDataset(Dataset):
    """Wraps a dataset so ``ds[(index, seed)]`` runs ``dataset[index]`` with every RNG seeded from ``seed``.

    The RNG states of the calling process are restored afterwards, so loading in
    the main process (``num_workers=0``) does not disturb the model's random stream.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed python and numpy from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def evaluate_sharded(
    model,
    dataset,
    protocols,
    batch_size: int,
    ctx: DistContext,
    with_loss: bool = True,
    num_workers: int = 0,
    progress: bool = False,
    keep_detections: bool = False,
) -> dict:
    """Evaluate on every rank's shard, gather detections, score once; same result on every rank.

    Args:
        model: unwrapped model in eval mode; ``model(images) -> list[dict]`` (boxes xyxy in
            the fed image's pixels, scores, labels 0..C-1); ``model.val_losses`` when ``with_loss``.
        dataset: ``ds[i] -> (image, target)`` with ``target["image_id"]`` and ``orig_size``,
            and ``dataset.records`` for the ground truth.
        protocols: evaluation protocols (``coco``, ``voc07``, ``voc12``).
        batch_size: images per inference batch.
        ctx: the process group context.
        with_loss: also compute the validation losses.
        num_workers: DataLoader workers for evaluation.
        progress: show this rank's progress (rank 0's, under torchrun).
        keep_detections: on the main rank, also return the gathered detections under
            ``detections`` (``image_id -> {"boxes", "scores", "labels"}``; TensorBoard's PR curves
            and drawn images); they are not broadcast.

    Returns:
        ``evaluate_detections``'s result dict plus ``val_loss: {"loss": sum of parts, "loss_<part>": …}``
        (means over images) when losses were computed.
    """
    from detlab.evaluation.evaluator import evaluate_detections, mean_losses, predict_split

    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    dets, sums, n = predict_split(
        model,
        dataset,
        indices,
        batch_size,
        ctx.device,
        with_loss,
        progress=progress and ctx.is_main,
        num_workers=num_workers,
    )
    gathered = gather_objects((dets, sums, n))
    result = None
    if ctx.is_main:
        all_dets, all_sums, total = {}, {}, 0
        for d, s, k in gathered:
            all_dets.update(d)
            total += k
            for name, v in s.items():
                all_sums[name] = all_sums.get(name, 0.0) + v
        result = evaluate_detections(dataset.records, all_dets, protocols=tuple(protocols))
        if all_sums and total:
            result["val_loss"] = mean_losses(all_sums, total)
    result = broadcast_object(result)
    if keep_detections and ctx.is_main:
        result = {**result, "detections": all_dets}
    return result
