"""``detlab bench``: latency, throughput, stage split and peak memory, eager and ONNX Runtime.

One call of :func:`run_bench` times the model's whole eval-mode call
(``model(images)`` under ``torch.inference_mode``) after a warm-up, and reports
the median and the p10/p90 spread of the batch latency, the latency per image
and the throughput. The same timed calls are split into stages by wrapping the
model's own stage functions while they run (nothing is re-implemented):

- ``preprocess``: normalise + resize + pad (torchvision ``GeneralizedRCNNTransform.forward``,
  DETR ``preprocess``);
- ``postprocess``: decode, top-k, NMS and mapping boxes back (``postprocess_detections``
  of FCOS / RetinaNet / SSD / ``RoIHeads``, ``GeneralizedRCNNTransform.postprocess``,
  DETR ``postprocess``);
- ``forward``: everything else in the call — backbone, neck, heads, anchors, and for
  Faster R-CNN the RPN, whose proposal selection (top-k + NMS) is reported on its own
  as ``proposals`` because it is part of the network's forward, not of the output
  post-processing.

Stages nested in an outer stage are not counted twice. On CUDA every stage boundary
is synchronised, in a separate pass, so the plain latency stays asynchronous.

Peak memory: on CPU the process' peak resident set (``VmHWM``) during the timed
calls minus the resident set before them (the peak is reset through
``/proc/self/clear_refs`` where Linux allows; elsewhere ``getrusage`` maxrss, which
only shows growth beyond the process' earlier peak); on CUDA
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor, nn

from detlab.device import pick_device
from detlab.errors import ConfigError
from detlab.models.precision import amp_dtype, autocast_network, dtype_word

# --- memory -----------------------------------------------------------------------


def _rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        return True
    except OSError:
        return False


class _PeakMemory:
    """Peak memory of a code section, in MiB, on CPU (resident set) or CUDA (allocator)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb: float | None = None
        self.how = ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._exact = _reset_peak_rss() and _rss_mb("VmHWM") is not None
            self._base = (
                _rss_mb("VmRSS") if self._exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            )
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            self.how = "cuda max_memory_allocated"
        elif self._exact:
            self.mb, self.how = _rss_mb("VmHWM") - self._base, "peak RSS (VmHWM) over RSS before"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
                1024 if sys.platform != "darwin" else 2**20
            )
            self.mb, self.how = peak - self._base, "getrusage maxrss growth"
        return False


# --- stages -----------------------------------------------------------------------


class StageClock:
    """Adds up wall time per stage; a stage entered inside another is not counted again."""

    def __init__(self, sync=None):
        self.sync = sync or (lambda: None)
        self.times: dict[str, float] = defaultdict(float)
        self._active = 0

    def wrap(self, fn, stage: str):
        def timed(*args, **kwargs):
            if self._active:
                return fn(*args, **kwargs)
            self._active += 1
            self.sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.times[stage] += time.perf_counter() - start
                self._active -= 1

        return timed

    def reset(self) -> None:
        self.times.clear()


def stage_probes(model: nn.Module) -> list[tuple[object, str, str]]:
    """``(object, method name, stage)`` for every stage function the model's forward calls."""
    from torchvision.models.detection.rpn import RegionProposalNetwork
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    probes = []
    for m in model.modules():
        if isinstance(m, GeneralizedRCNNTransform):
            probes += [(m, "forward", "preprocess"), (m, "postprocess", "postprocess")]
        elif isinstance(m, RegionProposalNetwork):
            probes.append((m, "filter_proposals", "proposals"))
        elif callable(getattr(m, "postprocess_detections", None)):
            probes.append((m, "postprocess_detections", "postprocess"))
        elif getattr(m, "family", None) == "detr":
            probes += [(m, "preprocess", "preprocess"), (m, "postprocess", "postprocess")]
    return probes


@contextlib.contextmanager
def instrument(model: nn.Module, clock: StageClock):
    """Route the model's stage functions through ``clock`` while inside the block."""
    probes = stage_probes(model)
    for obj, name, stage in probes:
        setattr(obj, name, clock.wrap(getattr(obj, name), stage))  # instance attribute shadows the method
    try:
        yield bool(probes)
    finally:
        for obj, name, _ in probes:
            delattr(obj, name)


# --- timing -----------------------------------------------------------------------


def spread(seconds: list[float]) -> dict[str, float]:
    """Median, p10 and p90 of a list of durations, in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    if len(ms) == 1:
        return {"median": ms[0], "p10": ms[0], "p90": ms[0]}
    q = statistics.quantiles(ms, n=10, method="inclusive")
    return {"median": statistics.median(ms), "p10": q[0], "p90": q[-1]}


def _sync_fn(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_calls(fn, iters: int, warmup: int, sync=None, clock: StageClock | None = None) -> dict:
    """Call ``fn()`` ``warmup`` times untimed, then ``iters`` times timed.

    Returns:
        ``{"total": [s per call], "<stage>": [s per call]…, "out": last output}``.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        out = fn()
    sync()
    record: dict[str, list[float]] = defaultdict(list)
    for _ in range(iters):
        if clock is not None:
            clock.reset()
        start = time.perf_counter()
        out = fn()
        sync()
        record["total"].append(time.perf_counter() - start)
        for stage, seconds in clock.times.items() if clock is not None else ():
            record[stage].append(seconds)
    record["out"] = out
    return record


def _stage_summary(rec: dict) -> dict:
    """Per-stage spreads from one instrumented pass; ``forward`` = total − preprocess − postprocess."""
    n = len(rec["total"])
    pre = rec.get("preprocess", [0.0] * n)
    post = rec.get("postprocess", [0.0] * n)
    forward = [t - a - b for t, a, b in zip(rec["total"], pre, post)]
    stages = {
        "total": spread(rec["total"]),
        "preprocess": spread(pre),
        "forward": spread(forward),
        "postprocess": spread(post),
    }
    if "proposals" in rec:
        stages["proposals"] = spread(rec["proposals"])
    share = statistics.median(b / t for b, t in zip(post, rec["total"]))
    return {"stages_ms": stages, "postprocess_share": share}


def _summary(rec: dict, batch: int) -> dict:
    latency = spread(rec["total"])
    out = rec["out"]
    return {
        "latency_ms": latency,
        "per_image_ms": latency["median"] / batch,
        "throughput_ips": batch * 1000.0 / latency["median"],
        "detections_per_image": sum(len(d["boxes"]) for d in out) / max(1, len(out)),
    }


def bench_eager(
    model: nn.Module,
    images: list[Tensor],
    iters: int,
    warmup: int,
    device: torch.device,
    precision: str = "fp32",
) -> dict:
    """Time ``model(images)`` (eval, ``inference_mode``; the network at ``precision``, decoding in
    float32 — :mod:`detlab.models.precision`) and its stages."""
    model = model.to(device).eval()
    images = [im.to(device) for im in images]
    cuda = device.type == "cuda"
    sync = _sync_fn(device)
    dtype = amp_dtype(precision, device)

    def call():
        with torch.inference_mode(), autocast_network(model, dtype, device.type):
            return model(images)

    clock = StageClock(sync)
    with _PeakMemory(device) as mem:
        if cuda:  # stage syncs would serialise CUDA work: time plainly here, stages in a second pass
            rec = time_calls(call, iters, warmup, sync)
        else:  # on CPU the stage clock costs microseconds: one pass gives both
            with instrument(model, clock) as staged:
                rec = time_calls(call, iters, warmup, sync, clock)
    if cuda:
        with instrument(model, clock) as staged:
            stage_rec = time_calls(call, iters, 1, sync, clock)
    else:
        stage_rec = rec
    result = _summary(rec, len(images))
    result.update(_stage_summary(stage_rec) if staged else {"stages_ms": None, "postprocess_share": None})
    result.update({"peak_mem_mb": mem.mb, "memory": mem.how})
    return result


def bench_onnx(model: nn.Module, images: list[Tensor], iters: int, warmup: int, threads: int | None) -> dict:
    """Export ``model`` to a temporary ONNX file at the images' size and time ONNX Runtime on CPU."""
    from detlab.export import temporary_onnx
    from detlab.onnx_runtime import OnnxModel

    images = [im.cpu() for im in images]
    path, export_s = temporary_onnx(model.cpu().eval(), tuple(images[0].shape[-2:]))
    try:
        onnx_model = OnnxModel(path, threads=threads)
        with _PeakMemory(torch.device("cpu")) as mem:
            rec = time_calls(lambda: onnx_model(images), iters, warmup)
    finally:
        path.unlink(missing_ok=True)
    result = _summary(rec, len(images))
    result.update({"export_s": export_s, "peak_mem_mb": mem.mb, "memory": mem.how})
    return result


def bench_images(size: tuple[int, int], batch: int, images: list[Tensor] | None = None) -> list[Tensor]:
    """``batch`` input images: the given ones cycled, else seeded uniform noise ``[3, H, W]``."""
    if images:
        return [images[i % len(images)] for i in range(batch)]
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(3, size[0], size[1], generator=gen) for _ in range(batch)]


def run_bench(
    model: nn.Module,
    size: int | tuple[int, int] | None = None,
    batch: int = 1,
    threads: int | None = None,
    iters: int = 20,
    warmup: int = 3,
    device: str | None = None,
    precision: str = "fp32",
    onnx: bool = False,
    images: list[Tensor] | None = None,
) -> dict:
    """Benchmark one model, eager and (with ``onnx``) ONNX Runtime.

    Args:
        model: a contract model (``list[Tensor[3, H, W]]`` → per-image detections).
        size: input side ``S`` or ``(H, W)`` (default: the model's own shorter side, see
            :func:`detlab.export.default_size`); ignored when ``images`` are given.
        batch: images per call.
        threads: torch / ONNX Runtime intra-op threads (default: torch's current setting).
        iters, warmup: timed and untimed calls.
        device: ``cpu`` | ``cuda`` (default: CUDA when available).
        precision: the network's precision (a :data:`detlab.config.PRECISIONS` word; bf16 on
            CPU needs native bf16); decoding, NMS and boxes stay float32.
        onnx: also export to a temporary file and time ONNX Runtime (CPU).
        images: real ``float [3, H, W]`` images to run instead of noise (cycled to ``batch``).

    Returns:
        ``{"model", "family", "device", "threads", "size": [H, W], "batch", "iters", "warmup",
        "eager": {...}, "onnx": {...} | None, "onnx_speedup": eager/onnx median | None}``; each backend
        has ``latency_ms`` (``median``, ``p10``, ``p90`` per call), ``per_image_ms``,
        ``throughput_ips``, ``detections_per_image``, ``peak_mem_mb``; eager adds ``stages_ms``
        (``total``, ``preprocess``, ``forward``, ``postprocess`` [, ``proposals``]) and
        ``postprocess_share`` (median postprocess / total).
    """
    from detlab.export import default_size

    if iters < 1 or batch < 1 or warmup < 0:
        raise ConfigError(f"bench: iters ({iters}) and batch ({batch}) must be ≥ 1 and warmup ({warmup}) ≥ 0")
    dev = pick_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine; use --device cpu")
    size = (size, size) if isinstance(size, int) else (tuple(size) if size else default_size(model))
    inputs = bench_images(size, batch, images)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        eager = bench_eager(model, inputs, iters, warmup, dev, precision)
        result_onnx = bench_onnx(model, inputs, iters, warmup, threads) if onnx else None
    finally:
        torch.set_num_threads(old_threads)
    return {
        "model": getattr(model, "name", type(model).__name__),
        "family": getattr(model, "family", "?"),
        "device": dev.type,
        "threads": int(threads or old_threads),
        "precision": dtype_word(amp_dtype(precision, dev)),  # what ran, after auto
        "size": list(inputs[0].shape[-2:]),
        "batch": batch,
        "iters": iters,
        "warmup": warmup,
        "eager": eager,
        "onnx": result_onnx,
        "onnx_speedup": eager["latency_ms"]["median"] / result_onnx["latency_ms"]["median"] if onnx else None,
    }


# --- detlab bench -----------------------------------------------------------------


def load_bench_model(spec: str, num_classes: int = 20, checkpoint: str = "best") -> nn.Module:
    """A catalogue name (random init, no download) or a run folder / checkpoint (its trained weights)."""
    if Path(spec).exists():
        from detlab.predict import Detector

        return Detector.from_run(spec, checkpoint=checkpoint, device="cpu").model
    from detlab.models.catalogue import build_model

    return build_model(spec, num_classes, weights="none")


def format_report(result: dict) -> str:
    """The human-readable table ``detlab bench`` prints."""
    lines = [
        f"{result['model']} ({result['family']}): batch {result['batch']} × [3, {result['size'][0]}, "
        f"{result['size'][1]}], {result['device']} {result['precision']}, {result['threads']} threads, "
        f"{result['iters']} timed calls after {result['warmup']} warm-up",
        f"{'backend':<8} {'ms/img':>8} {'p10–p90 ms/call':>17} {'img/s':>7} {'peak MiB':>9} {'dets/img':>8}",
    ]
    for name in ("eager", "onnx"):
        r = result.get(name)
        if r:
            lat = r["latency_ms"]
            mem = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "?"
            lines.append(
                f"{name:<8} {r['per_image_ms']:>8.1f} {lat['p10']:>8.1f}–{lat['p90']:<8.1f} "
                f"{r['throughput_ips']:>7.2f} {mem:>9} {r['detections_per_image']:>8.1f}"
            )
    stages = result["eager"]["stages_ms"]
    if stages:
        parts = ", ".join(f"{k} {v['median']:.1f}" for k, v in stages.items() if k != "total")
        lines.append(
            f"eager stages, median ms/call: {parts}; postprocess share "
            f"{100 * result['eager']['postprocess_share']:.1f}%"
        )
    if result.get("onnx_speedup"):
        lines.append(
            f"onnx vs eager: {result['onnx_speedup']:.2f}× (export {result['onnx']['export_s']:.1f} s)"
        )
    return "\n".join(lines)


def _bench_precision(args) -> str:
    """``--precision``; the older ``--amp`` asked for the device's half precision (bf16 on CPU, fp16 on CUDA)."""
    if not getattr(args, "amp", False):
        return getattr(args, "precision", "fp32")
    return "fp16" if pick_device(args.device).type == "cuda" else "bf16"


def bench_command(args) -> int:
    """``detlab bench --model NAME|RUN [--size S] [--batch B] [--threads T] [--iters N] [--device D] [--precision P] [--onnx]``."""
    from detlab.export import check_images, parse_size

    model = load_bench_model(
        args.model, getattr(args, "num_classes", 20), getattr(args, "checkpoint", "best")
    )
    data = getattr(args, "data", None)
    images, what = check_images(data, count=max(args.batch, 4)) if data else (None, "")
    result = run_bench(
        model,
        size=parse_size(args.size),
        batch=args.batch,
        threads=args.threads,
        iters=args.iters,
        warmup=getattr(args, "warmup", 3),
        device=args.device,
        precision=_bench_precision(args),
        onnx=args.onnx,
        images=images,
    )
    if data:
        print(f"inputs: {what}, cycled")
    print(format_report(result))
    return 0


def interleaved(calls: dict, iters: int, warmup: int = 1, sync=None) -> dict[str, list[float]]:
    """Time several zero-argument callables in alternating rounds (forward, then reversed order).

    On a shared or throttling machine the load drifts; interleaving makes every round compare
    the callables under the same load, so per-round ratios stay meaningful.

    Returns:
        ``{name: [seconds per round]}``.
    """
    sync = sync or (lambda: None)
    items = list(calls.items())
    for _ in range(warmup):
        for _, fn in items:
            fn()
    times: dict[str, list[float]] = {name: [] for name, _ in items}
    for i in range(iters):
        for name, fn in items if i % 2 == 0 else items[::-1]:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def round_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``times[num][i] / times[den][i]`` (see :func:`interleaved`)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))
