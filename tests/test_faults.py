"""Faults in files and folders: every one is a single line naming the path and the cause, and the
previous state stays intact.

Checkpoints that are empty, weights-only or hold pickled code, on every command that loads one;
a full disk during a checkpoint, metrics or a conversion; read-only and not-a-directory output
folders; two trainings into one run folder. A few cases run ``python -m detlab`` and assert that
no traceback reaches stderr; the rest call the CLI in process.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ShapesDataset, TinyFCOS
from PIL import Image
from test_report_runfolder import make_run, one_thread  # noqa: F401  (autouse fixture)

from detlab.cli import main
from detlab.config import resolve
from detlab.data.convert import convert
from detlab.data.formats import read_records
from detlab.data.synthetic import write_shapes_dataset
from detlab.engine import checkpoint as ckpt_io
from detlab.engine.runlog import LOCK_NAME, run_lock
from detlab.engine.train import fit
from detlab.errors import OutputError, WeightsError

CHECKPOINT_FIX = "use a checkpoint written by `detlab train` (RUN/checkpoints/last.pt or best.pt)"
EMPTY = "the file is empty (0 bytes; a copy or save that was cut off)"
FULL = "No space left on device — the disk is full: free space or write elsewhere"
READ_ONLY = "Read-only file system — the file system is read-only: write elsewhere"
IN_THE_WAY = "File exists — a file is in the way of a folder of that name: choose another path"

# 8 images / batch 2 = 4 steps per epoch at 64 px: a whole run takes seconds.
SETS = [
    "epochs=1",
    "batch_size=2",
    "num_workers=0",
    "warmup_iters=2",
    "base_batch=2",
    "eval_batch_size=2",
    "device=cpu",
    "protocols=[coco]",
    "plots=false",
    "report=false",
    "quiet=true",
    "model_kwargs.min_size=64",
    "model_kwargs.max_size=64",
]


def _train_args(data, out, *extra, sets=SETS) -> list[str]:
    args = [
        "train",
        "--data",
        f"{data}:train",
        "--val",
        f"{data}:val",
        "--model",
        "fcos_r18_fpn",
        "--weights",
        "none",
        "--out",
        str(out),
        *extra,
    ]
    for s in sets:
        args += ["--set", s]
    return args


def _detlab(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "detlab", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def _one_line(err: str) -> str:
    """The error line of a command's stderr, after asserting it is the only ``detlab:`` line and no traceback."""
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("detlab: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("data"), num_train=8, num_val=2, size=64, seed=0)


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (90, 120, 30)).save(path)
    return path


class _Code:
    """Pickles to a call of ``os.system``: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --- checkpoints that cannot be used ---------------------------------------------------------------


def _run_with(tmp_path, name: str, content) -> Path:
    """A run folder whose best.pt and last.pt are ``content`` (bytes, or an object to torch.save)."""
    run = make_run(tmp_path, name=name)
    for file in ("best.pt", "last.pt"):
        path = run / "checkpoints" / file
        path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    return run


@pytest.mark.parametrize("command", ["eval", "predict", "export", "resume"])
def test_empty_checkpoint_is_one_line_on_every_command(tmp_path, image, capsys, command):
    run = _run_with(tmp_path, "empty", b"")
    ckpt = run / "checkpoints" / ("last.pt" if command == "resume" else "best.pt")
    argv = {
        "eval": ["eval", str(run)],
        "predict": ["predict", str(run), str(image), "--out", str(tmp_path / "p")],
        "export": ["export", str(run)],
        "resume": ["train", "--resume", str(run)],
    }[command]
    assert main(argv) == 2
    assert (
        _one_line(capsys.readouterr().err)
        == f"detlab: {ckpt}: cannot load checkpoint: {EMPTY}; {CHECKPOINT_FIX}"
    )
    assert not (tmp_path / "p").exists() and not (run / "model.onnx").exists()


def test_empty_checkpoint_end_to_end_has_no_traceback(tmp_path):
    run = _run_with(tmp_path, "empty", b"")
    done = _detlab("train", "--resume", run)
    assert done.returncode == 2
    assert _one_line(done.stderr) == (
        f"detlab: {run}/checkpoints/last.pt: cannot load checkpoint: {EMPTY}; {CHECKPOINT_FIX}"
    )


def test_empty_weights_file_is_one_line(tmp_path, shapes, capsys):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    args = _train_args(shapes, tmp_path / "run")
    args[args.index("--weights") + 1] = str(weights)
    assert main(args) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"detlab: {weights}: cannot read weights file: {EMPTY}; it must be a state dict or a detlab checkpoint "
        "saved with torch.save"
    )


@pytest.mark.parametrize("model", ["fcos_r18_fpn", "ssd300_vgg16"])
def test_cut_off_pretrained_file_in_the_hub_cache_is_one_line(tmp_path, monkeypatch, model):
    """A download cut off into torch's hub cache: building the model names the file and says to fetch it again."""
    import torch.hub

    from detlab.errors import WeightsError
    from detlab.models.backbones import RESNET_WEIGHTS
    from detlab.models.catalogue import build_model
    from detlab.models.ssd import VGG16_IMAGENET_URL

    url = RESNET_WEIGHTS[18].url if model.startswith("fcos") else VGG16_IMAGENET_URL
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = tmp_path / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir()
    cached.write_bytes(b"PK\x03\x04 cut off")  # the first bytes of a zip, then nothing
    with pytest.raises(WeightsError) as info:
        build_model(model, num_classes=3, weights="imagenet")
    line = str(info.value)
    assert (
        line.startswith(f"{cached}: cannot read pretrained weights: not a readable PyTorch file")
        and "\n" not in line
    )
    assert line.endswith(f"delete it and download {url} again (or place that file there)")


def test_empty_checkpoint_leaves_the_report_to_the_metrics(tmp_path, capsys):
    run = _run_with(tmp_path, "empty", b"")
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        f"skipped: {run}/checkpoints/best.pt: cannot load checkpoint: {EMPTY}; the report is written without it"
        in err.splitlines()
    )
    assert (run / "report.html").is_file()


def test_weights_only_checkpoint_cannot_be_resumed(tmp_path, capsys):
    run = make_run(tmp_path)  # model, class map and config, but no optimizer, RNG or sampler state
    torch.save(
        torch.load(run / "checkpoints" / "best.pt", weights_only=True), run / "checkpoints" / "last.pt"
    )
    assert main(["train", "--resume", str(run)]) == 2
    last = run / "checkpoints" / "last.pt"
    assert _one_line(capsys.readouterr().err) == (
        f"detlab: {last}: holds weights but no training state (optimizer, scheduler, scaler, rng, sampler, log "
        f"missing), so the run cannot be resumed; start a new run from these weights with "
        f"`detlab train --weights {last} --out NEW_RUN …`"
    )


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_bare_weights_are_one_line_on_every_command(tmp_path, image, capsys, command):
    state = torch.load(make_run(tmp_path, name="src") / "checkpoints" / "best.pt", weights_only=True)["model"]
    run = _run_with(tmp_path, "bare", {"model": state})
    best = run / "checkpoints" / "best.pt"
    argv = {
        "eval": ["eval", str(run)],
        "predict": ["predict", str(run), str(image), "--out", str(tmp_path / "p")],
        "export": ["export", str(run)],
    }[command]
    assert main(argv) == 1
    assert _one_line(capsys.readouterr().err) == (
        f"detlab: {best}: holds weights but not the model they belong to (checkpoint field model_name, num_classes "
        f"missing) — use a checkpoint written by `detlab train`, or start a run from these weights with "
        f"`detlab train --weights {best}`"
    )


def test_bare_state_dict_on_resume(tmp_path, capsys):
    run = _run_with(tmp_path, "bare", {"w": torch.ones(2)})
    last = run / "checkpoints" / "last.pt"
    assert main(["train", "--resume", str(run)]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"detlab: {last}: field 'model' missing; not a detlab checkpoint (a bare state dict is used with "
        f"`detlab train --weights {last}`)"
    )


def test_pickled_code_is_refused_in_detlabs_words(tmp_path, shapes, capsys):
    marker = tmp_path / "code_ran"
    run = _run_with(tmp_path, "hostile", {"model": {"w": torch.ones(1)}, "x": _Code(marker)})
    last = run / "checkpoints" / "last.pt"
    refused = (
        "the file holds Python objects (posix.system) besides tensors and plain values, which could run "
        "code when loaded, so detlab refuses it"
    )
    assert main(["train", "--resume", str(run)]) == 2
    assert (
        _one_line(capsys.readouterr().err)
        == f"detlab: {last}: cannot load checkpoint: {refused}; {CHECKPOINT_FIX}"
    )
    args = _train_args(shapes, tmp_path / "run")
    args[args.index("--weights") + 1] = str(last)
    assert main(args) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (
        f"detlab: {last}: cannot read weights file: {refused}; it must be a state dict or a detlab "
        "checkpoint saved with torch.save"
    )
    assert "weights_only" not in line and not marker.exists()


def test_truncated_checkpoint_is_one_line(tmp_path):
    path = ckpt_io.save_checkpoint({"model": {"w": torch.ones(100)}}, tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WeightsError) as err:
        ckpt_io.load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: cannot load checkpoint: not a readable PyTorch file (")
    assert str(err.value).endswith(f"); it may be truncated; {CHECKPOINT_FIX}")
    assert "\n" not in str(err.value) and "This is an internal miniz error" not in str(err.value)


# --- a full disk -----------------------------------------------------------------------------------


def _full_disk_save(monkeypatch, after: int = 0, variant: str = "oserror"):
    """torch.save that works ``after`` times, then fails as a full disk does (a real write into /dev/full)."""
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= after:
            return real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial")
        if variant == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with open("/dev/full", "wb", buffering=0) as full:  # torch's writer sees the failed write itself
            real(obj, full)

    monkeypatch.setattr(ckpt_io.torch, "save", save)


@pytest.mark.parametrize("variant", ["oserror", "torch_writer"])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, variant):
    if variant == "torch_writer" and not Path("/dev/full").exists():
        pytest.skip("/dev/full is needed for a real ENOSPC from torch's writer")
    path = ckpt_io.save_checkpoint({"model": {"w": torch.ones(2)}, "iteration": 2}, tmp_path / "last.pt")
    _full_disk_save(monkeypatch, variant=variant)
    if variant == "torch_writer":  # torch's writer names no errno: the free space decides the cause
        monkeypatch.setattr(ckpt_io.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=0))
    with pytest.raises(OutputError) as err:
        ckpt_io.save_checkpoint({"model": {"w": torch.zeros(2)}, "iteration": 4}, path)
    assert str(err.value) == f"{path}: cannot write checkpoint: {FULL}; the previous last.pt is intact"
    monkeypatch.undo()
    kept = ckpt_io.load_checkpoint(path)
    assert kept["iteration"] == 2 and torch.equal(kept["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file is gone


def test_full_disk_mid_training_stops_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    cfg = resolve(
        {
            "batch_size": 2,
            "num_workers": 0,
            "quiet": True,
            "plots": False,
            "report": False,
            "warmup_iters": 2,
            "epochs": 1,
            "base_batch": 2,
            "device": "cpu",
            "protocols": ["coco"],
            "checkpoint_every": 1,
            "out": str(tmp_path / "run"),
        },
        family="fcos",
    )
    _full_disk_save(monkeypatch, after=2)
    with pytest.raises(OutputError) as err:
        fit(TinyFCOS(), ShapesDataset(8), None, cfg)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert str(err.value) == (
        f"{last}: cannot write checkpoint: {FULL}; the previous last.pt is intact; continue "
        f"with `detlab train --resume {tmp_path / 'run'}` once it is fixed"
    )
    monkeypatch.undo()
    assert ckpt_io.load_checkpoint(last)["iteration"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="/dev/full gives a real ENOSPC")
def test_full_disk_on_metrics_end_to_end(tmp_path, shapes):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")  # every append to metrics.jsonl meets a full disk
    done = _detlab(*_train_args(shapes, run, sets=SETS + ["log_every=1"]))
    assert done.returncode == 1
    assert _one_line(done.stderr) == f"detlab: {run}/metrics.jsonl: cannot write metrics: {FULL}"


def test_full_disk_during_convert_leaves_no_dataset(tmp_path, shapes, monkeypatch):
    import detlab.data.convert as conv

    real, calls = conv.place_image, {"n": 0}

    def place(src, dst, link="hardlink"):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real(src, dst, link)

    monkeypatch.setattr(conv, "place_image", place)
    out = tmp_path / "out" / "yolo"
    with pytest.raises(OutputError) as err:
        convert(f"{shapes}:train", out, "yolo")
    assert str(err.value).startswith(f"{out}: cannot write dataset: No space left on device at ")
    assert str(err.value).endswith(
        " — the disk is full: free space or write elsewhere; nothing was left there"
    )
    assert list((tmp_path / "out").iterdir()) == []  # neither the dataset nor its hidden partial folder


def test_failed_second_split_restores_the_existing_dataset(tmp_path, shapes, monkeypatch):
    import detlab.data.convert as conv

    out = tmp_path / "yolo"
    convert(f"{shapes}:train", out, "yolo")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = conv.place_image

    def place(src, dst, link="hardlink"):
        if "val" in Path(dst).parts and len(list(Path(dst).parent.glob("*"))) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real(src, dst, link)

    monkeypatch.setattr(conv, "place_image", place)
    with pytest.raises(OutputError, match="the files written were removed and the existing dataset restored"):
        convert(f"{shapes}:val", out, "yolo")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert "val" not in yaml.safe_load((out / "data.yaml").read_text())
    assert len(read_records(f"{out}:train").images) == 8


@pytest.mark.parametrize("to", ["voc", "yolo", "coco"])
def test_failed_rewrite_of_existing_images_puts_them_back(tmp_path, shapes, monkeypatch, to):
    """Re-exporting images a destination already holds (labels fixed, images re-encoded) and failing
    midway: the annotation files rewritten in place and the images replaced are all put back."""
    import detlab.data.convert as conv

    out = tmp_path / "out"
    convert(f"{shapes}:train", out, to)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    edited = tmp_path / "edited"  # the same file names, other boxes and other image bytes
    shutil.copytree(shapes, edited)
    for xml in (edited / "Annotations").glob("*.xml"):
        xml.write_text(
            re.sub(r"<xmin>(\d+)</xmin>", lambda m: f"<xmin>{int(m.group(1)) + 1}</xmin>", xml.read_text())
        )
    for jpg in (edited / "JPEGImages").glob("*"):
        Image.open(jpg).convert("RGB").save(jpg, format="JPEG", quality=60)
    real, placed = conv.place_image, []

    def place(src, dst, link="hardlink"):
        if len(placed) == 3:  # three images (and their annotations) replaced, then the disk fills
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        placed.append(dst)
        real(src, dst, link)

    monkeypatch.setattr(conv, "place_image", place)
    with pytest.raises(OutputError, match="the files written were removed and the existing dataset restored"):
        convert(f"{edited}:train", out, to)
    assert len(placed) == 3
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sorted(after) == sorted(before)
    assert [p for p in before if after[p] != before[p]] == []
    assert not list(out.rglob(".detlab-replaced-*"))


# --- read-only and not-a-directory output folders ------------------------------------------------------


@pytest.fixture
def read_only(monkeypatch):
    """Make folders under a root refuse new entries as a read-only file system does (tests run as root too)."""
    roots: list[Path] = []
    real_mkdir, real_open = pathlib.Path.mkdir, os.open

    def refused(path) -> bool:
        p = Path(os.path.abspath(path))
        return any(p != r and r in p.parents for r in roots)

    def mkdir(self, *args, **kwargs):
        if refused(self) and not self.exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if refused(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    return lambda root: roots.append(Path(os.path.abspath(root)))


def test_read_only_out_for_train_predict_and_convert(tmp_path, shapes, image, read_only, capsys):
    read_only(tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    run = make_run(tmp_path)
    out = tmp_path / "ro" / "x"
    assert main(_train_args(shapes, out)) == 1
    assert _one_line(capsys.readouterr().err) == f"detlab: {out}: cannot write run folder: {READ_ONLY}"
    assert main(["predict", str(run), str(image), "--out", str(out)]) == 1
    assert _one_line(capsys.readouterr().err) == (
        f"detlab: {out}: cannot write predictions: Read-only file system at {out}/drawn — the file system is "
        "read-only: write elsewhere"
    )
    assert main(["convert", f"{shapes}:train", str(out), "--to", "coco"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(
        f"detlab: {out}: cannot write dataset: Read-only file system at {tmp_path}/ro/.x.partial-"
    )
    assert line.endswith(" — the file system is read-only: write elsewhere")
    assert list((tmp_path / "ro").iterdir()) == []


def test_out_that_is_a_file_end_to_end(tmp_path, shapes, image):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    done = _detlab("train", "--data", tmp_path / "no_such_data", "--model", "fcos_r18_fpn", "--out", blocker)
    assert done.returncode == 1  # the run folder is refused before the (missing) data is looked at
    assert _one_line(done.stderr) == f"detlab: {blocker}: cannot write run folder: {IN_THE_WAY}"
    done = _detlab("convert", f"{shapes}:train", blocker / "sub", "--to", "voc")
    assert done.returncode == 1
    assert (
        _one_line(done.stderr)
        == f"detlab: {blocker}/sub: cannot write dataset: {IN_THE_WAY.replace(' —', f' at {blocker} —')}"
    )
    assert blocker.read_text() == "not a folder"


def test_predict_out_that_is_a_file(tmp_path, image, capsys):
    run = make_run(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert main(["predict", str(run), str(image), "--out", str(blocker)]) == 1
    assert _one_line(capsys.readouterr().err) == (
        f"detlab: {blocker}: cannot write predictions: Not a directory at {blocker}/drawn — a part of the path is a "
        "file, not a folder: choose another path"
    )


# --- two trainings into one run folder -------------------------------------------------------------------


def test_second_training_into_a_live_run_folder_stops_at_once(tmp_path, shapes):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "detlab", *_train_args(shapes, out, sets=SETS + ["epochs=200"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 600  # a bound for a loaded machine, not a speed requirement
        while (
            not (out / "checkpoints" / "last.pt").exists() and first.poll() is None and time.time() < deadline
        ):
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        second = _detlab(*_train_args(shapes, out))
        assert second.returncode == 1
        line = _one_line(second.stderr)
        assert second.stderr.strip().splitlines() == [line]  # stopped at once: no data was read
        assert line.startswith(f"detlab: {out}: run folder is in use by a training run (pid {first.pid} on ")
        assert line.endswith("); wait for it to end, stop it, or train into another --out")
        resume = _detlab("train", "--resume", out)  # a resume is kept out as well
        assert resume.returncode == 1 and _one_line(resume.stderr) == line
    finally:
        first.kill()
        first.wait(timeout=30)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(line.startswith('{"type": ') for line in lines)  # one writer: no interleaved lines


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom detlab.engine.runlog import run_lock\n"
            f"with run_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"in use by a training run \(pid {holder.pid} on "):
            with run_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert f"pid {holder.pid} " in (out / LOCK_NAME).read_text()  # the stale line is still there…
    with run_lock(out):  # …and does not block: the kernel released the dead process's flock
        with run_lock(out):  # re-entrant: fit() inside train_command takes it again
            assert f"pid {os.getpid()} " in (out / LOCK_NAME).read_text()
