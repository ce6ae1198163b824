"""ONNX export of detlab models, ONNX Runtime inference, and the eager-parity check.

``detlab export RUN --format onnx`` writes one ``.onnx`` file holding the whole
eager pipeline of the model — its own normalise/resize, backbone, heads, box
decoding, top-k and NMS — traced for one image of a fixed size ``[3, H, W]``.
:class:`OnnxModel` runs that file with ONNX Runtime under the same call contract
as the eager model, so ``detlab predict --backend onnx`` and ``detlab bench
--onnx`` can swap one for the other.

Which families export (torch 2.14, opset 18, the TorchScript-based exporter
``torch.onnx.export(..., dynamo=False)``; the dynamo exporter is tried second and
needs the ``onnxscript`` package):

====================  =======  ================================================
family                exports  input
====================  =======  ================================================
``faster_rcnn``       yes      one image, fixed ``H x W``
``fcos``              yes      one image, fixed ``H x W``
``retinanet``         yes      one image, fixed ``H x W``
``ssd``               yes      one image, fixed ``H x W``
``detr``              yes      one image, fixed ``H x W`` (its antialiased resize
                               becomes opset-18 ``Resize`` with ``antialias=1``)
====================  =======  ================================================

The batch is not a dynamic axis for any family: every model takes a Python list
of images, which the tracer unrolls, and the anchor grids are computed from the
traced shape. :class:`OnnxModel` therefore runs images one at a time, and an
image of another size is letterboxed into the exported size (scaled to fit,
aspect kept, padded bottom/right with the model's normalisation mean so the pad
is zero after normalisation), and its boxes are mapped back. Images of exactly
the exported size go through untouched: their detections match eager ones
within the tolerances of :func:`compare_detections`.

Legend for shape comments: ``K`` detections of one image, ``H``/``W`` image size.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.errors import ConfigError, DataError, DetlabError, OutputError, writing

#: Tolerances of the eager-vs-ONNX check: boxes in pixels (absolute, or relative
#: to the box coordinate for large images), scores in probability.
BOX_ATOL = 1e-3
BOX_RTOL = 1e-5
SCORE_ATOL = 1e-4

_META_PREFIX = "detlab."


class ExportError(DetlabError):
    """A model family or configuration that cannot be exported to ONNX."""


class _OneImage(nn.Module):
    """``image [3, H, W] → (boxes [K, 4], scores [K], labels [K])`` around a contract model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        det = self.model([image])[0]
        return det["boxes"], det["scores"], det["labels"]


def pad_value(model: nn.Module) -> list[float]:
    """The per-channel value (0..1 RGB) that the model's normalisation maps to zero.

    Letterbox padding with it reproduces the zero padding the model applies to a
    batch after normalising. ``[0, 0, 0]`` when the model declares no mean.
    """
    for m in model.modules():
        mean = getattr(m, "image_mean", None)  # torchvision GeneralizedRCNNTransform
        if mean is None:
            mean = getattr(m, "pixel_mean", None)  # detlab DETR buffer
        if mean is not None:
            return [float(v) for v in torch.as_tensor(mean).flatten()[:3]]
    return [0.0, 0.0, 0.0]


def _bilinear_antialias(g, image, output_size, align_corners, scale_factors):
    """ONNX ``Resize`` for ``aten::_upsample_bilinear2d_aa`` (DETR's antialiased downscale).

    The TorchScript exporter has no symbolic for it; opset 18's ``Resize`` has ``antialias``,
    and with ``exclude_outside=1`` (weights renormalised at the border, as PyTorch does) ONNX
    Runtime matches PyTorch to float rounding.
    """
    from torch.onnx._internal.torchscript_exporter import symbolic_helper as sh

    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    mode = "align_corners" if sh._maybe_get_const(align_corners, "b") else "half_pixel"
    if sh._is_none(output_size):
        scales = [1.0, 1.0] + list(sh._maybe_get_const(scale_factors, "fs"))
        return g.op(
            "Resize",
            image,
            empty,
            g.op("Constant", value_t=torch.tensor(scales)),
            mode_s="linear",
            antialias_i=1,
            exclude_outside_i=1,
            coordinate_transformation_mode_s=mode,
        )
    batch_channels = g.op(
        "Slice",
        g.op("Shape", image),
        g.op("Constant", value_t=torch.tensor([0])),
        g.op("Constant", value_t=torch.tensor([2])),
    )
    size = g.op(
        "Constant", value_t=torch.tensor(list(sh._maybe_get_const(output_size, "is")), dtype=torch.int64)
    )
    sizes = g.op("Concat", batch_channels, size, axis_i=0)
    return g.op(
        "Resize",
        image,
        empty,
        empty,
        sizes,
        mode_s="linear",
        antialias_i=1,
        exclude_outside_i=1,
        coordinate_transformation_mode_s=mode,
    )


def _export_legacy(wrapper: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    op = "aten::_upsample_bilinear2d_aa"
    torch.onnx.register_custom_op_symbolic(op, _bilinear_antialias, 18)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about constants: expected for a fixed-size graph
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=["boxes", "scores", "labels"],
            )
    finally:
        torch.onnx.unregister_custom_op_symbolic(op, 18)


def _export_dynamo(wrapper: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    import onnxscript  # noqa: F401  (the dynamo exporter needs it; import first for a clear reason)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=["boxes", "scores", "labels"],
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int],
    opset: int = 18,
    class_names: list[str] | None = None,
) -> Path:
    """Export a contract model to ONNX for one image of a fixed size.

    Args:
        model: a detlab model (or any module with the eval-mode contract: ``list[Tensor[3, H, W]]``
            → per-image ``boxes`` xyxy px, ``scores``, ``labels``). Put in eval mode on CPU.
        path: the ``.onnx`` file to write; its folder is created.
        size: ``(H, W)`` of the exported input.
        opset: ONNX opset.
        class_names: stored in the file's metadata (default: ``class_<i>``).

    Returns:
        The path written. Raises :class:`ExportError` naming the family and both exporters'
        reasons when neither can export it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    family = getattr(model, "family", type(model).__name__)
    wrapper = _OneImage(model).eval()
    example = torch.rand(3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(0))
    reasons = []
    for exporter, fn in (("torchscript", _export_legacy), ("dynamo", _export_dynamo)):
        try:
            with torch.no_grad():
                fn(wrapper, example, path, opset)
            break
        except OSError:  # a full disk or read-only folder is the same for both exporters: the caller says so
            raise
        except Exception as e:  # exporters raise many types; one line per exporter goes to the user
            reasons.append(f"{exporter} exporter: {_first_line(e)}")
    else:
        raise ExportError(
            f"family '{family}' ({getattr(model, 'name', '?')}) cannot be exported to ONNX: "
            + "; ".join(reasons)
        )
    num_classes = int(getattr(model, "num_classes", 0) or len(class_names or []))
    meta = {
        "name": getattr(model, "name", type(model).__name__),
        "family": family,
        "num_classes": num_classes,
        "input_size": [int(size[0]), int(size[1])],
        "class_names": class_names or [f"class_{i}" for i in range(num_classes)],
        "pad_value": pad_value(model),
        "exporter": exporter,
    }
    _write_metadata(path, meta)
    return path


def _write_metadata(path: Path, meta: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = _META_PREFIX + key, json.dumps(value)
    onnx.save(proto, str(path))


def ort_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session with all graph optimisations, ``threads`` intra-op threads.

    Raises ConfigError with the install fix when onnxruntime is missing.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(
            "onnxruntime is not installed; install the extra: pip install 'detlab[onnx]'"
        ) from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initialisers are noise to users
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


class OnnxModel:
    """An exported detector run by ONNX Runtime, called like the eager model in eval mode.

    ``OnnxModel(path)(images)`` takes ``images``: ``list[Tensor[3, H_i, W_i]]`` float in 0..1 RGB,
    any sizes, and returns one dict per image: ``boxes`` float32 ``[K, 4]`` xyxy in that
    image's pixels, ``scores`` float32 ``[K]``, ``labels`` int64 ``[K]`` in ``0..C-1`` — the
    model contract of CONTRIBUTING.md. Images of the exported size run untouched; others are
    letterboxed into it, their boxes mapped back and clipped to the image, and detections lying
    wholly in the pad dropped (see the module docstring).

    Attributes:
        path: the ``.onnx`` file.
        name, family, num_classes, class_names: from the file's metadata.
        input_size: ``(H, W)`` the graph was exported for.
        session: the ``onnxruntime.InferenceSession``.

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx`.
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
        providers: ONNX Runtime execution providers (default: CPU).
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(
                f"{self.path}: ONNX file not found; write one with `detlab export RUN --format onnx`"
            )
        self.session = ort_session(self.path, threads, providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if _META_PREFIX + "input_size" not in meta:
            raise DataError(
                f"{self.path}: metadata 'detlab.input_size' missing; not written by detlab export — "
                "re-export it with `detlab export RUN --format onnx`"
            )
        info = {k[len(_META_PREFIX) :]: json.loads(v) for k, v in meta.items() if k.startswith(_META_PREFIX)}
        self.name, self.family = info.get("name", "?"), info.get("family", "?")
        self.num_classes = int(info.get("num_classes", 0))
        self.class_names = list(info.get("class_names", []))
        self.input_size = tuple(int(v) for v in info["input_size"])
        self._pad = torch.tensor(info.get("pad_value", [0.0, 0.0, 0.0]), dtype=torch.float32).view(3, 1, 1)
        self._input = self.session.get_inputs()[0].name

    def run_one(self, image: Tensor) -> dict[str, Tensor]:
        """Detections for one image ``[3, H, W]`` of exactly :attr:`input_size` (no letterbox)."""
        boxes, scores, labels = self.session.run(
            None, {self._input: image.detach().float().cpu().contiguous().numpy()}
        )
        return {
            "boxes": torch.from_numpy(boxes).float(),
            "scores": torch.from_numpy(scores).float(),
            "labels": torch.from_numpy(labels).long(),
        }

    def letterbox(self, image: Tensor) -> tuple[Tensor, float]:
        """``image [3, h, w]`` → ``([3, H, W]`` at :attr:`input_size`, scale applied).

        Scaled to fit with the aspect kept; the bottom/right pad is the model's mean colour.
        """
        H, W = self.input_size
        h, w = image.shape[-2:]
        scale = min(H / h, W / w)
        nh, nw = min(H, round(h * scale)), min(W, round(w * scale))
        resized = F.interpolate(
            image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1
        )[0]
        canvas = self._pad.expand(3, H, W).clone()
        canvas[:, :nh, :nw] = resized
        return canvas, scale

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        if isinstance(images, Tensor) and images.dim() == 3:
            images = [images]
        results = []
        for image in images:
            if image.dim() != 3 or image.shape[0] != 3:
                raise DataError(
                    f"{self.path}: input image shape {tuple(image.shape)}; expected [3, H, W] RGB in 0..1"
                )
            h, w = image.shape[-2:]
            if (h, w) == self.input_size:
                results.append(self.run_one(image))
                continue
            canvas, scale = self.letterbox(image)
            det = self.run_one(canvas)
            boxes = det["boxes"] / scale  # [K, 4] back to the input image's pixels
            keep = (boxes[:, 0] < w) & (boxes[:, 1] < h)  # drop boxes lying wholly in the pad
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            results.append(
                {"boxes": boxes[keep], "scores": det["scores"][keep], "labels": det["labels"][keep]}
            )
        return results

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, name={self.name!r}, family={self.family!r}, input_size={self.input_size})"


# --- the eager-parity check -------------------------------------------------------


def compare_detections(
    eager: dict[str, Tensor],
    onnx: dict[str, Tensor],
    box_atol: float = BOX_ATOL,
    box_rtol: float = BOX_RTOL,
    score_atol: float = SCORE_ATOL,
) -> dict:
    """Match one image's eager and ONNX detections one-to-one.

    Two detections match when their labels are equal, every box coordinate (xyxy px) differs
    by at most ``box_atol + box_rtol * |coordinate|`` and the scores by at most ``score_atol``.
    Matching is greedy in descending eager score, so tied scores in another order still match.

    Args:
        eager, onnx: ``boxes [K, 4]`` xyxy px, ``scores [K]``, ``labels [K]``.

    Returns:
        ``{"eager": K_e, "onnx": K_o, "matched": M, "max_box_diff": px, "max_score_diff": p,
        "labels_equal": bool, "ok": bool}``; ``ok`` when every detection of both sides matched.
        The diffs are over matched pairs (0 when there are none).
    """
    eb, es, el = (eager[k].detach().float().cpu() for k in ("boxes", "scores", "labels"))
    ob, os_, ol = (onnx[k].detach().float().cpu() for k in ("boxes", "scores", "labels"))
    box_diff = (eb[:, None, :] - ob[None, :, :]).abs()  # [K_e, K_o, 4]
    box_ok = (box_diff <= box_atol + box_rtol * eb.abs()[:, None, :]).all(-1)  # [K_e, K_o]
    score_diff = (es[:, None] - os_[None, :]).abs()  # [K_e, K_o]
    candidate = box_ok & (score_diff <= score_atol) & (el[:, None] == ol[None, :])
    cost = box_diff.amax(-1) + score_diff  # [K_e, K_o]
    taken = torch.zeros(len(ob), dtype=torch.bool)
    max_box, max_score, matched = 0.0, 0.0, 0
    for i in es.argsort(descending=True).tolist():
        free = candidate[i] & ~taken
        if not free.any():
            continue
        j = int(torch.where(free, cost[i], torch.inf).argmin())
        taken[j] = True
        matched += 1
        max_box = max(max_box, float(box_diff[i, j].max()))
        max_score = max(max_score, float(score_diff[i, j]))
    return {
        "eager": len(eb),
        "onnx": len(ob),
        "matched": matched,
        "max_box_diff": max_box,
        "max_score_diff": max_score,
        "ok": matched == len(eb) == len(ob),
    }


def check_export(model: nn.Module, onnx_model: OnnxModel, images: list[Tensor]) -> dict:
    """Run eager and ONNX Runtime on the same images and compare with :func:`compare_detections`.

    Args:
        model: the eager model (eval mode, CPU).
        onnx_model: the exported file, loaded.
        images: ``float [3, H, W]`` 0..1 RGB; sizes equal to ``onnx_model.input_size`` are compared
            exactly, others go through the letterbox (expect small differences there).

    Returns:
        ``{"images": n, "detections": total eager, "matched": total, "max_box_diff": px,
        "max_score_diff": p, "ok": bool, "per_image": [compare_detections dicts]}``.
    """
    per_image = []
    model = model.eval()
    for image in images:
        with torch.inference_mode():
            eager = model([image])[0]
        per_image.append(compare_detections(eager, onnx_model([image])[0]))
    return {
        "images": len(per_image),
        "detections": sum(r["eager"] for r in per_image),
        "matched": sum(r["matched"] for r in per_image),
        "max_box_diff": max((r["max_box_diff"] for r in per_image), default=0.0),
        "max_score_diff": max((r["max_score_diff"] for r in per_image), default=0.0),
        "ok": all(r["ok"] for r in per_image),
        "per_image": per_image,
    }


# --- detlab export ----------------------------------------------------------------


def parse_size(text: str | int | None) -> tuple[int, int] | None:
    """``"480,640"`` / ``"480x640"`` → ``(480, 640)`` (H, W); ``"512"`` → ``(512, 512)``; None → None."""
    if text is None:
        return None
    parts = str(text).lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 32:
        raise ConfigError(f"--size {text!r}: expected S or H,W in pixels (each ≥ 32), e.g. --size 480,640")
    return (values[0], values[-1])


def default_size(model: nn.Module) -> tuple[int, int]:
    """A square export size from the model's own resize rule (its shorter side), else 512."""
    for m in model.modules():
        min_size = getattr(m, "min_size", None)  # torchvision GeneralizedRCNNTransform: a tuple
        if min_size is None:
            min_size = getattr(getattr(m, "knobs", None), "min_size", None)  # detlab DETR
        if min_size is not None:
            side = int(min_size[-1] if isinstance(min_size, (tuple, list)) else min_size)
            return (side, side)
    return (512, 512)


def check_images(data: str | None, count: int = 4) -> tuple[list[Tensor], str]:
    """Up to ``count`` images of a dataset (``DATA`` or ``DATA:split``) and a description of them."""
    if not data:
        return [], "no data"
    from detlab.data.dataset import load_dataset

    dataset = load_dataset(data)
    picks = range(min(count, len(dataset)))
    return [dataset[i][0] for i in picks], f"{len(picks)} images of {data}"


def export_command(args) -> int:
    """``detlab export RUN --format onnx [--out F] [--size H,W] [--check DATA]``: write, check, report."""
    from detlab.predict import Detector

    detector = Detector.from_run(args.run, checkpoint=args.checkpoint, device="cpu")
    model = detector.model.eval()
    config = detector.config
    data = getattr(args, "check", None) or config.get("val") or config.get("data")
    images, what = check_images(data) if data else ([], "no data")
    size = parse_size(getattr(args, "size", None)) or (
        tuple(images[0].shape[-2:]) if images else default_size(model)
    )
    run = Path(args.run)
    out = Path(args.out) if args.out else (run.parent.parent if run.is_file() else run) / "model.onnx"
    start = time.perf_counter()
    try:
        with writing(out, "ONNX model", "no model file was left there"):
            export_onnx(model, out, size, class_names=detector.class_names)
    except OutputError:
        with contextlib.suppress(OSError):
            out.unlink(missing_ok=True)  # a torn file would load as a broken model in predict --backend onnx
        raise
    print(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {getattr(model, 'family', '?')}, "
        f"input [3, {size[0]}, {size[1]}], {time.perf_counter() - start:.1f} s)"
    )
    if not images:
        print("note: no dataset to check against (give --check DATA); checking on 2 random images")
        gen = torch.Generator().manual_seed(0)
        images, what = [torch.rand(3, *size, generator=gen) for _ in range(2)], "2 random images"
    result = check_export(model, OnnxModel(out), images)
    verdict = "match" if result["ok"] else "MISMATCH"
    print(
        f"check on {what}: {verdict} — {result['matched']}/{result['detections']} eager detections matched, "
        f"max box diff {result['max_box_diff']:.2e} px (tol {BOX_ATOL:g} + {BOX_RTOL:g}·|x|), "
        f"max score diff {result['max_score_diff']:.2e} (tol {SCORE_ATOL:g})"
    )
    return 0 if result["ok"] else 1


def temporary_onnx(model: nn.Module, size: tuple[int, int]) -> tuple[Path, float]:
    """Export ``model`` to a fresh temporary file; returns ``(path, seconds)``. The caller deletes it."""
    fd, name = tempfile.mkstemp(prefix="detlab-", suffix=".onnx")
    os.close(fd)
    start = time.perf_counter()
    export_onnx(model, name, size)
    return Path(name), time.perf_counter() - start
