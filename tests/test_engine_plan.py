"""The training input size is chosen from the boxes and the device, said on screen, and never overrides
a size the user gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detlab.config import resolve
from detlab.data.formats import read_records
from detlab.data.records import ImageRecord, Records
from detlab.engine.plan import MIN_OBJECT_PX, apply_size_plan, plan_input_size
from detlab.engine.train import _plan_size


def boxes_of_side(sides: list[float], image=(640, 480)) -> Records:
    """One image per box, each a square of the given side in a ``image``-sized picture, class 'a'."""
    images = [
        ImageRecord(
            i,
            Path(f"{i}.jpg"),
            *image,
            np.float32([[10, 10, 10 + s, 10 + s]]),
            np.int64([0]),
            np.zeros(1, bool),
            np.zeros(1, bool),
        )
        for i, s in enumerate(sides)
    ]
    return Records(images, ["a"], ["a"], "voc", Path("."))


def test_size_follows_the_smallest_class_on_bccd(bccd):
    records = read_records(f"{bccd}:train")
    fcos = plan_input_size(records, "fcos", "cpu")
    frcnn = plan_input_size(records, "faster_rcnn", "cpu")
    assert "'Platelets'" in fcos.why[0]  # the class of ~15-30 px cells decides, not the big red cells
    # 90 % of platelets have a short side >= 6.25 % of the 480 px image (30 px): FCOS's 20 px needs 320 px,
    # Faster R-CNN's 16 px 256 px (where it measured platelets AP50 0.888)
    assert (fcos.min_size, frcnn.min_size) == (320, 256) and fcos.max_size == 448  # 4:3 images
    rel = np.concatenate(
        [
            np.minimum(r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1])[r.labels == 0] / 480
            for r in records.images
            if r.num_boxes
        ]
    )  # label 0 = Platelets (sorted names)
    assert (rel * fcos.min_size >= MIN_OBJECT_PX["fcos"]).mean() >= 0.9


def test_cpu_caps_and_gpu_keeps_the_published_size():
    tiny = boxes_of_side([4.0] * 20)
    assert plan_input_size(tiny, "fcos", "cpu").min_size == 512  # would need 2400 px: capped, and said so
    assert "100 %" not in plan_input_size(tiny, "fcos", "cpu").why[1]
    big = boxes_of_side([300.0] * 20)
    assert plan_input_size(big, "fcos", "cpu").min_size == 256
    assert plan_input_size(big, "fcos", "cuda").min_size == 800
    assert plan_input_size(tiny, "fcos", "cuda").min_size == 1333


def test_user_sizes_and_families_with_their_own_size_are_left_alone():
    records = boxes_of_side([40.0] * 5)
    given = {"min_size": 608}
    assert apply_size_plan(given, dict(given), records, "fcos", "cpu") == [] and given == {"min_size": 608}
    for family in ("ssd", "detr"):
        kwargs = {}
        assert apply_size_plan(kwargs, {}, records, family, "cpu") == [] and kwargs == {}
    empty = Records([], ["a"], ["a"], "voc", Path("."))
    assert plan_input_size(empty, "fcos", "cpu") is None


def test_train_writes_the_choice_into_the_config_and_prints_why(capsys):
    cfg = resolve({"model": "faster_rcnn_effl0_fpn", "data": "x", "out": "y"})

    class Ctx:
        device = torch.device("cpu")

    _plan_size(cfg, boxes_of_side([24.0] * 10), Ctx(), verbose=True)
    assert cfg.model_kwargs == {"min_size": 320, "max_size": 448}  # 16 / (24 / 480) = 320
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "detlab: input size 320 px (shorter side; longer side up to 448), chosen from the data:"
    assert err[-1].endswith("override with --set model_kwargs.min_size=N --set model_kwargs.max_size=M")


def test_selecting_checkpoints_on_a_split_named_test_is_warned_about(chess, capsys):
    from detlab.engine.train import load_train_val
    from detlab.runfolder import names_test as _names_test

    assert (
        _names_test("data/VOC2007:test")
        and _names_test(f"{chess}/test")
        and not _names_test(f"{chess}/valid")
    )
    cfg = resolve({"model": "fcos_effl0_fpn", "data": f"{chess}/train", "val": f"{chess}/test", "out": "y"})
    load_train_val(cfg)
    assert "checkpoints/best.pt is picked on" in capsys.readouterr().err
    cfg = resolve({"model": "fcos_effl0_fpn", "data": f"{chess}/train", "val": f"{chess}/valid", "out": "y"})
    load_train_val(cfg)
    assert "a split named test" not in capsys.readouterr().err


# --- batch and workers from the machine ------------------------------------------------


def test_cpu_batch_fits_half_the_memory_and_workers_follow_the_cores():
    from detlab.engine.plan import TRAIN_BYTES_PER_PIXEL, plan_machine

    pixels = 320 * 448
    per_image = pixels * TRAIN_BYTES_PER_PIXEL["fcos"]
    roomy = plan_machine(4, "fcos", pixels, cores=2, memory=int(100 * per_image), user_keys=set())
    assert (roomy.batch_size, roomy.num_workers) == (4, 1)
    tight = plan_machine(4, "fcos", pixels, cores=16, memory=int(5 * per_image), user_keys=set())
    assert (tight.batch_size, tight.num_workers) == (2, 4)  # half of 5 images' memory holds 2
    starved = plan_machine(4, "fcos", pixels, cores=1, memory=int(per_image), user_keys=set())
    assert (starved.batch_size, starved.num_workers) == (1, 0)
    assert "batch 2" in tight.why[0] and "4 DataLoader workers: 16 CPU cores" in tight.why[1]
    kept = plan_machine(4, "fcos", pixels, cores=16, memory=int(5 * per_image), user_keys={"batch_size"})
    assert len(kept.why) == 1 and kept.num_workers == 4
    assert plan_machine(4, "fcos", pixels, 2, None, {"batch_size", "num_workers"}) is None


def test_train_sets_batch_and_workers_on_cpu_unless_given():
    from detlab.engine.plan import apply_machine_plan

    cfg = resolve({"model": "fcos_effl0_fpn", "data": "d", "out": "o", "model_kwargs": {"min_size": 320}})
    lines = apply_machine_plan(cfg, set(), "fcos", "cpu")
    assert lines and lines[0].startswith(f"batch {cfg.batch_size}, {cfg.num_workers} loader worker")
    given = resolve({"model": "fcos_effl0_fpn", "data": "d", "out": "o", "batch_size": 7, "num_workers": 3})
    assert apply_machine_plan(given, {"batch_size", "num_workers"}, "fcos", "cpu") == []
    assert (given.batch_size, given.num_workers) == (7, 3)
    assert apply_machine_plan(given, set(), "fcos", "cuda") == [] and given.batch_size == 7
