"""ONNX export of a trained run: `detlab export` then `detlab predict --backend onnx` vs eager.

A tiny FCOS run is trained here on BCCD images; the exported graph is checked at the sizes and
orientations users feed (BCCD's landscape 640x480, a portrait, a small and an odd crop): every
eager detection must have an ONNX twin of the same class with box IoU > 0.95 and a score within
the export check's tolerance, and a fixed-size graph must refuse what it cannot match.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_report_runfolder import one_thread  # noqa: F401  (autouse fixture)
from torchvision.ops import box_iou

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from detlab.cli import main  # noqa: E402
from detlab.export import SCORE_ATOL, OnnxModel, export_checked, export_onnx  # noqa: E402

TRAIN_IDS, VAL_IDS = 6, 2
# 3 steps of batch 2 at 64 px: the run takes seconds and its detections come from trained weights
SETS = [
    "epochs=1",
    "batch_size=2",
    "num_workers=0",
    "warmup_iters=1",
    "base_batch=2",
    "eval_batch_size=2",
    "device=cpu",
    "protocols=[coco]",
    "plots=false",
    "report=false",
    "quiet=true",
    "model_kwargs.min_size=64",
    "model_kwargs.max_size=96",
    "model_kwargs.detections_per_img=30",
]


def bccd_subset(bccd: Path, root: Path) -> Path:
    """A VOC year folder whose train/val lists name a few BCCD images (annotations and JPEGs linked)."""
    year = root / "BCCD6"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    for name in ("Annotations", "JPEGImages"):
        (year / name).symlink_to(bccd / name, target_is_directory=True)
    ids = (bccd / "ImageSets" / "Main" / "train.txt").read_text().split()
    (year / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:TRAIN_IDS]) + "\n")
    (year / "ImageSets" / "Main" / "val.txt").write_text(
        "\n".join(ids[TRAIN_IDS : TRAIN_IDS + VAL_IDS]) + "\n"
    )
    return year


def train_tiny_run(data: Path, out: Path, *sets: str) -> Path:
    args = ["train", "--data", f"{data}:train", "--val", f"{data}:val", "--model", "fcos_r18_fpn"]
    args += ["--weights", "none", "--out", str(out)]
    for s in (*SETS, *sets):
        args += ["--set", s]
    assert main(args) == 0
    return out


def tiny_bccd_run(tmp_path_factory) -> Path:
    """The session's one tiny FCOS run on BCCD images (TensorBoard on, COCO and VOC07), trained by
    the first test module that asks and shared with the others (export, TensorBoard)."""
    from conftest import BCCD

    if not BCCD.is_dir():
        pytest.skip(f"real dataset not found at {BCCD} (../shared/datasets/bccd)")
    root = tmp_path_factory.getbasetemp() / "tiny_bccd_run"
    if not (root / "trained").is_file():
        shutil.rmtree(root, ignore_errors=True)  # a run an earlier module failed to finish
        root.mkdir()
        train_tiny_run(bccd_subset(BCCD, root), root / "run", "tensorboard=true", "protocols=[coco,voc07]")
        (root / "trained").touch()
    return root / "run"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    run = tiny_bccd_run(tmp_path_factory)
    (run / "model.onnx").unlink(missing_ok=True)
    assert main(["export", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def bccd_module() -> Path:
    from conftest import BCCD

    if not BCCD.is_dir():
        pytest.skip(f"real dataset not found at {BCCD} (../shared/datasets/bccd)")
    return BCCD


def sized_images(bccd: Path, folder: Path) -> dict[str, tuple[int, int]]:
    """BCCD test images as users send them: landscape as stored, portrait, small, odd crop. → name: (h, w)"""
    folder.mkdir(parents=True, exist_ok=True)
    stems = (bccd / "ImageSets" / "Main" / "test.txt").read_text().split()[:4]
    ims = [Image.open(bccd / "JPEGImages" / f"{s}.jpg").convert("RGB") for s in stems]
    variants = {
        "landscape": ims[0],  # 640x480 as stored
        "portrait": ims[1].transpose(Image.Transpose.ROTATE_90),  # 480x640
        "small": ims[2].resize((160, 120), Image.Resampling.LANCZOS),
        "odd_crop": ims[3].crop((37, 11, 554, 344)),  # 517x333, sides not multiples of 32
    }
    sizes = {}
    for name, im in variants.items():
        im.save(folder / f"{name}.png")
        sizes[name] = (im.height, im.width)
    return sizes


def predicted(run: Path, images: Path, out: Path, backend: str) -> dict[str, dict]:
    # one image per call: eager batches of mixed sizes are padded to a common size, which moves
    # their detections, while the ONNX graph (and the export check) runs images one by one
    argv = ["predict", str(run), str(images), "--out", str(out), "--score", "0.0", "--batch", "1"]
    argv += ["--backend", backend]
    assert main(argv) == 0
    return {Path(f).stem: json.loads(f.read_text()) for f in sorted((out / "json").glob("*.json"))}


def match_by_iou(eager: list[dict], onnx: list[dict]) -> tuple[int, list[float], float]:
    """Greedy one-to-one matching in descending eager score: same class, IoU > 0.95, score within
    SCORE_ATOL (plus the 1e-5 rounding of predict's JSON). → (matched, IoUs, max score diff)."""
    if not eager or not onnx:
        return 0, [], 0.0
    eb = torch.tensor([d["box_xyxy"] for d in eager])
    ob = torch.tensor([d["box_xyxy"] for d in onnx])
    iou = box_iou(eb, ob)  # [K_e, K_o]
    taken, ious, max_ds = set(), [], 0.0
    for i in sorted(range(len(eager)), key=lambda k: -eager[k]["score"]):
        for j in iou[i].argsort(descending=True).tolist():
            ds = abs(eager[i]["score"] - onnx[j]["score"])
            ok = eager[i]["label"] == onnx[j]["label"] and ds <= SCORE_ATOL + 1e-5
            if j not in taken and iou[i, j] > 0.95 and ok:
                taken.add(j)
                ious.append(float(iou[i, j]))
                max_ds = max(max_ds, ds)
                break
    return len(taken), ious, max_ds


def test_export_is_dynamic_at_the_training_size(exported):
    onnx_model = OnnxModel(exported / "model.onnx")
    assert onnx_model.dynamic
    assert onnx_model.input_size == (64, 96)  # min_size x max_size saved by the run, not an image size
    assert onnx_model.class_names == ["Platelets", "RBC", "WBC"]  # the run's class map
    assert not list(exported.glob("*.failed")) and not list(exported.glob(".*.partial"))


def test_onnx_backend_gives_eager_detections_on_every_size(exported, bccd_module, tmp_path, capsys):
    sizes = sized_images(bccd_module, tmp_path / "photos")
    eager = predicted(exported, tmp_path / "photos", tmp_path / "torch", "torch")
    onnx = predicted(exported, tmp_path / "photos", tmp_path / "onnx", "onnx")
    assert sorted(eager) == sorted(onnx) == sorted(sizes)
    lines = []
    for name, (h, w) in sizes.items():
        assert (
            (eager[name]["height"], eager[name]["width"])
            == (onnx[name]["height"], onnx[name]["width"])
            == (h, w)
        )
        e, o = eager[name]["detections"], onnx[name]["detections"]
        matched, ious, max_ds = match_by_iou(e, o)
        lines.append(
            f"{name} {h}x{w}: {matched}/{len(e)} matched, min IoU {min(ious, default=1):.4f}, max dscore {max_ds:.1e}"
        )
        assert len(e) > 0, name  # the comparison saw real detections
        assert matched == len(e) == len(o), lines[-1]
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_fixed_graph_refuses_other_sizes_in_one_line(exported, bccd_module, tmp_path, capsys):
    run = tmp_path / "fixed_run"
    shutil.copytree(exported / "checkpoints", run / "checkpoints")
    shutil.copy(exported / "config.yaml", run / "config.yaml")
    from detlab.predict import Detector

    model = Detector.from_run(run, device="cpu").model
    export_onnx(model, run / "model.onnx", size=(480, 640), dynamic=False)
    sizes = sized_images(bccd_module, tmp_path / "photos")
    capsys.readouterr()
    refused = ["predict", str(run), str(tmp_path / "photos" / "portrait.png"), "--out", str(tmp_path / "o")]
    assert main([*refused, "--backend", "onnx"]) != 0
    err = capsys.readouterr().err
    assert err.count("detlab: ") == 1 and "Traceback" not in err, err
    assert "480x640 px only" in err and f"got {sizes['portrait'][0]}x{sizes['portrait'][1]}" in err
    assert "--size" in err
    # the size it was exported for still gives the eager detections
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(tmp_path / "photos" / "landscape.png", one)
    e = predicted(run, one, tmp_path / "t", "torch")["landscape"]["detections"]
    o = predicted(run, one, tmp_path / "x", "onnx")["landscape"]["detections"]
    assert len(e) > 0 and match_by_iou(e, o)[0] == len(e) == len(o)


class FrozenBranch(torch.nn.Module):
    """A detector with Python control flow on the image: the tracer keeps the branch of its example
    (a random image, mean ~0.5 → scores halved) and ONNX Runtime then differs from eager on BCCD's
    bright images — the kind of graph the export must not hand out."""

    family, name = "fcos", "frozen_branch"

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.num_classes = inner, 3

    def forward(self, images):
        dets = self.inner(images)
        if float(images[0].mean()) < 0.6:
            dets = [{**d, "scores": d["scores"] * 0.5} for d in dets]
        return dets


def test_failed_check_leaves_no_valid_looking_file(bccd_module, tmp_path):
    from conftest import tiny_fcos

    model = FrozenBranch(tiny_fcos()).eval()
    files = sorted((bccd_module / "JPEGImages").glob("*.jpg"))[:2]
    images = [
        torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255 for f in files
    ]
    assert all(float(im.mean()) >= 0.6 for im in images)  # the eager model takes the other branch
    out = tmp_path / "model.onnx"
    ok, lines = export_checked(model, out, (96, 128), images, "BCCD images", ["a", "b", "c"])
    assert not ok
    assert not out.exists() and not list(tmp_path.glob(".*.partial"))
    assert (tmp_path / "model.onnx.failed").is_file()
    assert "MISMATCH" in lines[0] and "MISMATCH" in lines[1]  # dynamic, then fixed, both refused
    assert (
        lines[-1].startswith("export failed:") and "model.onnx.failed" in lines[-1] and "\n" not in lines[-1]
    )
