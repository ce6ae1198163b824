"""One run as ONE self-contained HTML file: ``detlab report RUN`` and ``write_report``.

Everything is inline: CSS in a ``<style>`` block, every picture a base64 PNG
``data:`` URI, no scripts and no external URL, so the file can be mailed or
archived on its own. All text from the run (config values, class names, file
names) goes through ``html.escape``.

Sections, always present (a section without its inputs says what is missing):
config, training curves, metrics (12 COCO numbers + VOC mAP), per-class AP,
PR curves, confusion matrix, before/after fine-tuning, sample predictions
beside ground truth.

The run folder is read by :mod:`detlab.runfolder`; the page pieces here
(``page``, ``section``, ``table``, …) are shared with ``report/compare.py``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from detlab.errors import DetlabError
from detlab.log import logger
from detlab.runfolder import RunInfo, load_run, validation_dataset

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
VOC_PROTOCOLS = ("voc07", "voc12")
NUM_SAMPLES = 4
SAMPLE_MIN_SIDE = 480  # smaller sample images are enlarged before drawing, so captions stay legible

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#c8cfdc;font-size:14px}
main{max-width:1200px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:14px 20px;margin:16px 0}
h2{font-size:18px;margin:0 0 10px;border-bottom:1px solid #eef0f4;padding-bottom:6px}
h3{font-size:15px;margin:12px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #dfe3ea;padding:3px 9px;text-align:left}
th{background:#f0f2f6} td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f7f9;padding:10px;border-radius:6px;font-size:12px;max-height:360px;overflow:auto}
img{max-width:100%;height:auto;border:1px solid #eef0f4;border-radius:4px}
.grid{display:flex;flex-wrap:wrap;gap:12px} .grid figure{margin:0;flex:1 1 300px;max-width:480px}
.grid figure:only-child{max-width:min(100%,1100px);flex-basis:100%}
figcaption{font-size:13px;color:#5a6375;margin-top:3px;overflow-wrap:anywhere}
.note{color:#7a5b00;background:#fff8e1;border:1px solid #f3e2a9;border-radius:6px;padding:6px 10px;font-size:13px}
.pos{color:#137333} .neg{color:#b3261e}
"""


# --- HTML pieces ---------------------------------------------------------------------


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_bytes(image) -> bytes:
    """PNG bytes of a ``uint8 [3, H, W]`` tensor / ``[H, W, 3]`` array, or of a PNG file."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    arr = image.permute(1, 2, 0).cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def figure(data: bytes, caption: str) -> str:
    return f'<figure><img src="{png_uri(data)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def photo_figure(image, caption: str, max_side: int = 960) -> str:
    """A drawn photo (``uint8 [3, H, W]``) as a WebP figure: a tenth of the PNG's bytes, text still sharp."""
    from detlab.report.browser import photo_uri

    uri, _ = photo_uri(image, max_side=max_side, quality=85)
    return f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def plot_figure(data: bytes, caption: str) -> str:
    """A plot's PNG bytes as a figure (:func:`plot_uri`) with a caption that says what it shows."""
    return f'<figure><img src="{plot_uri(data)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def plot_uri(data: bytes) -> str:
    """A matplotlib PNG re-encoded as lossless WebP (flat colours: about half the bytes, same pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, format="WEBP", lossless=True, method=4)
    smaller = buf.getvalue() if len(buf.getvalue()) < len(data) else None
    return "data:image/webp;base64," + base64.b64encode(smaller).decode("ascii") if smaller else png_uri(data)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


_NUMBER = re.compile(r"^([+\-]?\d[\d.,]*|–)$")


def table(header: list[str], rows: list[list]) -> str:
    """An HTML table; numbers right-aligned, text left."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)

    def cell(c) -> str:
        return f'<td class="n">{esc(c)}</td>' if _NUMBER.match(str(c)) else f"<td>{esc(c)}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def defined(value) -> bool:
    """Whether a metric has a value: a finite number >= 0 (COCO's ``-1``, NaN and ``None`` mean undefined)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def pct(value) -> str:
    """A 0..1 metric as a percentage with one decimal; undefined ones (see :func:`defined`) as ``–``."""
    return f"{100 * value:.1f}" if defined(value) else "–"


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: list[str]) -> str:
    """A whole self-contained HTML document."""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<main>{''.join(sections)}</main></body></html>"
    )


def plot_files(run: Path) -> list[Path]:
    """Every PNG the engine and ``detlab eval`` left in ``plots/`` and ``eval/`` (the newest of each name)."""
    found = [p for d in ("plots", "eval") if (run / d).is_dir() for p in (run / d).rglob("*.png")]
    newest: dict[str, Path] = {}
    for p in sorted(found, key=lambda p: p.stat().st_mtime):
        newest[p.name] = p
    return sorted(newest.values(), key=lambda p: p.name)


def _kind(path: Path) -> str:
    """Which report section a plot file belongs to, from its name."""
    name = path.stem.lower()
    if "confusion" in name:
        return "confusion"
    if "error" in name:
        return "errors"
    if re.search(r"(^|[_\-])pr([_\-]|$)|precision|recall", name):
        return "pr"
    if "per_class" in name or "class_ap" in name or "per-class" in name:
        return "per_class"
    if re.search(r"curve|loss|train|lr|metric", name):
        return "curves"
    return "other"


# --- sections --------------------------------------------------------------------------


def read_analysis(run: Path) -> dict:
    """``eval/analysis.json`` (``detlab eval`` or the end of training), ``{}`` when absent or broken."""
    path = run / "eval" / "analysis.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        logger.warning(f"skipped: {path}: not valid JSON — captions without thresholds")
        return {}


def caption_for(path: Path, found: dict) -> str:
    """What a plot shows, in words, with the thresholds of ``analysis.json`` (``found``) when known."""
    conf = found.get("confusion") or {}
    t, iou = conf.get("score_threshold"), conf.get("iou", 0.5)
    at = f"score ≥ {t:.2f}" if isinstance(t, (int, float)) else "the analysis' score threshold"
    name = path.stem.lower()
    texts = {
        "loss": "Training loss and its parts, mean of each logging window, against the iteration (log scale).",
        "lr": "Learning rate against the iteration (warm-up, then the schedule).",
        "val_loss": "Validation loss against the epoch: rising while the training loss falls means over-fitting.",
        "val_metrics": "Validation AP numbers against the epoch (0..1).",
        "per_class_ap": "AP of each class for every protocol: the short bars are the classes to work on.",
        "confusion_matrix": f"Rows: ground-truth class; columns: predicted class; detections with {at} matched "
        f"one-to-one to GT boxes at IoU ≥ {iou:g}. The background column counts missed GT boxes, the background "
        "row false detections; colour is the fraction of the row.",
        "errors": f"Left: each kind of error among the detections with {at} (the operating point), and the GT boxes "
        "they miss. Right: AP50 points the whole curve would gain if that kind of error were fixed "
        "(all scores, TIDE-style; gains overlap, so they do not add up).",
    }
    if name.startswith("pr_curves"):
        return (
            f"Precision against recall of each class at IoU > {iou:g}: the thin line after every detection, "
            f"the step line the interpolated precision AP integrates; the red dot is the operating point ({at})."
        )
    return texts.get(name, path.name)


def _figures(paths: list[Path], found: dict | None = None) -> str:
    items = []
    for p in paths:
        text = caption_for(p, found or {})
        items.append(
            f'<figure><img src="{plot_uri(png_bytes(p))}" alt="{esc(text)}"><figcaption>{esc(text)}</figcaption></figure>'
        )
    return '<div class="grid">' + "".join(items) + "</div>"


def _config_section(info: RunInfo) -> str:
    if not info.config:
        return section("config", "Config", note("config.yaml not found in the run folder."))
    facts = [
        ["model", info.model_name],
        ["classes", ", ".join(info.class_names) or "?"],
        ["train data", info.config.get("data", "?")],
        ["val data", info.config.get("val") or "auto"],
        ["weights", info.config.get("weights", "?")],
        ["epochs", info.config.get("epochs", "?")],
    ]
    text = yaml.safe_dump(info.config, sort_keys=False, allow_unicode=True)
    changed = changed_keys(info.config)
    body = table(["key", "value"], facts)
    if changed:
        body += "<h3>Settings that differ from detlab's defaults</h3>" + table(
            ["key", "this run", "default", "what it is"], changed
        )
    body += f"<details><summary>Full config.yaml ({len(info.config)} keys)</summary><pre>{esc(text)}</pre></details>"
    return section("config", "Config", body)


def count_boxes(n: int) -> str:
    """``1 box`` / ``3 boxes``, for captions."""
    return f"{n} box" if n == 1 else f"{n} boxes"


def _short(value) -> str:
    if isinstance(value, float):  # 0.3333333333333333 → 0.333333: a setting, not a measurement
        value = float(f"{value:.6g}")
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "…"


def changed_keys(config: dict) -> list[list[str]]:
    """``[[key, value, default, comment]]`` for every config key whose value is not ``TrainConfig``'s default
    (paths and the output folder left out: the table above has them)."""
    import dataclasses
    import inspect

    from detlab.config import TrainConfig

    defaults = dataclasses.asdict(TrainConfig())
    comments = dict(re.findall(r"^\s+(\w+):[^\n#]*#\s*(.+)$", inspect.getsource(TrainConfig), re.M))
    rows = []
    for key, value in config.items():
        if key in ("data", "val", "out", "model", "weights", "epochs") or key not in defaults:
            continue
        if value != defaults[key]:
            rows.append([key, _short(value), _short(defaults[key]), comments.get(key, "")])
    return rows


def _curves_section(info: RunInfo, plots: list[Path], tmp: Path) -> str:
    found = [p for p in plots if _kind(p) == "curves"]
    if not found and info.lines:
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            from detlab.report.plots import plot_training_curves

            plot_training_curves(info.path / "metrics.jsonl", tmp)
            found = sorted(tmp.glob("*.png"))
        except (ImportError, DetlabError, ValueError, KeyError) as e:
            return section("curves", "Training curves", note(f"could not plot metrics.jsonl ({e})."))
    if not found:
        return section(
            "curves", "Training curves", note("no metrics.jsonl and no plots/*.png in the run folder.")
        )
    return section("curves", "Training curves", _figures(found))


def metrics_rows(result: dict) -> list[list[str]]:
    """``[[name, value %], …]``: the 12 COCO numbers then each VOC protocol's mAP present in ``result``."""
    rows = [[f"COCO {k}", pct(result["coco"].get(k))] for k in COCO_KEYS if k in result.get("coco", {})]
    rows += [[f"{p.upper()} mAP@0.5", pct(result[p].get("mAP"))] for p in VOC_PROTOCOLS if p in result]
    return rows


def _metrics_section(info: RunInfo) -> str:
    if not info.final:
        return section(
            "metrics", "Metrics", note("no evaluation found (eval/*.json or eval lines in metrics.jsonl).")
        )
    body = f"<p>From <code>{esc(info.final_source)}</code>; values in %.</p>"
    body += table(["metric", "value (%)"], metrics_rows(info.final))
    if "val_loss" in info.final and isinstance(info.final["val_loss"], dict):
        body += "<h3>Validation loss</h3>" + table(
            ["loss", "value"],
            [[k, f"{v:.4f}"] for k, v in info.final["val_loss"].items() if isinstance(v, (int, float))],
        )
    return section("metrics", "Metrics", body)


def per_class_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of per-class AP (%) for every protocol in ``result`` that has ``per_class``."""
    protocols = [p for p in ("coco",) + VOC_PROTOCOLS if isinstance(result.get(p, {}).get("per_class"), dict)]
    names: list[str] = []
    for p in protocols:
        names += [n for n in result[p]["per_class"] if n not in names]
    header = ["class"] + [("COCO AP" if p == "coco" else f"{p.upper()} AP") for p in protocols]
    return header, [[n] + [pct(result[p]["per_class"].get(n)) for p in protocols] for n in names]


def _per_class_section(info: RunInfo, plots: list[Path], tmp: Path) -> str:
    header, rows = per_class_table(info.final)
    found = [p for p in plots if _kind(p) == "per_class"]
    if not found and rows:
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            from detlab.report.plots import plot_per_class_ap

            out = tmp / "per_class_ap.png"
            plot_per_class_ap(info.final, out)
            found = [out] if out.is_file() else sorted(tmp.glob("*per_class*.png"))
        except (ImportError, DetlabError, ValueError, KeyError, TypeError) as e:
            logger.info(f"note: per-class AP bars not drawn ({e})")
    if not rows and not found:
        return section("per-class", "Per-class AP", note("the evaluation has no per-class AP."))
    body = (_figures(found) if found else note("per-class AP bar chart not available.")) + table(header, rows)
    return section("per-class", "Per-class AP", body)


def _plot_section(sid: str, title: str, plots: list[Path], kind: str, run: Path, found: dict) -> str:
    paths = [p for p in plots if _kind(p) == kind]
    if not paths:
        return section(
            sid,
            title,
            note(
                f"no {title.lower()} plot in plots/ or eval/: the run has no final evaluation "
                f"(training without validation data, or stopped early) — `detlab eval {run}` writes it."
            ),
        )
    return section(sid, title, _figures(paths, found))


def before_after_rows(before: dict, after: dict) -> list[list[str]]:
    """``[[metric, before %, after %, change]]`` for every metric both evaluations have."""
    rows = []
    b_rows, a_rows = dict(map(tuple, metrics_rows(before))), dict(map(tuple, metrics_rows(after)))
    for name, a in a_rows.items():
        b = b_rows.get(name)
        if b is None:
            continue
        change = f"{float(a) - float(b):+.1f}" if "–" not in (a, b) else "–"
        rows.append([name, b, a, change])
    return rows


def _before_after_section(info: RunInfo) -> str:
    if not info.before:
        return section(
            "before-after",
            "Before / after fine-tuning",
            note(
                "no eval/before.json: the run did not evaluate before its first step "
                "(it does when it starts from pretrained weights, or with --set eval_before=true)."
            ),
        )
    if not info.final:
        return section(
            "before-after", "Before / after fine-tuning", note("no final evaluation to compare with.")
        )
    rows = before_after_rows(info.before, info.final)
    return section(
        "before-after",
        "Before / after fine-tuning",
        "<p>Values in %; change in points.</p>" + table(["metric", "before", "after", "change"], rows),
    )


def draw_png(
    image: torch.Tensor, boxes, labels, class_names: list[str], scores=None, ground_truth: bool = False
) -> bytes:
    """PNG bytes of ``image`` (``float32 [3, H, W]`` in 0..1) with xyxy absolute ``boxes`` drawn by ``report.draw``
    (dashed for ``ground_truth``)."""
    from detlab.report.draw import draw_boxes

    return png_bytes(draw_boxes(image, boxes, labels, class_names, scores=scores, ground_truth=ground_truth))


def sample_indices(n_images: int, n: int) -> list[int]:
    """``n`` indices spread evenly over a dataset (the same ones every time)."""
    return sorted({int(i) for i in np.linspace(0, n_images - 1, num=min(n, n_images))}) if n_images else []


def enlarged(image: torch.Tensor, *boxes: torch.Tensor) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
    """A small image scaled up by a whole factor until its long side reaches ``SAMPLE_MIN_SIDE``.

    Nearest-neighbour, so the pixels a model saw stay visible as they are; boxes (``[N, 4]`` xyxy
    pixels of ``image``) scale with it. Returns ``(factor, image, boxes)``; factor 1 leaves both.
    """
    factor = math.ceil(SAMPLE_MIN_SIDE / max(image.shape[-2:]))
    if factor <= 1:
        return 1, image, list(boxes)
    big = torch.nn.functional.interpolate(image[None].float(), scale_factor=factor, mode="nearest")[0]
    return factor, big, [torch.as_tensor(b, dtype=torch.float32) * factor for b in boxes]


def _samples_section(info: RunInfo, score: float = 0.5) -> str:
    title = "Sample predictions beside ground truth"
    if info.checkpoint is None:
        return section("samples", title, note("no checkpoint in checkpoints/: section skipped."))
    try:
        from detlab.predict import Detector
        from detlab.report.draw import draw_boxes  # fail here, before any model runs

        detector = Detector.from_run(info.path, device="cpu")
        dataset = validation_dataset(info.config)
    except (DetlabError, ImportError, OSError, RuntimeError) as e:
        return section(
            "samples", title, note(f"model or validation data unavailable ({e}); section skipped.")
        )
    rows = []
    for i in sample_indices(len(dataset), NUM_SAMPLES):
        image, target = dataset[i]
        det = detector.detect([image], score=score)[0]
        name = Path(dataset.records.images[i].file).name
        factor, shown, (gt_boxes, det_boxes) = enlarged(image, target["boxes"], det["boxes"])
        if factor > 1:
            name += f" (shown ×{factor})"
        gt = draw_boxes(shown, gt_boxes, target["labels"], list(dataset.class_names), ground_truth=True)
        pred = draw_boxes(shown, det_boxes, det["labels"], detector.class_names, scores=det["scores"])
        n_gt, n_pred = len(target["boxes"]), len(det["boxes"])
        rows.append(
            f'<div class="grid">{photo_figure(gt, f"{name}: ground truth, dashed ({count_boxes(n_gt)})")}'
            f"{photo_figure(pred, f'{name}: detections with score ≥ {score} ({count_boxes(n_pred)})')}</div>"
        )
    if not rows:
        return section("samples", title, note("the validation data holds no images."))
    return section("samples", title, "".join(rows))


def operating_point_note(found: dict) -> str:
    """One line on the score threshold the error counts and the confusion matrix use (``analysis.json``)."""
    point = found.get("operating_point") or {}
    if "chosen" not in point:
        return ""
    how = {
        "F1-max": "the score that maximises F1 over all classes",
        "given": "given with --score",
        "default": "the default: F1 has no maximum (no true positive)",
    }.get(point.get("chosen_by"), "")
    text = f"Operating point: score ≥ {point['chosen']:.2f}, {how}"
    if defined(point.get("f1")) and point.get("chosen_by") == "F1-max":
        text += (
            f" — precision {100 * point['precision']:.1f} %, recall {100 * point['recall']:.1f} %, "
            f"F1 {100 * point['f1']:.1f} % at IoU {found.get('confusion', {}).get('iou', 0.5):g}"
        )
    return f'<p class="note">{esc(text)}. The error breakdown and the confusion matrix count detections above it.</p>'


def _browser_section(info: RunInfo) -> str:
    title = "Prediction browser"
    try:
        from detlab.report.browser import browser_section, run_predictions

        dataset = validation_dataset(info.config)
        detections = run_predictions(info.path, dataset)
    except (DetlabError, ImportError, OSError, RuntimeError) as e:
        return section(
            "browser", title, note(f"model or validation data unavailable ({e}); section skipped.")
        )
    return browser_section(dataset.records, [(info.name, detections)])


# --- entry points ---------------------------------------------------------------------------


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's self-contained HTML report.

    Args:
        run_dir: a run folder made by ``detlab train``.
        out: HTML path (default ``RUN/report.html``).

    Returns:
        The path written.
    """
    info = load_run(run_dir)
    out = Path(out) if out else info.path / "report.html"
    plots = plot_files(info.path)
    found = read_analysis(info.path)
    with tempfile.TemporaryDirectory() as tmp:
        sections = [
            _config_section(info),
            _curves_section(info, plots, Path(tmp) / "curves"),
            _metrics_section(info) + operating_point_note(found),
            _per_class_section(info, plots, Path(tmp) / "per_class"),
            _plot_section("pr-curves", "PR curves", plots, "pr", info.path, found),
            _plot_section("confusion", "Confusion matrix", plots, "confusion", info.path, found),
            _plot_section("errors", "Error breakdown", plots, "errors", info.path, found),
            _before_after_section(info),
            _samples_section(info),
            _browser_section(info),
        ]
        other = [p for p in plots if _kind(p) == "other"]
        if other:
            sections.append(section("other-plots", "Other plots", _figures(other)))
    ap = info.final.get("coco", {}).get("AP")
    subtitle = f"{info.model_name} · {len(info.class_names)} classes · COCO AP {pct(ap)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(f"detlab run report: {info.name}", subtitle, sections), encoding="utf-8")
    return out


def report_command(run: str | Path, out: str | Path | None = None) -> int:
    """``detlab report RUN [--out FILE]``: write the report and print where it is."""
    path = write_report(run, out)
    print(f"report → {path}")
    return 0
