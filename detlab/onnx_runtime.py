"""Run an exported detector with ONNX Runtime under the eager model's call contract.

The runtime half of the ONNX support: ``detlab predict --backend onnx`` and ``detlab bench``
load ``model.onnx`` here; :mod:`detlab.export` writes the file and checks it against eager.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from detlab.errors import ConfigError, DataError

# Metadata keys detlab writes into the ONNX file (name, family, classes, input size, dynamic).
META_PREFIX = "detlab."


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
    model contract of CONTRIBUTING.md. A dynamic graph takes every size; a fixed one takes its
    exported size only and raises :class:`~detlab.errors.DataError` (one line, with the fix) on
    any other, since no resize outside the graph reproduces the eager detections.

    Attributes:
        path: the ``.onnx`` file.
        name, family, num_classes, class_names: from the file's metadata.
        input_size: ``(H, W)`` the graph was traced at (its only size when not :attr:`dynamic`).
        dynamic: whether the graph's height and width are free.
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
        if META_PREFIX + "input_size" not in meta:
            raise DataError(
                f"{self.path}: metadata 'detlab.input_size' missing; not written by detlab export — "
                "re-export it with `detlab export RUN --format onnx`"
            )
        info = {k[len(META_PREFIX) :]: json.loads(v) for k, v in meta.items() if k.startswith(META_PREFIX)}
        self.name, self.family = info.get("name", "?"), info.get("family", "?")
        self.num_classes = int(info.get("num_classes", 0))
        self.class_names = list(info.get("class_names", []))
        self.input_size = tuple(int(v) for v in info["input_size"])
        self.dynamic = bool(info.get("dynamic", False))  # files from before dynamic exports are fixed
        self._input = self.session.get_inputs()[0].name

    def run_one(self, image: Tensor) -> dict[str, Tensor]:
        """Detections for one image ``[3, H, W]`` (any size for a dynamic graph, else :attr:`input_size`)."""
        boxes, scores, labels = self.session.run(
            None, {self._input: image.detach().float().cpu().contiguous().numpy()}
        )
        return {
            "boxes": torch.from_numpy(boxes).float(),
            "scores": torch.from_numpy(scores).float(),
            "labels": torch.from_numpy(labels).long(),
        }

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
            if not self.dynamic and (h, w) != self.input_size:
                H, W = self.input_size
                raise DataError(
                    f"{self.path}: takes images of {H}x{W} px only (family {self.family} exports a fixed "
                    f"size), got {h}x{w} — re-export with `detlab export RUN --size {h},{w}` or use "
                    "--backend torch"
                )
            results.append(self.run_one(image))
        return results

    def __repr__(self) -> str:
        return (
            f"OnnxModel({str(self.path)!r}, name={self.name!r}, family={self.family!r}, "
            f"input_size={self.input_size}, dynamic={self.dynamic})"
        )
