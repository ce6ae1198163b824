"""Compare runs side by side: ``detlab compare RUN… --out DIR``.

Writes ``compare.csv`` and ``compare.md`` (the same table: COCO AP numbers from
each run's final evaluation, inference latency, training time, parameters,
GFLOPs), overlaid training curves, per-class AP differences, and a gallery of
the images where the runs' detections disagree most, all in one
self-contained ``compare.html``.

Disagreement of one image: for every pair of runs, detections with
``score >= 0.5`` are matched one-to-one within a class by maximum IoU
(``scipy.optimize.linear_sum_assignment``); a pair with IoU ≥ 0.5 is an
agreement; ``F1 = 2·agreements / (n_a + n_b)`` (1 when both are empty).
Disagreement is ``1 − mean F1`` over all pairs of runs.

Legend for shape comments: ``K`` detections of one image.
"""

from __future__ import annotations

import csv
import io
import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detlab.errors import DataError, DetlabError
from detlab.log import logger
from detlab.report.draw import draw_boxes
from detlab.report.html import (
    count_boxes,
    defined,
    esc,
    note,
    page,
    pct,
    photo_figure,
    plot_figure,
    sample_indices,
    section,
    table,
)
from detlab.runfolder import RunInfo, load_run, validation_dataset

COLUMNS = [
    "method",
    "run",
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "ms/img",
    "train time (min)",
    "params (M)",
    "GFLOPs",
]
GALLERY_SCORE = 0.5
GALLERY_POOL = 40  # images scored for disagreement
GALLERY_SIZE = 6
LATENCY_IMAGES = 5
LATENCY_WARMUP = 2  # untimed calls first: allocator, cudnn autotune, lazy init


@dataclass
class Entry:
    """One run in the comparison, with what was measured on it (None = not measured)."""

    info: RunInfo
    detector: object | None = None
    ms_per_image: float | None = None
    train_seconds: float | None = None
    params: int | None = None
    gflops: float | None = None

    @property
    def label(self) -> str:
        return f"{self.info.model_name} ({self.info.name})"


# --- measurements ----------------------------------------------------------------------


def train_seconds(info: RunInfo) -> float | None:
    """Training wall time: a stored ``train_time``, else ``sec_per_iter`` × iterations summed over train lines."""
    for source in (reversed(info.lines), [info.meta]):
        for row in source:
            for key in ("train_time", "train_time_s", "train_seconds"):
                if isinstance(row.get(key), (int, float)):
                    return float(row[key])
    total, prev, seen = 0.0, 0, False
    for row in info.lines:
        if row.get("type") != "train" or not isinstance(row.get("sec_per_iter"), (int, float)):
            continue
        it = int(row.get("iter", prev))
        steps = it - prev if it > prev else it  # iter went back: a resumed run restarts counting
        total, prev, seen = total + float(row["sec_per_iter"]) * max(steps, 0), it, True
    return total if seen else None


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gflops(model: torch.nn.Module, image: torch.Tensor) -> float:
    """GFLOPs of one eval-mode forward on ``image`` (``[3, H, W]``), by ``FlopCounterMode`` (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model([image.to(device)])
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def latency_ms(detector, images: list[torch.Tensor], warmup: int | None = None) -> float:
    """Median milliseconds per image, one image per call, after ``warmup`` untimed calls."""
    device = detector.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warmup = LATENCY_WARMUP if warmup is None else warmup
    for im in images[:warmup]:
        detector.model([im.to(device)])
    times = []
    for im in images:
        im = im.to(device)
        sync()
        t0 = time.perf_counter()
        detector.model([im])
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def measure(entries: list[Entry], dataset, device: str | None) -> None:
    """Load each run's model and fill latency, parameters and GFLOPs (on the same images and device)."""
    from detlab.predict import Detector

    images = (
        [dataset[i][0] for i in sample_indices(len(dataset), LATENCY_IMAGES)] if dataset is not None else []
    )
    for entry in entries:
        try:
            entry.detector = Detector.from_run(entry.info.path, device=device)
        except (DetlabError, ImportError, RuntimeError) as e:
            logger.info(
                f"note: {entry.info.path}: model not loaded ({e}); latency, params and GFLOPs left out"
            )
            continue
        entry.params = count_parameters(entry.detector.model)
        if images:
            entry.gflops = count_gflops(entry.detector.model, images[0])
            entry.ms_per_image = latency_ms(entry.detector, images)


# --- disagreement ----------------------------------------------------------------------------


def pair_f1(a: dict, b: dict, iou_threshold: float = 0.5) -> float:
    """F1 of two detection sets (``boxes [K, 4]`` xyxy, ``labels [K]``) matched one-to-one within a class."""
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import box_iou

    n_a, n_b = len(a["labels"]), len(b["labels"])
    if n_a + n_b == 0:
        return 1.0
    matched = 0
    for c in set(np.asarray(a["labels"]).tolist()) & set(np.asarray(b["labels"]).tolist()):
        box_a = torch.as_tensor(np.asarray(a["boxes"])[np.asarray(a["labels"]) == c]).float()  # [Ka, 4]
        box_b = torch.as_tensor(np.asarray(b["boxes"])[np.asarray(b["labels"]) == c]).float()  # [Kb, 4]
        iou = np.nan_to_num(box_iou(box_a, box_b).numpy(), nan=0.0)  # [Ka, Kb]; zero-area pairs give 0/0
        rows, cols = linear_sum_assignment(iou, maximize=True)
        matched += int((iou[rows, cols] >= iou_threshold).sum())
    return 2 * matched / (n_a + n_b)


def disagreement(dets: list[dict]) -> float:
    """``1 − mean pairwise F1`` over every pair of runs' detections on one image."""
    pairs = list(itertools.combinations(dets, 2))
    return 1.0 - float(np.mean([pair_f1(a, b) for a, b in pairs])) if pairs else 0.0


def gallery(entries: list[Entry], dataset) -> str:
    """HTML of the images where the loaded runs disagree most: ground truth then each run's detections."""
    loaded = [e for e in entries if e.detector is not None]
    if len(loaded) < 2 or dataset is None:
        return note("needs at least two runs whose models load, and validation data; gallery skipped.")
    scored = []
    for i in sample_indices(len(dataset), GALLERY_POOL):
        image, _ = dataset[i]
        dets = [e.detector.detect([image], score=GALLERY_SCORE)[0] for e in loaded]
        scored.append((disagreement(dets), i, dets))
    scored.sort(key=lambda s: (-s[0], s[1]))
    shown = [s for s in scored if s[0] > 0][:GALLERY_SIZE]
    if not shown:
        return note(
            f"the runs agree on all {len(scored)} scored images (score ≥ {GALLERY_SCORE}, IoU ≥ 0.5)."
        )
    blocks = []
    for score, i, dets in shown:
        image, target = dataset[i]
        name = Path(dataset.records.images[i].file).name
        figs = [
            photo_figure(
                draw_boxes(
                    image, target["boxes"], target["labels"], list(dataset.class_names), ground_truth=True
                ),
                f"{name}: ground truth, dashed",
            )
        ]
        figs += [
            photo_figure(
                draw_boxes(image, d["boxes"], d["labels"], e.detector.class_names, scores=d["scores"]),
                f"{e.label}: {count_boxes(len(d['labels']))} with score ≥ {GALLERY_SCORE}",
            )
            for e, d in zip(loaded, dets)
        ]
        blocks.append(
            f'<h3>{esc(name)} — disagreement {score:.2f}</h3><div class="grid">{"".join(figs)}</div>'
        )
    return (
        f"<p>{len(scored)} validation images scored; detections with score ≥ {GALLERY_SCORE}; "
        "disagreement = 1 − mean pairwise F1 of class-matched boxes at IoU ≥ 0.5; "
        "images where they agree are not shown.</p>" + "".join(blocks)
    )


# --- table, curves, per-class ------------------------------------------------------------------


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def table_rows(entries: list[Entry]) -> list[list[str]]:
    """One row per run, in :data:`COLUMNS` order; AP numbers in %, ``–`` where not available."""
    rows = []
    for e in entries:
        coco = e.info.final.get("coco", {})
        rows.append(
            [e.info.model_name, e.info.name]
            + [pct(coco.get(k)) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
            + [
                _num(e.ms_per_image, ".1f"),
                _num(None if e.train_seconds is None else e.train_seconds / 60, ".1f"),
                _num(None if e.params is None else e.params / 1e6, ".2f"),
                _num(e.gflops, ".1f"),
            ]
        )
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows]) + "\n"


def per_class_rows(entries: list[Entry]) -> tuple[list[str], list[list[str]]]:
    """Per-class COCO AP (%) of every run, and each later run's change against the first."""
    names: list[str] = []
    for e in entries:
        names += [n for n in e.info.final.get("coco", {}).get("per_class", {}) if n not in names]
    header = ["class"] + [e.info.name for e in entries] + [f"Δ {e.info.name}" for e in entries[1:]]
    rows = []
    for n in names:
        values = [e.info.final.get("coco", {}).get("per_class", {}).get(n) for e in entries]
        ok = [defined(v) for v in values]
        # rounded first and + 0.0, so a change that rounds to zero reads "+0.0", not "-0.0"
        deltas = [
            f"{round(100 * (v - values[0]), 1) + 0.0:+.1f}" if ok[0] and ok[j + 1] else "–"
            for j, v in enumerate(values[1:])
        ]
        rows.append([n] + [pct(v) for v in values] + deltas)
    return header, rows


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves_png(entries: list[Entry], metric: str = "coco/AP") -> bytes | None:
    """Training loss per iteration and ``metric`` per epoch, every run on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 3.8))
    drawn = False
    for e in entries:
        train = [
            r for r in e.info.lines if r.get("type") == "train" and isinstance(r.get("loss"), (int, float))
        ]
        evals = [
            r for r in e.info.lines if r.get("type") == "eval" and isinstance(r.get(metric), (int, float))
        ]
        if train:
            ax_loss.plot(
                [r.get("iter", i) for i, r in enumerate(train)],
                [r["loss"] for r in train],
                marker="o" if len(train) < 30 else None,  # a short run's few points must show
                ms=3,
                label=e.label,
            )
        if evals:
            ax_ap.plot(
                [r.get("epoch", i) for i, r in enumerate(evals)],
                [100 * r[metric] for r in evals],
                marker="o",
                label=e.label,
            )
        drawn = drawn or bool(train or evals)
    if not drawn:
        plt.close(fig)
        return None
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="loss")
    ax_ap.set(xlabel="epoch", ylabel=f"{metric} (%)", title=metric)
    ax_ap.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _fig_png(fig)


def per_class_png(entries: list[Entry]) -> bytes | None:
    """Grouped bars of per-class COCO AP, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, rows = per_class_rows(entries)
    if not rows:
        return None
    x = np.arange(len(rows))
    width = 0.8 / len(entries)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) * len(entries) + 2), 3.8))
    for j, e in enumerate(entries):
        values = [float(r[1 + j]) if r[1 + j] != "–" else 0.0 for r in rows]
        ax.bar(x + (j - (len(entries) - 1) / 2) * width, values, width, label=e.label)
    ax.set_xticks(x, [r[0] for r in rows], rotation=45, ha="right")
    ax.set(ylabel="COCO AP (%)", title="per-class AP")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _fig_png(fig)


# --- entry point --------------------------------------------------------------------------------


def _load_dataset(entries: list[Entry], data: str | None):
    try:
        return validation_dataset(entries[0].info.config, data)
    except (DetlabError, ImportError, OSError) as e:
        logger.info(f"note: no validation data ({e}); latency, GFLOPs and the gallery are left out")
        return None


def write_comparison(
    runs: list[str | Path], out: str | Path, data: str | None = None, device: str | None = None
) -> Path:
    """Compare runs and write ``compare.csv``, ``compare.md`` and ``compare.html`` under ``out``.

    Args:
        runs: run folders made by ``detlab train``.
        out: output folder.
        data: dataset to measure latency and pick the gallery on (default: the
            first run's validation data).
        device: where every model runs (default: CUDA when available); one device for all.

    Returns:
        The path of ``compare.html``.
    """
    if not runs:
        raise DataError("compare: no runs given — pass two or more run folders")
    entries = [Entry(load_run(r)) for r in runs]
    for e in entries:
        e.train_seconds = train_seconds(e.info)
    dataset = _load_dataset(entries, data)
    measure(entries, dataset, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(entries)
    with open(out / "compare.csv", "w", newline="") as f:
        csv.writer(f).writerows([COLUMNS] + rows)
    pc_header, pc_rows = per_class_rows(entries)
    md = "# detlab compare\n\nAP numbers in %, from each run's final evaluation.\n\n" + markdown_table(
        COLUMNS, rows
    )
    if pc_rows:
        md += "\n## Per-class COCO AP (%)\n\n" + markdown_table(pc_header, pc_rows)
    (out / "compare.md").write_text(md, encoding="utf-8")
    (out / "compare.html").write_text(_html(entries, rows, pc_header, pc_rows, dataset), encoding="utf-8")
    return out / "compare.html"


def _html(entries: list[Entry], rows, pc_header, pc_rows, dataset) -> str:
    dev = next((str(e.detector.device) for e in entries if e.detector is not None), "–")
    sources = "; ".join(f"{e.info.name}: {e.info.final_source or 'no evaluation'}" for e in entries)
    table_body = (
        table(COLUMNS, rows) + f"<p>AP numbers in %; ms/img: median of {LATENCY_IMAGES} validation "
        f"images, one per call, after warm-up, on {esc(dev)}; GFLOPs: FlopCounterMode on one image "
        f"(2 per multiply-add). Evaluations: {esc(sources)}.</p>"
    )
    curves = curves_png(entries)
    pc_png = per_class_png(entries)
    sections = [
        section("table", "Comparison", table_body),
        section(
            "curves",
            "Training curves",
            plot_figure(
                curves,
                "Left: training loss of every run against the iteration; right: validation COCO AP (%) against the epoch.",
            )
            if curves
            else note("no metrics.jsonl lines in these runs."),
        ),
        section(
            "per-class",
            "Per-class AP",
            (plot_figure(pc_png, "COCO AP of each class, one bar per run.") if pc_png else "")
            + (table(pc_header, pc_rows) if pc_rows else note("no per-class AP in the evaluations.")),
        ),
        section("gallery", "Where the runs disagree most", gallery(entries, dataset)),
        _browser(entries, dataset),
    ]
    return page("detlab compare", " vs ".join(e.label for e in entries), sections)


def _browser(entries: list[Entry], dataset) -> str:
    """Every validation image with each run's detections side by side, sortable by disagreement."""
    if dataset is None:
        return section("browser", "Prediction browser", note("no validation data; browser skipped."))
    from detlab.report.browser import browser_section, run_predictions

    runs = []
    for e in entries:
        try:
            runs.append((e.label, run_predictions(e.info.path, dataset)))
        except (DetlabError, OSError, RuntimeError) as err:
            logger.info(f"note: {e.label} left out of the browser ({err})")
    if not runs:
        return section("browser", "Prediction browser", note("no run's model loads; browser skipped."))
    return browser_section(dataset.records, runs)


def compare_command(runs: list[str], out: str, data: str | None = None) -> int:
    """``detlab compare RUN… --out DIR [--data DATA]``."""
    path = write_comparison(runs, out, data)
    print((Path(out) / "compare.md").read_text(encoding="utf-8"))
    print(f"compare → {path}")
    return 0
