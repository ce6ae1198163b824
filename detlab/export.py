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
of images, which the tracer unrolls. The image height and width are, where the
family allows it: torchvision's families (Faster R-CNN, FCOS, RetinaNet, SSD)
compute their resize, padding and anchor grids from traced shapes, so one graph
takes any ``[3, H, W]`` and gives the eager detections on it. DETR's resize rule
is Python arithmetic on the image size, which the tracer freezes, so DETR exports
a fixed ``H x W``; :class:`OnnxModel` refuses other sizes with one line rather
than letterboxing them (a letterboxed image is resized twice and padded, and its
detections differ from eager ones).

``detlab export`` traces at the run's training size (the ``min_size`` /
``max_size`` that ``detlab train`` chose and saved), writes to a temporary name,
checks ONNX Runtime against eager on images of several sizes and orientations,
and renames only a file that passed; a file that failed is kept as
``model.onnx.failed`` and the command exits 1.

Legend for shape comments: ``K`` detections of one image, ``H``/``W`` image size.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.errors import ConfigError, DetlabError, writing
from detlab.onnx_runtime import META_PREFIX, OnnxModel

#: Tolerances of the eager-vs-ONNX check: boxes in pixels (absolute, or relative
#: to the box coordinate for large images), scores in probability.
BOX_ATOL = 1e-3
BOX_RTOL = 1e-5
SCORE_ATOL = 1e-4


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


# Height and width of the image are free in a dynamic graph, and so is the detection count K.
_DYNAMIC_AXES = {"image": {1: "H", 2: "W"}, "boxes": {0: "K"}, "scores": {0: "K"}, "labels": {0: "K"}}


def _export_legacy(
    wrapper: nn.Module, example: Tensor, path: Path, opset: int, dynamic: bool = False
) -> None:
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
                dynamic_axes=_DYNAMIC_AXES if dynamic else None,
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
    dynamic: bool = False,
) -> Path:
    """Export a contract model to ONNX for one image, of a fixed size or of any size.

    Args:
        model: a detlab model (or any module with the eval-mode contract: ``list[Tensor[3, H, W]]``
            → per-image ``boxes`` xyxy px, ``scores``, ``labels``). Put in eval mode on CPU.
        path: the ``.onnx`` file to write; its folder is created.
        size: ``(H, W)`` of the traced example: the graph's only input size unless ``dynamic``.
        opset: ONNX opset.
        class_names: stored in the file's metadata (default: ``class_<i>``).
        dynamic: make the image's height and width free axes (TorchScript exporter only). A
            family whose code freezes the traced size (DETR) raises here, or traces a graph that
            differs from eager at other sizes, which only a check at other sizes shows.

    Returns:
        The path written. Raises :class:`ExportError` naming the family and the exporters'
        reasons when none can export it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    family = getattr(model, "family", type(model).__name__)
    wrapper = _OneImage(model).eval()
    example = torch.rand(3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(0))
    reasons = []
    exporters = [("torchscript", partial(_export_legacy, dynamic=dynamic))]
    if not dynamic:
        exporters.append(("dynamo", _export_dynamo))
    for exporter, fn in exporters:
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
            f"family '{family}' ({getattr(model, 'name', '?')}) cannot be exported to ONNX"
            + (" with a dynamic input size" if dynamic else "")
            + ": "
            + "; ".join(reasons)
        )
    num_classes = int(getattr(model, "num_classes", 0) or len(class_names or []))
    meta = {
        "name": getattr(model, "name", type(model).__name__),
        "family": family,
        "num_classes": num_classes,
        "input_size": [int(size[0]), int(size[1])],
        "class_names": class_names or [f"class_{i}" for i in range(num_classes)],
        "dynamic": bool(dynamic),
        "exporter": exporter,
    }
    _write_metadata(path, meta)
    return path


def _write_metadata(path: Path, meta: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, json.dumps(value)
    onnx.save(proto, str(path))


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
        images: ``float [3, H, W]`` 0..1 RGB, of any size for a dynamic graph, else of
            ``onnx_model.input_size``.

    Returns:
        ``{"images": n, "detections": total eager, "matched": total, "max_box_diff": px,
        "max_score_diff": p, "ok": bool, "per_image": [compare_detections dicts]}``.
    """
    per_image = []
    model = model.eval()
    for image in images:
        with torch.inference_mode():
            eager = model([image])[0]
        per_image.append(
            {**compare_detections(eager, onnx_model([image])[0]), "size": tuple(image.shape[-2:])}
        )
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


def training_size(model: nn.Module) -> tuple[int, int]:
    """``(H, W)`` = ``(min_size, max_size)`` of the model's own resize: the run's training size.

    ``detlab train`` saves the size it chose (:mod:`detlab.engine.plan`) in ``model_kwargs``, which
    reach the checkpoint's ``build_kwargs`` and so the rebuilt model. An image of this size is one
    the model's resize leaves as it is (a landscape image at the training scale). Falls back to
    :func:`default_size` for a model without ``min_size``/``max_size``.
    """
    for m in model.modules():
        sizes = (getattr(m, "min_size", None), getattr(m, "max_size", None))  # torchvision transform
        if sizes[0] is None:
            knobs = getattr(m, "knobs", None)  # detlab DETR
            sizes = (getattr(knobs, "min_size", None), getattr(knobs, "max_size", None))
        if sizes[0] is not None and sizes[1] is not None:
            short = int(sizes[0][-1] if isinstance(sizes[0], (tuple, list)) else sizes[0])
            return (short, max(short, int(sizes[1])))
    return default_size(model)


def check_variants(images: list[Tensor], size: tuple[int, int], dynamic: bool) -> list[Tensor]:
    """The images a check runs on: for a dynamic graph the given ones at their own sizes plus, from
    the first, a portrait (transposed) and a small (a third of each side) copy and one at ``size``;
    for a fixed graph every image resized to ``size``, the only size the graph takes."""
    if not dynamic:
        return [F.interpolate(im[None], size=size, mode="bilinear", antialias=True)[0] for im in images]
    first = images[0]
    h, w = first.shape[-2:]
    small = F.interpolate(
        first[None], size=(max(32, h // 3), max(32, w // 3)), mode="bilinear", antialias=True
    )
    at_size = F.interpolate(first[None], size=size, mode="bilinear", antialias=True)
    return [*images, first.transpose(1, 2).contiguous(), small[0], at_size[0]]


def _check_line(result: dict, what: str) -> str:
    sizes = sorted({f"{r['size'][0]}x{r['size'][1]}" for r in result["per_image"]})
    return (
        f"{'match' if result['ok'] else 'MISMATCH'} on {result['images']} {what} ({', '.join(sizes)}): "
        f"{result['matched']}/{result['detections']} eager detections matched, max box diff "
        f"{result['max_box_diff']:.2e} px (tol {BOX_ATOL:g} + {BOX_RTOL:g}·|x|), max score diff "
        f"{result['max_score_diff']:.2e} (tol {SCORE_ATOL:g})"
    )


def export_checked(
    model: nn.Module,
    out: Path,
    size: tuple[int, int],
    images: list[Tensor],
    what: str,
    class_names: list[str],
) -> tuple[bool, list[str]]:
    """Export to a temporary name beside ``out``, check it, and rename only a file that matched eager.

    A dynamic-size graph is tried first; a family that cannot trace one, or whose dynamic graph
    misses eager detections, gets a fixed graph at ``size``. When no graph matches, the last one
    is kept as ``<out>.failed`` and ``out`` is not touched.

    Returns:
        ``(ok, lines to print)``.
    """
    tmp = out.with_name(f".{out.name}.partial")
    lines: list[str] = []
    for dynamic in (True, False):
        try:
            start = time.perf_counter()
            export_onnx(model, tmp, size, class_names=class_names, dynamic=dynamic)
        except ExportError as e:
            if not dynamic:
                raise
            lines.append(
                f"note: no dynamic-size graph ({str(e).split(': ', 1)[-1][:160]}); exporting a fixed size"
            )
            continue
        seconds = time.perf_counter() - start
        kind = "any H x W" if dynamic else f"[3, {size[0]}, {size[1]}] only"
        try:
            result = check_export(model, OnnxModel(tmp), check_variants(images, size, dynamic))
            verdict = _check_line(result, what)
        except (DetlabError, OSError):
            raise
        except Exception as e:  # ONNX Runtime rejecting the graph is a failed check, not a crash
            result = {"ok": False, "matched": 0, "detections": "?"}
            verdict = f"MISMATCH: ONNX Runtime cannot run it ({_first_line(e)})"
        lines.append(f"{'dynamic' if dynamic else 'fixed'} graph ({kind}, {seconds:.1f} s): {verdict}")
        if result["ok"]:
            os.replace(tmp, out)
            mib = out.stat().st_size / 2**20
            lines.append(
                f"wrote {out} ({mib:.1f} MiB, {getattr(model, 'family', '?')}, traced at {size[0]}x{size[1]})"
            )
            if not dynamic:
                lines.append(
                    f"note: predict --backend onnx takes {size[0]}x{size[1]} images only; for others "
                    "re-export with --size H,W"
                )
            return True, lines
    failed = out.with_name(out.name + ".failed")
    os.replace(tmp, failed)
    lines.append(
        f"export failed: ONNX Runtime does not match eager ({result['matched']}/{result['detections']} "
        f"detections); no {out.name} written"
        + (" (the existing one is left as it was)" if out.exists() else "")
        + f", the graph is kept as {failed} for inspection"
    )
    return False, lines


def export_command(args) -> int:
    """``detlab export RUN --format onnx [--out F] [--size H,W] [--check DATA]``: write, check, report.

    Exits 0 only when the written file matched eager on every check image (see
    :func:`export_checked`).
    """
    from detlab.predict import Detector

    detector = Detector.from_run(args.run, checkpoint=args.checkpoint, device="cpu")
    model = detector.model.eval()
    config = detector.config
    data = getattr(args, "check", None) or config.get("val") or config.get("data")
    images = check_images(data)[0] if data else []
    what = f"images of {data}"
    size = parse_size(getattr(args, "size", None)) or training_size(model)
    if not images:
        print("note: no dataset to check against (give --check DATA); checking on 2 random images")
        gen = torch.Generator().manual_seed(0)
        images, what = [torch.rand(3, *size, generator=gen) for _ in range(2)], "random images"
    run = Path(args.run)
    out = Path(args.out) if args.out else (run.parent.parent if run.is_file() else run) / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with writing(out, "ONNX model", "no model file was left there"):
            ok, lines = export_checked(model, out, size, images, what, detector.class_names)
    finally:
        out.with_name(f".{out.name}.partial").unlink(missing_ok=True)  # a torn or unchecked file never stays
    print("\n".join(lines))
    return 0 if ok else 1


def temporary_onnx(model: nn.Module, size: tuple[int, int]) -> tuple[Path, float]:
    """Export ``model`` to a fresh temporary file; returns ``(path, seconds)``. The caller deletes it."""
    fd, name = tempfile.mkstemp(prefix="detlab-", suffix=".onnx")
    os.close(fd)
    start = time.perf_counter()
    export_onnx(model, name, size)
    return Path(name), time.perf_counter() - start
