"""The prediction browser in report.html / compare.html, in a real headless Chromium (Selenium).

The page is checked against its embedded JSON, with the visibility rules of
``detlab/report/browser.js`` re-derived here in Python; the JSON itself is checked against
:mod:`detlab.evaluation.analysis` re-run on the thresholded detections. No network: the page
is a ``file://`` URL and holds every picture, script and style.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_report_runfolder import make_run, one_thread  # noqa: F401  (autouse fixture)

ERRORS = ("localization", "classification", "both", "duplicate", "background")


def synthetic_predictions(records, seed: int = 0) -> dict[int, dict]:
    """Detections made from the ground truth with every kind of error: jittered true positives, shifted
    (localization), relabelled (classification), duplicated, missed boxes and boxes on background."""
    rng = np.random.default_rng(seed)
    out = {}
    for rec in records.images:
        boxes, scores, labels = [], [], []
        for box, label in zip(rec.boxes.astype(float), rec.labels.tolist()):
            w = box[2] - box[0]
            fate = rng.random()
            if fate < 0.15:
                continue  # missed
            shift = np.array([0.45 * w, 0, 0.45 * w, 0]) if fate < 0.3 else rng.normal(0, 1, 4)
            other = (label + 1) % len(records.class_names)
            boxes.append(box + shift)
            labels.append(other if 0.3 <= fate < 0.4 else label)
            scores.append(rng.uniform(0.05, 1))
            if fate > 0.9:  # a duplicate below the original
                boxes.append(box + rng.normal(0, 1, 4))
                labels.append(label)
                scores.append(scores[-1] * rng.uniform(0.2, 0.9))
        for _ in range(2):  # background: small boxes anywhere
            x, y = rng.uniform(0, 600), rng.uniform(0, 440)
            boxes.append([x, y, x + 20, y + 20])
            labels.append(int(rng.integers(len(records.class_names))))
            scores.append(rng.uniform(0.05, 1))
        out[rec.image_id] = {
            "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
            "scores": np.asarray(scores, np.float64),
            "labels": np.asarray(labels, np.int64),
        }
    return out


@functools.lru_cache(maxsize=1)
def bccd_val(bccd: Path):
    from detlab.data.dataset import load_dataset

    return load_dataset(f"{bccd}:val").records


def run_with_predictions(root: Path, bccd: Path, name: str, seed: int) -> Path:
    """A tiny run on BCCD val whose ``eval/predictions.json`` holds :func:`synthetic_predictions`."""
    from detlab.evaluation.final import predictions_json

    run = make_run(root, name=name, ap=0.3, val=f"{bccd}:val", seed=seed)
    records = bccd_val(bccd)
    doc = predictions_json(records, synthetic_predictions(records, seed))
    (run / "eval" / "predictions.json").write_text(json.dumps(doc))
    return run


def embedded(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="browser-data">(.*?)</script>', text, re.S)
    return json.loads(blob.group(1).replace("<\\/", "</"))


# --- the rules of browser.js, in Python --------------------------------------------------------


def missed(g, run, t):
    return g[5 + run] is not None and g[5 + run] < t


def det_shown(data, d, t, cls, kind):
    return d[5] >= t and (cls < 0 or d[4] == cls) and (kind == "all" or data["types"][d[6]] == kind)


def gt_shown(g, run, t, cls, kind):
    return (cls < 0 or g[4] == cls) and (kind != "missed" or missed(g, run, t))


def expected(data, t, cls=-1, kind="all") -> dict:
    """Tiles and boxes the page must show at threshold ``t`` with these filters."""
    tiles = dets = gts = 0
    for im in data["images"]:
        n_det = sum(
            det_shown(data, d, t, cls, kind) for run in range(len(data["runs"])) for d in im["det"][run]
        )
        n_gt = [sum(gt_shown(g, r, t, cls, kind) for g in im["gt"]) for r in range(len(data["runs"]))]
        hits = n_det + (max(n_gt) if kind in ("all", "missed") else 0)
        if (cls < 0 and kind == "all") or hits > 0:
            tiles, dets, gts = tiles + 1, dets + n_det, gts + sum(n_gt)
    return {"tiles": tiles, "dets": dets, "gts": gts}


def errors_of(data, im, run, t) -> int:
    wrong = sum(d[5] >= t and data["types"][d[6]] in ERRORS for d in im["det"][run])
    return wrong + sum(missed(g, run, t) for g in im["gt"])


# --- the embedded data against the analysis ----------------------------------------------------


def test_embedded_types_match_the_analysis_at_any_threshold(bccd):
    """The page decides types once and missed boxes by ``found_at``; re-running classify_errors on the
    detections above a threshold must give the same types and the same missed boxes."""
    from detlab.evaluation import analysis, matching
    from detlab.report.browser import TYPES, _flat

    records = bccd_val(bccd)
    flat = _flat(records, synthetic_predictions(records))
    gt = matching.GroundTruth.from_records(records)
    kind, found_at = analysis.match_types(gt, flat["image"], flat["boxes"], flat["scores"], flat["labels"])
    assert set(kind) >= set(TYPES) - {"ignored"} - {"both"}  # the fixture makes every main kind
    for t in (0.05, 0.37, 0.8):
        keep = flat["scores"] >= t
        again = analysis.classify_errors(
            gt, flat["image"][keep], flat["boxes"][keep], flat["scores"][keep], flat["labels"][keep]
        )
        tp = again["match"]["tp"]
        assert (kind[keep][tp] == "true_positive").all()
        assert (
            kind[keep][~tp & ~again["match"]["ignored"]] == again["type"][~tp & ~again["match"]["ignored"]]
        ).all()
        np.testing.assert_array_equal(found_at < t, again["missed"])


# --- in Chromium -------------------------------------------------------------------------------


def _chromium() -> tuple[str, str]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if Path(p).exists()), None
    )
    if not browser or not driver:
        pytest.skip(
            f"no headless browser here (chromium: {browser or 'missing'}, chromedriver: {driver or 'missing'}); "
            "`apt-get install chromium chromium-driver` (what .ci/run does) runs this test"
        )
    return browser, driver


@pytest.fixture
def chrome():
    browser, driver_path = _chromium()
    try:  # a browser without Selenium is a broken test setup, not a reason to skip
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise AssertionError(
            f"chromium is installed but selenium is not ({e}): pip install -e '.[test]'"
        ) from e
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def shown(driver) -> dict:
    return driver.execute_script(
        "const r = document.getElementById('browser');"
        "return {tiles: r.querySelectorAll('.tiles .tile').length,"
        " dets: r.querySelectorAll('.tiles rect.det').length, gts: r.querySelectorAll('.tiles rect.gt').length,"
        " first: (r.querySelector('.tiles .tile') || {dataset: {}}).dataset.name};"
    )


def test_report_browser_in_chromium(tmp_path, bccd, chrome, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from detlab.report import browser, html

    monkeypatch.setattr(html, "NUM_SAMPLES", 1)
    monkeypatch.setattr(browser, "MAX_IMAGES", 24)  # an even sample keeps the test in seconds
    run = run_with_predictions(tmp_path, bccd, "run", seed=0)
    out = html.write_report(run)
    data = embedded(out)
    assert len(data["images"]) == 24 and data["runs"] == ["run"]
    chrome.get(out.resolve().as_uri())
    root = chrome.find_element(By.ID, "browser")
    assert shown(chrome)["tiles"] == 24
    assert {k: shown(chrome)[k] for k in ("tiles", "dets", "gts")} == expected(data, data["score"])

    slider = root.find_element(By.CSS_SELECTOR, ".score")
    slider.send_keys(Keys.HOME)
    for _ in range(70):
        slider.send_keys(Keys.RIGHT)  # keyboard moves, each an input event, as a person's arrow keys
    t = float(slider.get_attribute("value"))
    assert t == pytest.approx(0.70)
    assert root.find_element(By.CSS_SELECTOR, ".score-value").text == "0.70"
    page = shown(chrome)
    assert {k: page[k] for k in ("tiles", "dets", "gts")} == expected(data, t)

    rare = min(
        range(len(data["classes"])), key=lambda c: expected(data, t, cls=c)["tiles"]
    )  # a filter that hides
    Select(root.find_element(By.CSS_SELECTOR, ".class")).select_by_visible_text(data["classes"][rare])
    page, want = shown(chrome), expected(data, t, cls=rare)
    assert {k: page[k] for k in ("tiles", "dets", "gts")} == want and 0 < want["tiles"] < 24

    Select(root.find_element(By.CSS_SELECTOR, ".class")).select_by_visible_text("all classes")
    kind = root.find_element(By.CSS_SELECTOR, ".type")
    Select(kind).select_by_visible_text("localisation error")
    page, want = shown(chrome), expected(data, t, kind="localization")
    assert {k: page[k] for k in ("tiles", "dets", "gts")} == want and want["dets"] > 0
    Select(kind).select_by_visible_text("missed (GT)")
    page, want = shown(chrome), expected(data, t, kind="missed")
    assert page["dets"] == 0 and page["gts"] == want["gts"] > 0 and page["tiles"] == want["tiles"]
    assert len(root.find_elements(By.CSS_SELECTOR, ".tiles rect.gt.missed")) == want["gts"]

    Select(kind).select_by_visible_text("all boxes")
    Select(root.find_element(By.CSS_SELECTOR, ".sort")).select_by_visible_text("most errors")
    worst = min(data["images"], key=lambda im: (-errors_of(data, im, 0, t), im["name"]))
    assert shown(chrome)["first"] == worst["name"]

    root.find_element(By.CSS_SELECTOR, ".tiles .tile").click()  # opens full size
    full = root.find_element(By.CSS_SELECTOR, ".full")
    assert full.is_displayed()
    size = chrome.execute_script(
        "const i = document.querySelector('#browser .full img'); return [i.naturalWidth, i.clientWidth];"
    )
    thumb = chrome.execute_script("return document.querySelector('#browser .tiles img').clientWidth;")
    assert size[0] == 640 and size[1] > 2 * thumb
    assert chrome.get_log("browser") == []  # no script error, no blocked request


def pairwise_disagreement(im, t) -> float:
    """1 - mean F1 over pairs of runs, greedy one-to-one matching within a class at IoU >= 0.5."""
    from detlab.evaluation.matching import box_iou_pairs

    kept = [[d for d in ds if d[5] >= t] for ds in im["det"]]
    f1s = []
    for a, b in itertools.combinations(kept, 2):
        pairs = [
            (float(box_iou_pairs(np.array([x[:4]]), np.array([y[:4]]))[0]), i, j)
            for i, x in enumerate(a)
            for j, y in enumerate(b)
            if x[4] == y[4]
        ]
        used_a, used_b = set(), set()
        for v, i, j in sorted(pairs, key=lambda p: -p[0]):
            if v >= 0.5 and i not in used_a and j not in used_b:
                used_a.add(i), used_b.add(j)
        f1s.append(2 * len(used_a) / (len(a) + len(b)) if a or b else 1.0)
    return 1 - float(np.mean(f1s))


def test_compare_browser_sorts_by_disagreement(tmp_path, bccd, chrome, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from detlab.report import browser, compare

    monkeypatch.setattr(browser, "MAX_IMAGES", 12)
    monkeypatch.setattr(compare, "GALLERY_POOL", 2)
    monkeypatch.setattr(compare, "LATENCY_IMAGES", 1)
    runs = [run_with_predictions(tmp_path, bccd, f"run{s}", seed=s) for s in (0, 1)]
    out = compare.write_comparison([str(r) for r in runs], tmp_path / "cmp")
    page_file = out if out.suffix == ".html" else out / "compare.html"
    data = embedded(page_file)
    assert data["runs"] == ["fcos_r18_fpn (run0)", "fcos_r18_fpn (run1)"] and len(data["images"]) == 12
    chrome.get(page_file.resolve().as_uri())
    root = chrome.find_element(By.ID, "browser")
    assert len(root.find_elements(By.CSS_SELECTOR, ".tiles .tile:first-child .pic")) == 2  # one per run
    Select(root.find_element(By.CSS_SELECTOR, ".sort")).select_by_visible_text("most disagreement")
    t = data["score"]
    order = sorted(data["images"], key=lambda im: (-round(pairwise_disagreement(im, t), 9), im["name"]))
    names = chrome.execute_script(
        "return [...document.querySelectorAll('#browser .tiles .tile')].map(e => e.dataset.name);"
    )
    assert names[:3] == [im["name"] for im in order[:3]]
    assert chrome.get_log("browser") == []
