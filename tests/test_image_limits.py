"""Images detlab refuses by their header: over the pixel limit (decompression bombs, huge scans) and strips
too thin to resize for training. Each is one counted line in `check`, at load time and in `predict`."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from detlab.cli import main
from detlab.data.checks import validate_annotations, validate_records
from detlab.data.dataset import read_image
from detlab.data.formats import read_records
from detlab.data.records import ImageRecord, Records
from detlab.errors import DataError


def bomb_png(path, width=20000, height=20000):
    """A real 4x4 PNG whose IHDR claims ``width x height`` (PIL reads the size from the header alone)."""
    Image.new("RGB", (4, 4), (90, 30, 200)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def bomb_jpeg(path, width=20000, height=20000):
    """A real 8x8 JPEG whose SOF0 frame header claims ``width x height``."""
    Image.new("RGB", (8, 8), (10, 200, 40)).save(path, format="JPEG", quality=90)  # whatever the name says
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def voc_with(tmp_path, images: dict[str, tuple[int, int]]):
    """A VOC year folder: one box per image; ``images`` maps stem → declared (W, H)."""
    year = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    for stem, (w, h) in images.items():
        (year / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.png</filename><size><width>{w}</width><height>{h}</height></size>"
            f"<object><name>cell</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{min(w, 3)}</xmax>"
            f"<ymax>{min(h, 3)}</ymax></bndbox></object></annotation>"
        )
    (year / "ImageSets/Main/val.txt").write_text("".join(f"{s}\n" for s in images))
    return year


@pytest.mark.parametrize("make", [bomb_png, bomb_jpeg])
def test_header_over_the_pixel_limit_is_one_skipped_line(tmp_path, capsys, make):
    year = voc_with(tmp_path, {"big": (20000, 20000), "ok": (64, 48)})
    make(year / "JPEGImages" / "big.png")
    Image.new("RGB", (64, 48)).save(year / "JPEGImages" / "ok.png")
    records = read_records(f"{year}:val")
    validate_records(records)
    assert [r.file.name for r in records.images] == ["ok.png"]
    lines = [p.line() for p in records.problems if p.severity == "skipped"]
    assert len(lines) == 1 and "big.png: file: more pixels than the limit of 179 megapixels" in lines[0]
    assert main(["check", f"{year}:val"]) == 0
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out and "limit of 179 megapixels" in cap.out
    with pytest.raises(DataError, match="big.png: more pixels than the limit of 179 megapixels"):
        read_image(year / "JPEGImages" / "big.png")


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    Image.new("RGB", (640, 480)).save(path)
    monkeypatch.setenv("DETLAB_MAX_PIXELS", "100000")
    with pytest.raises(
        DataError, match=r"640x480 pixels, over the limit of 0.1 megapixels .*DETLAB_MAX_PIXELS"
    ):
        read_image(path)
    monkeypatch.setenv("DETLAB_MAX_PIXELS", "1000000")
    assert tuple(read_image(path)[0].shape) == (3, 480, 640)


def test_scoring_never_opens_a_bomb_whose_size_is_declared(tmp_path):
    year = voc_with(tmp_path, {"big": (20000, 20000)})
    bomb_png(year / "JPEGImages" / "big.png")
    records = read_records(f"{year}:val")
    validate_annotations(records)
    assert (
        records.num_boxes == 1 and [p for p in records.problems if p.severity in ("error", "skipped")] == []
    )


def test_predict_skips_a_bomb_with_one_line(tmp_path, capsys):
    from detlab.predict import Detector

    bomb_png(tmp_path / "bomb.png")

    det = Detector.__new__(Detector)  # no model: the file must be refused before any forward pass
    det.skipped = []
    assert list(Detector.iter_predict(det, [tmp_path / "bomb.png"], progress=False)) == []
    assert len(det.skipped) == 1 and "limit of 179 megapixels" in det.skipped[0].line()


@pytest.mark.parametrize(
    "size, reason", [((700, 3), "shorter side under 8 px"), ((40, 1600), "aspect ratio 1:40 over 1:32")]
)
def test_strips_too_thin_to_resize_are_skipped_for_training_only(tmp_path, size, reason):
    year = voc_with(tmp_path, {"strip": size, "ok": (64, 48)})
    Image.new("RGB", size).save(year / "JPEGImages" / "strip.png")
    Image.new("RGB", (64, 48)).save(year / "JPEGImages" / "ok.png")
    records = read_records(f"{year}:val")
    validate_records(records)
    assert [r.file.name for r in records.images] == ["ok.png"]
    assert any(reason in p.line() and p.severity == "skipped" for p in records.problems)
    scoring = read_records(f"{year}:val")
    validate_annotations(scoring)
    assert len(scoring.images) == 2


def test_missing_size_and_missing_image_keeps_boxes_for_scoring(tmp_path):
    rec = ImageRecord(
        0,
        tmp_path / "gone.jpg",
        0,
        0,
        np.float32([[1, 2, 30, 40]]),
        np.int64([0]),
        np.zeros(1, bool),
        np.zeros(1, bool),
        ann_file=tmp_path / "gone.xml",
    )
    there = ImageRecord(
        1,
        tmp_path / "here.png",
        0,
        0,
        np.float32([[0, 0, 5, 5]]),
        np.int64([0]),
        np.zeros(1, bool),
        np.zeros(1, bool),
    )
    Image.new("RGB", (20, 10)).save(there.file)
    records = Records([rec, there], ["a"], ["a"], "voc", tmp_path)
    validate_annotations(records)
    assert records.num_boxes == 2 and (there.width, there.height) == (20, 10)
    line = next(p.line() for p in records.problems if p.field == "size")
    assert line == (
        "warning: " + str(tmp_path / "gone.xml") + ": size: no size declared and its image file is "
        "not here — its 1 boxes are scored as annotated"
    )


def test_header_cache_answers_unchanged_files_and_reprobes_changed_ones(tmp_path, monkeypatch):
    from detlab.data import checks
    from detlab.data.checks import probe_images

    monkeypatch.setenv("DETLAB_CACHE_DIR", str(tmp_path / "cache"))
    files = []
    for i, size in enumerate([(64, 48), (30, 40), (50, 50)]):
        files.append(tmp_path / f"im{i}.jpg")
        Image.new("RGB", size, (i * 60, 20, 90)).save(files[-1], quality=90)
    first = probe_images([str(f) for f in files], decode=False)
    assert [f[0] for f in first] == [(64, 48), (30, 40), (50, 50)]
    seen = []
    real = checks.probe_image
    monkeypatch.setattr(
        checks, "probe_image", lambda path, decode: seen.append(path.name) or real(path, decode)
    )
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])  # truncated since the last run: size changed
    Image.new("RGB", (20, 10)).save(files[2], quality=90)  # rewritten with another size
    again = probe_images([str(f) for f in files], decode=False)
    assert seen == ["im1.jpg", "im2.jpg"]  # im0 came from the cache
    assert again[0] == first[0] and isinstance(again[1], checks.Problem) and again[2][0] == (20, 10)
    (tmp_path / "cache" / "image_headers.sqlite3").write_bytes(b"not a database")
    assert [f[0] for f in probe_images([str(files[0])], decode=False)] == [
        (64, 48)
    ]  # a broken cache only costs time


def test_header_probes_report_progress_on_long_checks(tmp_path, capsys):
    from detlab.data.checks import probe_images

    files = []
    for i in range(3):
        files.append(str(tmp_path / f"p{i}.png"))
        Image.new("RGB", (16, 16)).save(files[-1])
    probe_images(files, decode=True, every=0.0)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("detlab: decoding images: 1/3, about ") and lines[0].endswith(
        "s left (0 unchanged since an earlier run)"
    )
    assert len(lines) == 2
