"""The catalogue: names, errors that name the fix, rebuild from build_kwargs, and `detlab models`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detlab.cli import main
from detlab.errors import ConfigError
from detlab.models import catalogue
from detlab.models.catalogue import MODELS, build_model, list_models

EXPECTED = [
    "faster_rcnn_r50_fpn", "faster_rcnn_r18_fpn", "faster_rcnn_effl0_fpn",
    "detr_r50", "detr_r18", "detr_effl0",
    "fcos_r18_fpn", "fcos_r34_fpn", "fcos_r50_fpn", "fcos_r101_fpn", "fcos_effl0_fpn",
    "ssd300_vgg16", "ssdlite_effl0", "retinanet_r50_fpn",
]  # fmt: skip


def test_catalogue_names():
    assert list_models() == EXPECTED == list(MODELS)


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean fcos_r50_fpn"):
        build_model("fcos_r50", 3)
    with pytest.raises(ConfigError, match="did you mean faster_rcnn_r18_fpn"):
        build_model("fasterrcnn_r18_fpn", 3)


def test_bad_num_classes_and_unknown_knob_are_config_errors():
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("fcos_r18_fpn", 0)
    with pytest.raises(ConfigError, match="min_sise"):
        build_model("fcos_r18_fpn", 3, min_sise=64)


@pytest.mark.parametrize(
    "name", ["faster_rcnn_r18_fpn", "fcos_effl0_fpn", "ssdlite_effl0", "retinanet_r50_fpn"]
)
def test_build_kwargs_rebuild_the_same_model(name):
    knobs = {"size": 96} if name.startswith("ssd") else {"min_size": 96, "max_size": 128, "score_thresh": 0.3}
    model = build_model(name, 4, log=None, **knobs)
    for key, value in knobs.items():
        assert model.build_kwargs[key] == value
    rebuilt = build_model(name, 4, **model.build_kwargs)
    assert rebuilt.build_kwargs == model.build_kwargs
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    rebuilt.load_state_dict(model.state_dict())  # strict: a checkpoint of one loads into the other


def test_flop_count_matches_a_hand_count():
    class OneConv(nn.Module):
        build_kwargs = {"size": 8}

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)

        def forward(self, images):
            return self.conv(torch.stack(images))

    # 8x8 outputs x 4 channels x (3 x 3 x 3) multiply-adds x 2 FLOPs
    assert catalogue._gflops(OneConv(), (8, 8)) * 1e9 == pytest.approx(8 * 8 * 4 * 27 * 2)


def test_models_command_lists_every_model(capsys):
    assert catalogue.models_command(num_classes=80, flops=False) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in EXPECTED:
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split()[0] == name
    effl0 = next(line for line in lines if line.startswith("ssdlite_effl0 "))
    assert " yes" in effl0  # the EfficientNet-Lite0 ImageNet file ships in a package: offline now
    fcos18 = next(line for line in lines if line.startswith("fcos_r18_fpn ")).split()
    assert fcos18[1:4] == [
        "fcos",
        "r18",
        f"{sum(p.numel() for p in build_model('fcos_r18_fpn', 80, log=None).parameters()) / 1e6:.1f}",
    ]
    assert "at 80 classes" in out


def test_cli_models_counts_flops_on_real_models(monkeypatch, capsys, tmp_path):
    # one small model, and a stand-in count: the real count at 800x1066 is slow on CPU
    monkeypatch.setenv("DETLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(catalogue, "MODELS", {"fcos_effl0_fpn": MODELS["fcos_effl0_fpn"]})
    seen = []
    monkeypatch.setattr(catalogue, "_gflops", lambda model, hw: seen.append((model.name, hw)) or 1.25)
    assert main(["models"]) == 0  # prints at once: nothing is counted without --flops
    assert capsys.readouterr().out.splitlines()[1].split()[5] == "?" and seen == []
    assert main(["models", "--flops"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:6] == ["fcos_effl0_fpn", "fcos", "effl0", "11.0", "800x1066", "1.2"]
    assert seen == [("fcos_effl0_fpn", (800, 1066))]
    assert main(["models"]) == 0 and main(["models", "--flops"]) == 0  # counted once, kept for next time
    assert [line.split()[5] for line in capsys.readouterr().out.splitlines() if line.startswith("fcos_")] == [
        "1.2",
        "1.2",
    ]
    assert seen == [("fcos_effl0_fpn", (800, 1066))]


@pytest.mark.parametrize("name", ["fcos_r18_fpn", "fcos_effl0_fpn"])
def test_fcos_fpn_channels_narrows_fpn_and_head(name):
    model = build_model(name, 3, min_size=64, max_size=64, fpn_channels=64, log=None).eval()
    assert model.backbone.out_channels == 64
    assert model.head.classification_head.cls_logits.in_channels == 64
    assert model.build_kwargs["fpn_channels"] == 64
    rebuilt = build_model(name, 3, **model.build_kwargs, log=None)
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture from build_kwargs
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])[0]
    assert out["boxes"].shape[1] == 4 and out["labels"].dtype == torch.int64
