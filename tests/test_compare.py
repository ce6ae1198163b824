"""detlab compare: the table comes from each run's evaluation, CSV and Markdown agree, HTML is whole."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from test_report_html import assert_self_contained, parse
from test_report_runfolder import build_tiny, make_run, one_thread  # noqa: F401  (autouse fixture)


def _md_rows(text: str) -> list[list[str]]:
    table = text.split("\n\n")[2]  # title, sentence, then the main table
    lines = [line for line in table.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines if "---" not in line]


def test_compare_two_runs(tmp_path, bccd, monkeypatch):
    from detlab.cli import main
    from detlab.report import compare

    monkeypatch.setattr(compare, "GALLERY_POOL", 3)
    monkeypatch.setattr(
        compare, "GALLERY_SCORE", 0.0
    )  # untrained models: keep their weak boxes so they differ
    monkeypatch.setattr(compare, "GALLERY_SIZE", 2)
    monkeypatch.setattr(compare, "LATENCY_IMAGES", 1)
    monkeypatch.setattr(compare, "LATENCY_WARMUP", 1)
    val = f"{bccd}:val"
    a = make_run(tmp_path, "a", ap=0.30, val=val, seed=0, sec_per_iter=0.6)
    b = make_run(tmp_path, "b", ap=0.45, val=val, seed=1, sec_per_iter=0.3)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--data", val]) == 0

    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == compare.COLUMNS
    col = {name: i for i, name in enumerate(rows[0])}
    ra, rb = rows[1], rows[2]
    assert (ra[col["run"]], rb[col["run"]]) == ("a", "b")
    # AP numbers from each run's eval/final.json: AP = ap, AP50 = ap + .01, …, APl = ap + .05 (in %)
    for i, key in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        assert float(ra[col[key]]) == pytest.approx(100 * (0.30 + 0.01 * i), abs=0.051)
        assert float(rb[col[key]]) == pytest.approx(100 * (0.45 + 0.01 * i), abs=0.051)
    assert float(ra[col["train time (min)"]]) == pytest.approx(40 * 0.6 / 60, abs=0.051)
    n_params = sum(p.numel() for p in build_tiny().parameters())
    assert float(ra[col["params (M)"]]) == pytest.approx(n_params / 1e6, abs=0.006)
    assert float(ra[col["GFLOPs"]]) > 0 and float(ra[col["ms/img"]]) > 0

    md = (out / "compare.md").read_text()
    assert _md_rows(md) == rows  # the Markdown table is the CSV, cell for cell
    assert "Δ b" in md and "+15.0" in md  # per-class AP change of b against a

    parsed = parse(out / "compare.html")
    assert {"table", "curves", "per-class", "gallery"} <= set(parsed.sections)
    assert_self_contained(out / "compare.html", parsed)
    assert parsed.sections["curves"]["images"] == 1 and parsed.sections["per-class"]["images"] == 1
    try:
        import detlab.report.draw  # noqa: F401
    except ImportError:
        pytest.skip("report.draw not there yet: gallery not checked")
    assert parsed.sections["gallery"]["images"] == 2 * 3  # ground truth + each run, per image
    shown = [float(x) for x in re.findall(r"disagreement (\d\.\d\d)", parsed.sections["gallery"]["text"])]
    assert len(shown) == 2 and shown == sorted(shown, reverse=True) and shown[-1] > 0


def test_pair_f1_hand_computed():
    from detlab.report.compare import disagreement, pair_f1

    a = {
        "boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32),
        "labels": np.array([0, 0, 1]),
    }
    b = {
        "boxes": np.array([[0, 0, 10, 12], [21, 21, 31, 31], [50, 50, 60, 60]], np.float32),
        "labels": np.array([0, 1, 0]),
    }
    # class 0: a's first box matches b's first (IoU 100/120 ≥ .5); a's second has no class-0 partner left;
    # class 1: a[2] vs b[1] IoU 0 → 1 agreement of 3 + 3 boxes
    assert pair_f1(a, b) == pytest.approx(2 * 1 / 6)
    assert pair_f1(a, a) == 1.0
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, int)}
    assert pair_f1(empty, empty) == 1.0 and pair_f1(a, empty) == 0.0
    point = {
        "boxes": np.array([[5, 5, 5, 5]], np.float32),
        "labels": np.array([0]),
    }  # zero area: IoU 0, not NaN
    assert pair_f1(point, point) == 0.0
    assert disagreement([a, a, a]) == pytest.approx(0.0)
    assert disagreement([a, b, a]) == pytest.approx(1 - (1 / 3 + 1 / 3 + 1) / 3)
