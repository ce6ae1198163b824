"""PNG plots of a run: training curves, per-class AP, PR curves, confusion matrix, error breakdown.

matplotlib with the Agg backend (no display needed); every function writes files and
returns their paths.

``metrics.jsonl`` (written by the training engine, one JSON object per line) is read
in this format::

    {"type": "train", "iter": int, "epoch": int, "lr": float, "loss": float,
     "loss_<part>": float, ..., "sec_per_iter": float, "data_sec": float}
    {"type": "eval", "epoch": int, "iter": int, "coco/AP": float, "voc07/mAP": float, ...,
     "val/loss": float, "val/loss_<part>": float, ...}

Train lines are plotted against ``iter``, eval lines against ``epoch``. Unknown keys are
ignored; a line that is not valid JSON is skipped and counted on stderr.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

from detlab.log import logger

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

PROTOCOL_LABELS = {"coco": "COCO AP", "voc07": "VOC07 AP50", "voc12": "VOC12 AP50"}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """``(train lines, eval lines)`` of a ``metrics.jsonl``; broken lines are skipped and counted."""
    train, evals, broken = [], [], 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            broken += 1
            continue
        if isinstance(row, dict) and row.get("type") == "train":
            train.append(row)
        elif isinstance(row, dict) and row.get("type") == "eval":
            evals.append(row)
    if broken:
        logger.warning(f"skipped: {path}: {broken} lines are not valid JSON — left out of the plots")
    return train, evals


def _series(rows: list[dict], x_key: str, key: str) -> tuple[list, list]:
    pts = [
        (r[x_key], r[key])
        for r in rows
        if isinstance(r.get(key), (int, float))
        and x_key in r
        and not (isinstance(r[key], float) and math.isnan(r[key]))
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def _line_plot(
    rows: list[dict], x_key: str, keys: Sequence[str], title: str, ylabel: str, path: Path, log: bool = False
) -> Path | None:
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for key in keys:
        xs, ys = _series(rows, x_key, key)
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=key)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set(title=title, xlabel=x_key, ylabel=ylabel)
    if log and all(y > 0 for k in keys for y in _series(rows, x_key, k)[1]):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(metrics_jsonl_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Loss parts and lr vs iteration; validation loss and metrics vs epoch.

    Args:
        metrics_jsonl_path: a run's ``metrics.jsonl`` (format in the module docstring).
        out_dir: folder for ``loss.png``, ``lr.png``, ``val_loss.png``, ``val_metrics.png``.

    Returns:
        The PNGs written (a plot without data is not written).
    """
    train, evals = read_metrics(metrics_jsonl_path)
    out = Path(out_dir)
    loss_keys = ["loss"] + sorted({k for r in train for k in r if k.startswith("loss_")})
    val_loss_keys = sorted({k for r in evals for k in r if k.startswith("val/loss")})
    metric_keys = sorted({k for r in evals for k in r if "/" in k and not k.startswith("val/")})
    headline = [k for k in metric_keys if k.rsplit("/", 1)[-1] in ("AP", "AP50", "AP75", "mAP")]
    metric_keys = headline or metric_keys  # all 14 COCO numbers in one panel would be unreadable
    made = [
        _line_plot(train, "iter", loss_keys, "training loss", "loss", out / "loss.png", log=True),
        _line_plot(train, "iter", ["lr"], "learning rate", "lr", out / "lr.png"),
        _line_plot(evals, "epoch", val_loss_keys, "validation loss", "loss", out / "val_loss.png"),
        _line_plot(evals, "epoch", metric_keys, "validation metrics", "value", out / "val_metrics.png"),
    ]
    return [p for p in made if p is not None]


def plot_per_class_ap(result: Mapping, out_path: str | Path, title: str = "per-class AP") -> Path:
    """Horizontal bars of per-class AP, one bar per protocol that has ``per_class``.

    Args:
        result: a nested result dict (``{"coco": {"per_class": {name: AP}}, "voc07": ...}``)
            or a plain ``{name: AP}``; ``NaN`` / ``None`` (class without GT) is drawn as no bar.
        out_path: the PNG to write.

    Returns:
        ``out_path``.
    """
    if all(isinstance(v, (int, float)) or v is None for v in result.values()):
        series = {"AP": dict(result)}
    else:
        series = {
            PROTOCOL_LABELS.get(p, p): v["per_class"]
            for p, v in result.items()
            if isinstance(v, Mapping) and isinstance(v.get("per_class"), Mapping)
        }
    if not series:
        raise ValueError("plot_per_class_ap: the result has no per_class AP")
    names = list(dict.fromkeys(n for s in series.values() for n in s))
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * len(names) * max(1, len(series) * 0.6)))
    height = 0.8 / len(series)
    y = np.arange(len(names))
    for i, (label, per_class) in enumerate(series.items()):
        vals = [per_class.get(n) for n in names]
        vals = [np.nan if v is None else 100 * float(v) for v in vals]
        ax.barh(y + i * height, vals, height=height, label=label)
    ax.set_yticks(y + height * (len(series) - 1) / 2, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 100), xlabel="AP (%)", title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, Path(out_path))


def plot_pr_curves(
    curves: Sequence[Mapping],
    class_names: Sequence[str],
    out_dir: str | Path,
    per_page: int = 16,
    iou: float = 0.5,
) -> list[Path]:
    """Precision-recall curves, one panel per class, ``pr_curves[_N].png`` pages of ``per_page``.

    Args:
        curves: per class ``{"precision", "recall": [K], "AP": float, "num_gt": int}`` and, from
            :func:`detlab.evaluation.analysis.analyse`, ``"at_operating_point"`` (marked by a dot).
        class_names: ``C`` names.
        out_dir: output folder.
        iou: the matching threshold the curves were computed at (in the title).

    Returns:
        The PNGs written.
    """
    out, paths = Path(out_dir), []
    pages = max(1, math.ceil(len(curves) / per_page))
    for page in range(pages):
        chunk = list(range(page * per_page, min((page + 1) * per_page, len(curves))))
        cols = min(4, max(1, len(chunk)))
        rows = max(1, math.ceil(len(chunk) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
        for ax in axes.flat[len(chunk) :]:
            ax.axis("off")
        for ax, c in zip(axes.flat, chunk):
            _pr_panel(ax, curves[c], class_names[c])
        handles, labels = axes.flat[0].get_legend_handles_labels()
        point = next((cv["at_operating_point"] for cv in curves if "at_operating_point" in cv), None)
        title = f"precision-recall per class, IoU > {iou:g}"
        if point is not None:
            title += f"; dot: operating point, score ≥ {point['score']:.2f}"
        fig.suptitle(title, fontsize=10)
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 0.97))
        name = "pr_curves.png" if pages == 1 else f"pr_curves_{page + 1}.png"
        paths.append(_save(fig, out / name))
    return paths


def _pr_panel(ax, curve: Mapping, name: str) -> None:
    rec, prec = np.asarray(curve["recall"], float), np.asarray(curve["precision"], float)
    if curve.get("num_gt", 1) and len(rec):
        envelope = np.maximum.accumulate(prec[::-1])[::-1]  # the interpolated precision AP integrates
        ax.plot(rec, prec, lw=0.8, alpha=0.5, label="precision after each detection")
        ax.step(rec, envelope, where="post", lw=1.5, label="interpolated (what AP integrates)")
    point = curve.get("at_operating_point") or {}
    if isinstance(point.get("recall"), float) and math.isfinite(point["recall"]):
        ax.plot([point["recall"]], [point["precision"]], "o", color="tab:red", ms=6, label="operating point")
    ap = curve.get("AP")
    ap_text = "no GT" if ap is None or (isinstance(ap, float) and math.isnan(ap)) else f"AP50 {100 * ap:.1f}"
    ax.set(xlim=(0, 1), ylim=(0, 1.02), title=f"{name} ({ap_text})", xlabel="recall", ylabel="precision")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    out_path: str | Path,
    normalize: bool = True,
    title: str = "confusion matrix",
) -> Path:
    """Heat map of a ``[C+1, C+1]`` confusion matrix (rows GT, columns prediction, last = background).

    Args:
        matrix: counts from :func:`detlab.evaluation.analysis.confusion_matrix`.
        class_names: ``C`` names.
        out_path: the PNG to write.
        normalize: colour by the fraction of each GT row (counts are still printed).

    Returns:
        ``out_path``.
    """
    m = np.asarray(matrix, np.float64)
    labels = list(class_names) + ["background"]
    sums = m.sum(1, keepdims=True)
    shade = np.divide(m, sums, out=np.zeros_like(m), where=sums > 0) if normalize else m
    size = 1.5 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(shade, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of GT row" if normalize else "count")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="ground truth", title=title)
    ax.title.set_fontsize(9)
    if len(labels) <= 30:
        top = shade.max() or 1
        for i, j in zip(*np.nonzero(m)):
            ax.text(
                j,
                i,
                int(m[i, j]),
                ha="center",
                va="center",
                fontsize=8 if len(labels) <= 12 else 6,
                color="white" if shade[i, j] > 0.6 * top else "black",
            )
    return _save(fig, Path(out_path))


def plot_error_breakdown(errors: Mapping, out_path: str | Path) -> Path:
    """Bars of the error counts and of the mAP each fix would add (TIDE-style).

    Args:
        errors: :func:`detlab.evaluation.analysis.error_breakdown`'s dict.
        out_path: the PNG to write.

    Returns:
        ``out_path``.
    """
    types = list(errors["counts"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    counts = [errors["counts"][t] for t in types]
    bars = a1.bar(types, counts, color="tab:gray")
    a1.bar_label(bars, fontsize=8)
    t = errors.get("score_threshold")
    where = "every detection" if t is None else f"detections with score ≥ {t:.2f}"
    a1.set(title=f"errors of {where} (IoU {errors.get('iou', 0.5):g})", ylabel="count")
    gains = [100 * (errors["dAP"].get(t) or 0.0) for t in types]
    a2.bar(types, gains, color="tab:red")
    a2.set(
        title=f"AP50 points gained if fixed, all scores (base mAP {100 * errors['mAP']:.1f})",
        ylabel="AP points",
    )
    for ax in (a1, a2):
        ax.tick_params(axis="x", rotation=35, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.title.set_fontsize(9)
    return _save(fig, Path(out_path))


def plot_analysis(
    found: Mapping, result: Mapping, class_names: Sequence[str], out_dir: str | Path
) -> list[Path]:
    """Every analysis picture ``detlab eval`` and the end of training write, thresholds in the titles.

    Args:
        found: :func:`detlab.evaluation.analysis.analyse`'s dict.
        result: the protocol results (per-class AP bars when one has ``per_class``).
        class_names: ``C`` names.
        out_dir: folder for ``per_class_ap.png``, ``pr_curves*.png``, ``confusion_matrix.png``, ``errors.png``.

    Returns:
        The PNGs written.
    """
    out, paths = Path(out_dir), []
    if any(isinstance(v, Mapping) and "per_class" in v for v in result.values()):
        paths.append(plot_per_class_ap(result, out / "per_class_ap.png"))
    confusion = found["confusion"]
    paths += plot_pr_curves(found["pr_curves"], class_names, out, iou=confusion["iou"])
    title = f"confusion matrix: detections with score ≥ {confusion['score_threshold']:.2f}, IoU ≥ {confusion['iou']:g}"
    paths.append(
        plot_confusion_matrix(confusion["matrix"], class_names, out / "confusion_matrix.png", title=title)
    )
    paths.append(plot_error_breakdown(found["errors"], out / "errors.png"))
    return paths
