"""ONNX export: ONNX Runtime matches eager on real images, for several families; clear errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import tiny_faster_rcnn, tiny_fcos

from detlab.errors import ConfigError, DataError  # noqa: E402
from detlab.export import (  # noqa: E402
    BOX_ATOL,
    SCORE_ATOL,
    ExportError,
    OnnxModel,
    check_export,
    compare_detections,
    export_checked,
    export_onnx,
    parse_size,
)


def tiny_detr(num_classes: int = 3) -> nn.Module:
    from detlab.models.detr import build_detr

    torch.manual_seed(0)
    return build_detr(
        "detr_r18",
        num_classes,
        min_size=96,
        max_size=128,
        enc_layers=1,
        dec_layers=1,
        num_queries=10,
        hidden_dim=32,
        dim_feedforward=64,
        nheads=2,
    ).eval()


@pytest.fixture
def bccd_images(bccd) -> list[torch.Tensor]:
    files = sorted((bccd / "JPEGImages").glob("*.jpg"))[:2]
    return [pil_to_tensor(Image.open(f).convert("RGB")).float() / 255 for f in files]  # [3, 480, 640]


def tiny_detr_query_selection() -> nn.Module:
    from detlab.models.detr import build_detr

    torch.manual_seed(0)
    return build_detr(
        "detr_r18",
        3,
        min_size=96,
        max_size=128,
        enc_layers=1,
        dec_layers=2,
        num_queries=10,
        hidden_dim=32,
        dim_feedforward=64,
        nheads=2,
        query_selection=True,
    ).eval()


@pytest.mark.parametrize(
    "build",
    [tiny_fcos, tiny_faster_rcnn, tiny_detr, tiny_detr_query_selection],
    ids=["fcos", "faster_rcnn", "detr", "detr_query_selection"],
)
def test_onnx_matches_eager_on_real_images(build, bccd_images, tmp_path):
    model = build()
    path = export_onnx(model, tmp_path / "m.onnx", size=(480, 640))
    onnx_model = OnnxModel(path, threads=2)
    assert onnx_model.input_size == (480, 640)
    result = check_export(model, onnx_model, bccd_images)
    assert result["images"] == 2
    assert result["detections"] >= 10  # the check compared real detections, not empty lists
    assert result["ok"], result["per_image"]
    assert result["matched"] == result["detections"]
    assert result["max_box_diff"] <= BOX_ATOL + 1e-5 * 640
    assert result["max_score_diff"] <= SCORE_ATOL


def test_dynamic_graph_matches_eager_at_other_sizes(bccd_images, tmp_path):
    model = tiny_faster_rcnn()
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "d.onnx", size=(96, 128), dynamic=True))
    assert onnx_model.dynamic and onnx_model.input_size == (96, 128)
    landscape = bccd_images[0]  # [3, 480, 640]
    portrait = bccd_images[1].transpose(1, 2).contiguous()  # [3, 640, 480]
    small = torch.nn.functional.interpolate(
        landscape[None], size=(150, 200), mode="bilinear", antialias=True
    )[0]
    result = check_export(model, onnx_model, [landscape, portrait, small, landscape[:, 17:350, 5:522]])
    assert [r["size"] for r in result["per_image"]] == [(480, 640), (640, 480), (150, 200), (333, 517)]
    assert result["detections"] >= 20 and result["ok"], result["per_image"]


def test_detr_falls_back_to_a_fixed_graph_that_refuses_other_sizes(bccd_images, tmp_path):
    model = tiny_detr()
    out = tmp_path / "model.onnx"
    ok, lines = export_checked(model, out, (480, 640), bccd_images, "BCCD images", ["a", "b", "c"])
    # DETR's resize rule is Python arithmetic: the tracer either fails on it or freezes the traced
    # size, which the check at a portrait and a small size catches; the fixed graph then matches
    assert ok, lines
    assert (
        lines[0].startswith("note: no dynamic-size graph")
        or "dynamic graph" in lines[0]
        and "MISMATCH" in lines[0]
    )
    assert "fixed graph" in lines[1] and "match on" in lines[1] and "MISMATCH" not in lines[1]
    onnx_model = OnnxModel(out)
    assert not onnx_model.dynamic and onnx_model.input_size == (480, 640)
    with pytest.raises(DataError) as info:
        onnx_model([bccd_images[0][:, :, :300]])
    message = str(info.value)
    assert "480x640 px only" in message and "got 480x300" in message and "--size 480,300" in message
    assert "\n" not in message


def test_metadata_round_trip(tmp_path):
    model = tiny_fcos()
    model.name, model.family = "fcos_tiny", "fcos"
    onnx_model = OnnxModel(
        export_onnx(model, tmp_path / "f.onnx", size=(64, 96), class_names=["x", "y", "z"])
    )
    assert (onnx_model.name, onnx_model.family, onnx_model.num_classes) == ("fcos_tiny", "fcos", 3)
    assert onnx_model.class_names == ["x", "y", "z"]
    assert onnx_model.input_size == (64, 96)


def test_compare_detections_hand_cases():
    eager = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]),
        "scores": torch.tensor([0.9, 0.9]),
        "labels": torch.tensor([0, 1]),
    }
    swapped = {k: v.flip(0) for k, v in eager.items()}  # same detections, other order (tied scores)
    r = compare_detections(eager, swapped)
    assert r["ok"] and r["matched"] == 2 and r["max_box_diff"] == 0.0
    moved = {**eager, "boxes": eager["boxes"] + torch.tensor([[0.0, 0, 0, 0.01], [0, 0, 0, 0]])}
    r = compare_detections(eager, moved)
    assert not r["ok"] and r["matched"] == 1
    relabelled = {**eager, "labels": torch.tensor([1, 0])}
    assert compare_detections(eager, relabelled)["matched"] == 0
    rescored = {**eager, "scores": torch.tensor([0.9, 0.9 + 2 * SCORE_ATOL])}
    assert compare_detections(eager, rescored)["matched"] == 1
    fewer = {k: v[:1] for k, v in eager.items()}
    r = compare_detections(eager, fewer)
    assert (r["eager"], r["onnx"], r["matched"], r["ok"]) == (2, 1, 1, False)


class Unexportable(nn.Module):
    family, name, num_classes = "oddity", "oddity_tiny", 1

    def forward(self, images):
        values = torch.linalg.eigvalsh(images[0][0, :4, :4] @ images[0][0, :4, :4].T)  # no ONNX op exists
        return [{"boxes": values[None].repeat(1, 1), "scores": values, "labels": values.long()}]


def test_unexportable_family_is_one_line_error(tmp_path):
    with pytest.raises(ExportError) as info:
        export_onnx(Unexportable(), tmp_path / "x.onnx", size=(32, 32))
    message = str(info.value)
    assert "family 'oddity'" in message and "\n" not in message
    assert "torchscript exporter" in message


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="--size"):
        parse_size("12x")
    assert (
        parse_size("480,640") == (480, 640) and parse_size("320") == (320, 320) and parse_size(None) is None
    )
