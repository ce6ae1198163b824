"""Run a trained detector on images: the ``Detector`` API and ``detlab predict``.

``Detector.from_run`` rebuilds the model from a run's checkpoint through the
catalogue (``build_model(model_name, num_classes, **build_kwargs)``), so a
checkpoint is all it needs; ``Detector.predict`` turns image files, folders and
globs into detections in the data contract's output frame: ``boxes`` xyxy in
absolute pixels of the ORIGINAL image (EXIF orientation applied), ``scores``,
``labels`` in ``0..C-1`` and their class ``names``.

Legend for shape comments: ``K`` detections of one image, ``C`` classes.
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detlab.data.formats.images import IMAGE_EXTS, list_images
from detlab.data.records import Problem
from detlab.data.results import THRESHOLDED_SCORE, coco_category_ids
from detlab.device import pick_device
from detlab.errors import ConfigError, DataError, writing
from detlab.log import logger
from detlab.models.precision import amp_dtype, autocast_network, dtype_word
from detlab.runfolder import find_checkpoint, load_model_checkpoint

DRAW_SCORE = 0.5  # default --score: what is drawn, and written when no --data asks for results to score


# --- sources ------------------------------------------------------------------


def expand_sources(sources: Iterable[str | Path]) -> list[Path]:
    """Image files, folders (their images, sorted, not recursive) and globs → image paths.

    Args:
        sources: paths to image files, folders of images, or glob patterns
            (``photos/*.jpg``, ``shots/**/*.png``).

    Returns:
        Paths in the order given, each folder's and glob's matches sorted;
        duplicates dropped.

    Raises:
        DataError: a source that is not a file, not a folder and matches nothing.
    """
    files: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            found, left_out = list_images(path)
            for problem in left_out:
                logger.info(problem.line())
            if not found:
                raise DataError(
                    f"{path}: folder holds no images ({', '.join(IMAGE_EXTS)}) — point at a folder of images"
                )
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(str(src), recursive=True) if Path(p).is_file())
            if not found:
                raise DataError(
                    f"{src}: no such file or folder, and no file matches it as a glob — check the path"
                )
        files.extend(found)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def read_image(path: Path) -> torch.Tensor:
    """Load an image the way the data layer does: EXIF orientation applied, RGB, ``float32 [3, H, W]`` in 0..1."""
    from detlab.data.dataset import read_image as decode

    return decode(path)[0]


# --- the API ------------------------------------------------------------------


class Detector:
    """A trained model plus its class map, ready to run on image files.

    Attributes:
        model: the detector in eval mode (an ``nn.Module`` following the model
            contract, or any callable with the same eval-mode interface, such as
            an ONNX Runtime wrapper).
        class_names: ``C`` class names; label ``i`` is ``class_names[i]``.
        source_ids: ``C`` ids the training data used for each class (COCO
            category id, YOLO index or VOC name).
        category_ids: ``C`` integer COCO ``category_id`` written for each class
            (see :func:`~detlab.data.results.coco_category_ids`; ``detlab predict --data`` sets
            them from that dataset).
        config: the run's resolved config (plain dict).
        model_name: catalogue name.
        device: where images are sent before the model runs.
        precision: a :data:`detlab.config.PRECISIONS` word (``fp32``, ``bf16``, ``fp16``,
            ``auto``): the network's precision, decoding in float32 (:mod:`detlab.models.precision`).
        skipped: problems for images that could not be read by the last
            :meth:`predict` call (counted, reported, never silently dropped).
    """

    def __init__(
        self,
        model: Any,
        class_names: Sequence[str],
        source_ids: Sequence | None = None,
        config: dict | None = None,
        model_name: str = "",
        device: str | torch.device | None = None,
        source_format: str | None = None,
        precision: str = "fp32",
    ):
        self.device = pick_device(device)
        self.amp_dtype = amp_dtype(precision, self.device)
        self.precision = dtype_word(self.amp_dtype)  # what runs, after auto
        if self.amp_dtype is not None and not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"precision {precision}: only the torch backend runs mixed precision — use fp32"
            )
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        self.model = model
        self.class_names = list(class_names)
        self.source_ids = list(source_ids) if source_ids is not None else list(self.class_names)
        self.category_ids = coco_category_ids(self.source_ids, source_format)
        self.config = dict(config or {})
        self.model_name = model_name
        self.skipped: list[Problem] = []

    @classmethod
    def from_run(
        cls,
        run_or_checkpoint: str | Path,
        checkpoint: str = "best",
        device: str | torch.device | None = None,
        precision: str = "fp32",
    ) -> Detector:
        """Rebuild the model of a run (or of one checkpoint file) through the catalogue.

        Args:
            run_or_checkpoint: a run folder made by ``detlab train``, or a ``.pt`` file.
            checkpoint: ``best`` (falls back to ``last`` with a note when the run
                has no best yet), ``last``, or a path.
            device: ``cpu``, ``cuda``, … (default: CUDA when available).
            precision: see the class attributes.

        Returns:
            A :class:`Detector` in eval mode on ``device``.
        """
        from detlab.models.catalogue import build_model

        path = find_checkpoint(run_or_checkpoint, checkpoint)
        ckpt = load_model_checkpoint(path)
        kwargs = dict(ckpt.get("build_kwargs") or {})
        kwargs.pop("weights", None)  # the state dict replaces any pretrained weights: never download
        model = build_model(ckpt["model_name"], int(ckpt["num_classes"]), **kwargs)
        model.load_state_dict(ckpt["model"])
        names = ckpt.get("class_names") or [str(i) for i in range(int(ckpt["num_classes"]))]
        return cls(
            model,
            names,
            ckpt.get("source_ids"),
            ckpt.get("config"),
            ckpt["model_name"],
            device,
            ckpt.get("source_format"),
            precision,
        )

    @torch.no_grad()
    def detect(self, images: Sequence[torch.Tensor], score: float = 0.5) -> list[dict[str, np.ndarray]]:
        """Run the model on images already loaded as ``float32 [3, H, W]`` in 0..1.

        Returns:
            Per image ``{"boxes": float32 [K, 4] xyxy absolute in that image,
            "scores": float32 [K], "labels": int64 [K]}`` with ``scores >= score``,
            highest score first.
        """
        with autocast_network(self.model, self.amp_dtype, self.device.type):
            outputs = self.model([im.to(self.device) for im in images])
        dets = []
        for out in outputs:
            boxes = torch.as_tensor(out["boxes"]).detach().float().cpu().reshape(-1, 4)  # [K, 4]
            scores = torch.as_tensor(out["scores"]).detach().float().cpu().reshape(-1)  # [K]
            labels = torch.as_tensor(out["labels"]).detach().long().cpu().reshape(-1)  # [K]
            keep = torch.nonzero(scores >= score).flatten()
            keep = keep[scores[keep].argsort(descending=True, stable=True)]
            dets.append(
                {"boxes": boxes[keep].numpy(), "scores": scores[keep].numpy(), "labels": labels[keep].numpy()}
            )
        return dets

    def iter_predict(
        self, files: Sequence[Path], score: float = 0.5, batch_size: int = 4, progress: bool = False
    ) -> Iterator[tuple[dict, torch.Tensor]]:
        """Yield ``(detection, image)`` per readable file, ``batch_size`` images per model call.

        Unreadable files are appended to :attr:`skipped` and printed as one line each.
        """
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
        batch: list[tuple[Path, torch.Tensor]] = []
        try:  # a refusal (an ONNX graph's fixed size) ends the bar's line before its message
            for i, f in enumerate(files):
                try:
                    batch.append((f, read_image(f)))
                except DataError as e:  # the data layer names the file; keep its reason, skip and count
                    problem = Problem(
                        str(f), "image", str(e).removeprefix(f"{f}: "), "image skipped", "skipped"
                    )
                    self.skipped.append(problem)
                    bar.write(problem.line(), file=sys.stderr)
                    bar.update(1)
                if batch and (len(batch) == max(1, batch_size) or i == len(files) - 1):
                    yield from self._run_batch(batch, score)
                    bar.update(len(batch))
                    batch = []
        finally:
            bar.close()

    def _run_batch(
        self, batch: list[tuple[Path, torch.Tensor]], score: float
    ) -> Iterator[tuple[dict, torch.Tensor]]:
        for (f, im), det in zip(batch, self.detect([im for _, im in batch], score)):
            det = {"file": str(f), "width": int(im.shape[-1]), "height": int(im.shape[-2]), **det}
            det["names"] = [self.class_names[int(c)] for c in det["labels"]]
            yield det, im

    def predict(
        self,
        sources: Sequence[str | Path] | str | Path,
        score: float = 0.5,
        batch_size: int = 4,
        progress: bool = False,
    ) -> list[dict]:
        """Detect objects in image files, folders or globs.

        Args:
            sources: one or more image paths, folders or glob patterns.
            score: keep detections with ``score >= score``.
            batch_size: images per model call.
            progress: show a tqdm progress bar.

        Returns:
            One dict per readable image, in source order: ``file`` (str),
            ``width``, ``height`` (of the original image, EXIF applied),
            ``boxes`` ``float32 [K, 4]`` xyxy absolute pixels of the original
            image, ``scores`` ``float32 [K]``, ``labels`` ``int64 [K]`` in
            ``0..C-1`` and ``names`` (``K`` class names). Unreadable images are
            left out, counted in :attr:`skipped`.
        """
        if isinstance(sources, (str, Path)):
            sources = [sources]
        self.skipped = []
        return [det for det, _ in self.iter_predict(expand_sources(sources), score, batch_size, progress)]

    def category_id(self, label: int) -> int | None:
        """The COCO ``category_id`` written for class index ``label`` (see :func:`~detlab.data.results.coco_category_ids`);
        ``None`` for a class that the ``--data`` dataset does not have (see :func:`align_to_dataset`)."""
        return self.category_ids[label]


def onnx_detector(run: str | Path, checkpoint: str = "best") -> Detector:
    """A :class:`Detector` whose model is the run's exported ``model.onnx`` under ONNX Runtime.

    The class map still comes from the run's checkpoint.
    """
    src = Path(run)
    run_dir = src.parent.parent if src.is_file() else src
    onnx_path = run_dir / "model.onnx"
    if not onnx_path.is_file():
        raise DataError(f"{onnx_path}: ONNX model not found — export it first with `detlab export {run_dir}`")
    from detlab.onnx_runtime import OnnxModel  # onnxruntime itself is checked when the session opens

    ckpt = load_model_checkpoint(find_checkpoint(run, checkpoint))
    names = ckpt.get("class_names") or [str(i) for i in range(int(ckpt["num_classes"]))]
    return Detector(
        OnnxModel(onnx_path),
        names,
        ckpt.get("source_ids"),
        ckpt.get("config"),
        ckpt["model_name"],
        "cpu",
        ckpt.get("source_format"),
    )


# --- detlab predict -------------------------------------------------------------


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in used:
        stem, n = f"{path.stem}_{n}", n + 1
    used.add(stem)
    return stem


def _save_drawn(detector: Detector, det: dict, image: torch.Tensor, path: Path, score: float) -> None:
    from PIL import Image

    from detlab.report.draw import draw_boxes

    keep = det["scores"] >= score
    drawn = draw_boxes(
        image, det["boxes"][keep], det["labels"][keep], detector.class_names, scores=det["scores"][keep]
    )  # uint8 [3, H, W]
    Image.fromarray(drawn.permute(1, 2, 0).cpu().numpy()).save(path)


def coco_results(detector: Detector, det: dict, image_id: int) -> list[dict]:
    """One image's detections as COCO results entries (``bbox`` is ``[x, y, w, h]`` absolute pixels)."""
    rows = []
    for (x1, y1, x2, y2), s, c in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        category = detector.category_id(int(c))
        if category is None:  # a class the --data dataset lacks: counted by the caller
            continue
        rows.append(
            {
                "image_id": image_id,
                "category_id": category,
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(s), 5),
            }
        )
    return rows


def _image_json(detector: Detector, det: dict, image_id: int) -> dict:
    objects = [
        {
            "box_xyxy": [round(v, 3) for v in box],
            "score": round(float(s), 5),
            "label": int(c),
            "name": detector.class_names[int(c)],
            "category_id": detector.category_id(int(c)),
        }
        for box, s, c in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())
    ]
    return {
        "file": det["file"],
        "image_id": image_id,
        "width": det["width"],
        "height": det["height"],
        "detections": objects,
    }


def write_predictions(
    detector: Detector,
    files: Sequence[Path],
    out: Path,
    score: float = 0.5,
    batch_size: int = 4,
    progress: bool = True,
    image_ids: dict[str, int] | None = None,
    draw_score: float | None = None,
) -> dict:
    """Run ``detector`` on ``files`` and write everything ``detlab predict`` promises under ``out``.

    Writes ``detections.json`` (COCO results: ``image_id``, ``category_id`` in
    the source dataset's ids, ``bbox`` xywh absolute, ``score``), ``images.json``
    (``images``: id, file_name, width, height — ids are the files' positions in
    ``files``, so the same sources give the same ids — and ``categories``),
    ``drawn/<name>`` (boxes, class and score drawn) and ``json/<name>.json``
    (one image's detections, xyxy). ``image_ids`` (``str(file) -> id``, from
    :func:`align_to_dataset`) replaces the positional ids. ``score`` filters what is
    written; ``draw_score`` (default ``score``) what is drawn, so a results file kept
    for scoring can hold every detection while the pictures stay readable.

    Returns:
        ``{"images": n_read, "detections": n_boxes, "skipped": n_unreadable, "left_out": n}``:
        ``left_out`` counts detections of classes the ``--data`` dataset lacks, kept in the
        drawn images and per-image JSON but not in ``detections.json``.
    """
    (out / "drawn").mkdir(parents=True, exist_ok=True)
    (out / "json").mkdir(parents=True, exist_ok=True)
    ids = image_ids or {str(f): i + 1 for i, f in enumerate(files)}
    results: list[dict] = []
    images: list[dict] = []
    used: set[str] = set()
    left_out = 0
    detector.skipped = []
    for det, image in detector.iter_predict(files, score, batch_size, progress):
        image_id, src = ids[det["file"]], Path(det["file"])
        stem = _unique_stem(src, used)
        suffix = src.suffix.lower() if src.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
        _save_drawn(
            detector,
            det,
            image,
            out / "drawn" / f"{stem}{suffix}",
            score if draw_score is None else draw_score,
        )
        (out / "json" / f"{stem}.json").write_text(json.dumps(_image_json(detector, det, image_id), indent=1))
        images.append(
            {"id": image_id, "file_name": det["file"], "width": det["width"], "height": det["height"]}
        )
        rows = coco_results(detector, det, image_id)
        left_out += len(det["labels"]) - len(rows)
        results.extend(rows)
    (out / "detections.json").write_text(json.dumps(results))
    categories = [
        {"id": detector.category_id(i), "name": n}
        for i, n in enumerate(detector.class_names)
        if detector.category_id(i) is not None
    ]
    (out / "images.json").write_text(json.dumps({"images": images, "categories": categories}, indent=1))
    return {
        "images": len(images),
        "detections": len(results),
        "skipped": len(detector.skipped),
        "left_out": left_out,
    }


def align_to_dataset(
    detector: Detector, files: Sequence[Path], data: str
) -> tuple[list[Path], dict[str, int]]:
    """Use a dataset's image and category ids, so the results score with ``detlab eval --gt DATA``.

    Args:
        detector: its ``category_ids`` are set from ``data``'s classes, matched by name.
        files: images to predict on; empty means every image of ``data``.
        data: a dataset path (``DATA`` or ``DATA:split``).

    A model class the dataset lacks (e.g. one with boxes in the training split only) gets
    no category id: its detections stay out of the results file, counted and reported.

    Returns:
        ``(files, image_ids)``: ``image_ids`` maps ``str(file)`` to the dataset's
        image id; files outside the dataset get new ids after the largest one (counted, reported).

    Raises:
        DataError: no model class is in the dataset (not the data the run was trained for).
    """
    from detlab.data.dataset import load_dataset

    records = load_dataset(data).records
    by_name = dict(zip(records.class_names, coco_category_ids(records.source_ids, records.format)))
    missing = [n for n in detector.class_names if n not in by_name]
    if len(missing) == len(detector.class_names):
        raise DataError(
            f"{data}: none of the model's classes ({', '.join(missing)}) is in this dataset's classes "
            f"({', '.join(records.class_names)}) — use the dataset the run was trained on"
        )
    if missing:
        logger.info(
            f"note: model classes {', '.join(missing)} are not in {data}'s classes; their detections are "
            f"left out of detections.json (counted below)"
        )
    detector.category_ids = [by_name.get(n) for n in detector.class_names]
    files = list(files) or [Path(r.file) for r in records.images]
    known = {Path(r.file).resolve(): int(r.image_id) for r in records.images}
    next_id = max(known.values(), default=0) + 1
    ids: dict[str, int] = {}
    outside = 0
    for f in files:
        key = Path(f).resolve()
        if key not in known:
            known[key], next_id, outside = next_id, next_id + 1, outside + 1
        ids[str(f)] = known[key]
    if outside:
        logger.info(f"note: {outside} of {len(files)} images are not in {data}; they get new image ids")
    return files, ids


def predict_command(args) -> int:
    """``detlab predict RUN [SOURCE…] --out DIR [--data DATA] [--score] [--batch] [--backend] [--checkpoint]``."""
    data = getattr(args, "data", None)
    if not args.sources and not data:
        raise DataError("predict: nothing to predict on — give image files, folders or globs, or --data DATA")
    files = expand_sources(args.sources) if args.sources else []
    precision = getattr(args, "precision", "fp32")
    if args.backend == "onnx":
        if precision not in ("fp32", "auto"):
            raise ConfigError(
                f"--precision {precision}: only --backend torch runs mixed precision — use fp32"
            )
        detector = onnx_detector(args.run, args.checkpoint)
    else:
        detector = Detector.from_run(args.run, checkpoint=args.checkpoint, precision=precision)
    image_ids = None
    if data:
        files, image_ids = align_to_dataset(detector, files, data)
    # Results for scoring keep every detection the model returns (its own floor, as `detlab eval RUN`
    # scores them): a thresholded file cuts the PR curves short and AP/AR become a lower bound.
    score = args.score if args.score is not None else (0.0 if data else DRAW_SCORE)
    if data and score > THRESHOLDED_SCORE:
        logger.info(
            f"note: --score {score:g} with --data: detections.json holds only detections >= {score:g}, so AP/AR "
            "scored from it are a lower bound — omit --score to keep every detection"
        )
    out = Path(args.out)
    with writing(out, "predictions"):
        counts = write_predictions(
            detector,
            files,
            out,
            score=score,
            batch_size=args.batch,
            image_ids=image_ids,
            draw_score=args.score if args.score is not None else DRAW_SCORE,
        )
    left_out = (
        f"; {counts['left_out']} detections of classes not in {data} left out" if counts["left_out"] else ""
    )
    print(
        f"predicted {counts['images']} images, {counts['detections']} detections at score >= {score:g}"
        f" ({args.backend}, {detector.model_name}); skipped {counts['skipped']} unreadable{left_out} → {out}"
    )
    return 0 if counts["images"] else 1
