"""``detlab bench`` figures for every family, and detlab's CPU fast paths against eager float32.

For each model: eager PyTorch in float32 (``torch.inference_mode``, the torchvision
model underneath — the peer), eager with the network in bf16 and decoding in
float32 (``--precision bf16`` / ``bench --precision bf16``, :mod:`detlab.models.precision`;
only on CPUs with native bf16) and ONNX Runtime on the exported graph are called
in interleaved rounds on the same real BCCD image (480x640, the model resizing it
internally to the stated size), and each speed-up is the median of the per-round
ratios against float32 eager. The
eager stage split (preprocess / forward / postprocess) and peak memory come from
:func:`detlab.bench.run_bench` in the same run.

    .venv/bin/python benchmarks/bench_models.py [--models a,b] [--iters 6] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from detlab.bench import interleaved, round_ratio, run_bench
from detlab.data.dataset import load_dataset
from detlab.device import cpu_has_native_bf16
from detlab.export import OnnxModel, check_export, temporary_onnx
from detlab.models.catalogue import build_model
from detlab.models.precision import autocast_network

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd" / "BCCD"
MODELS = [
    "ssdlite_effl0",
    "fcos_r18_fpn",
    "fcos_effl0_fpn",
    "faster_rcnn_effl0_fpn",
    "retinanet_r50_fpn",
    "detr_r18",
]
SIZE = {"min_size": 320, "max_size": 448}


def knobs(name: str) -> dict:
    return {"size": SIZE["min_size"]} if name.startswith("ssd") else dict(SIZE)


def measure(name: str, image: torch.Tensor, iters: int, threads: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, 3, weights="none", **knobs(name)).eval()
    path, export_s = temporary_onnx(model, tuple(image.shape[-2:]))
    try:
        onnx_model = OnnxModel(path, threads=threads)
        parity = check_export(model, onnx_model, [image])

        def eager(dtype=None):
            with torch.inference_mode(), autocast_network(model, dtype):
                model([image])

        calls = {"eager": eager, "onnx": lambda: onnx_model([image])}
        if cpu_has_native_bf16():
            calls["bf16"] = lambda: eager(torch.bfloat16)
        times = interleaved(calls, iters, warmup=1)
    finally:
        path.unlink(missing_ok=True)
    bench = run_bench(model, images=[image], iters=max(3, iters // 2), warmup=1, device="cpu")
    median = lambda xs: sorted(xs)[len(xs) // 2] * 1000  # noqa: E731
    bf16 = "bf16" in times
    return {
        "eager_ms": median(times["eager"]),
        "onnx_ms": median(times["onnx"]),
        "speedup": round_ratio(times, "eager", "onnx"),
        "bf16_ms": median(times["bf16"]) if bf16 else float("nan"),
        "bf16_speedup": round_ratio(times, "eager", "bf16") if bf16 else float("nan"),
        "export_s": export_s,
        "parity": parity["ok"],
        "post_share": bench["eager"]["postprocess_share"],
        "peak_mb": bench["eager"]["peak_mem_mb"],
        "dets": bench["eager"]["detections_per_image"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = load_dataset(str(BCCD), split="val")[0][0]  # [3, 480, 640]
    print(
        f"CPU, {args.threads} threads, 1 BCCD image [3, 480, 640], inner size {SIZE['min_size']}/{SIZE['max_size']} "
        f"(SSD {SIZE['min_size']} square), random-init heads, {args.iters} interleaved rounds"
    )
    print(
        f"{'model':<24} {'eager ms':>9} {'onnx ms':>8} {'onnx speed-up':>14} {'bf16 ms':>8} "
        f"{'bf16 speed-up':>14} {'parity':>7} {'post share':>10} {'peak MiB':>8} {'dets':>5}"
    )
    for name in args.models.split(","):
        r = measure(name, image, args.iters, args.threads)
        print(
            f"{name:<24} {r['eager_ms']:>9.0f} {r['onnx_ms']:>8.0f} {r['speedup']:>13.2f}× "
            f"{r['bf16_ms']:>8.0f} {r['bf16_speedup']:>13.2f}× "
            f"{'ok' if r['parity'] else 'DIFF':>7} {100 * r['post_share']:>9.1f}% {r['peak_mb']:>8.0f} "
            f"{r['dets']:>5.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
