"""``detlab bench`` figures for every family, and detlab's CPU fast path (ONNX Runtime) against eager.

For each model: eager PyTorch (``torch.inference_mode``, the torchvision model
underneath) and ONNX Runtime on the exported graph are called in interleaved
rounds on the same real BCCD image (480x640, the model resizing it internally to
the stated size), and the speed-up is the median of the per-round ratios. The
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
from detlab.export import OnnxModel, check_export, temporary_onnx
from detlab.models.catalogue import build_model

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd" / "BCCD"
MODELS = ["ssdlite_effl0", "fcos_r18_fpn", "faster_rcnn_effl0_fpn", "retinanet_r50_fpn", "detr_r18"]
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

        def eager():
            with torch.inference_mode():
                model([image])

        times = interleaved({"eager": eager, "onnx": lambda: onnx_model([image])}, iters, warmup=1)
    finally:
        path.unlink(missing_ok=True)
    bench = run_bench(model, images=[image], iters=max(3, iters // 2), warmup=1, device="cpu")
    median = lambda xs: sorted(xs)[len(xs) // 2] * 1000  # noqa: E731
    return {"eager_ms": median(times["eager"]), "onnx_ms": median(times["onnx"]),
            "speedup": round_ratio(times, "eager", "onnx"), "export_s": export_s, "parity": parity["ok"],
            "post_share": bench["eager"]["postprocess_share"], "peak_mb": bench["eager"]["peak_mem_mb"],
            "dets": bench["eager"]["detections_per_image"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = load_dataset(str(BCCD), split="val")[0][0]  # [3, 480, 640]
    print(f"CPU, {args.threads} threads, 1 BCCD image [3, 480, 640], inner size {SIZE['min_size']}/{SIZE['max_size']} "
          f"(SSD {SIZE['min_size']} square), random-init heads, {args.iters} interleaved rounds")
    print(f"{'model':<24} {'eager ms':>9} {'onnx ms':>8} {'onnx/eager speed-up':>20} {'parity':>7} "
          f"{'post share':>10} {'peak MiB':>8} {'dets':>5}")
    for name in args.models.split(","):
        r = measure(name, image, args.iters, args.threads)
        print(f"{name:<24} {r['eager_ms']:>9.0f} {r['onnx_ms']:>8.0f} {r['speedup']:>19.2f}× "
              f"{'ok' if r['parity'] else 'DIFF':>7} {100 * r['post_share']:>9.1f}% {r['peak_mb']:>8.0f} "
              f"{r['dets']:>5.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
