"""Pretrained weights: the offline EfficientNet-Lite0 file, hub-cache files, head surgery, errors.

Nothing here touches the network: hub-cache files are written to a temporary
TORCH_HOME from randomly initialised torchvision models.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn
from torchvision.transforms.v2 import functional as F

from detlab.errors import WeightsError
from detlab.models import backbones, faster_rcnn, fcos
from detlab.models.catalogue import build_model
from detlab.models.weights import load_with_head_surgery, read_weights_file

TINY = dict(min_size=64, max_size=80)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache under a temporary TORCH_HOME; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case something called set_dir
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # torchvision's published detection files come from FrozenBatchNorm models: no num_batches_tracked
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# --- EfficientNet-Lite0 offline ImageNet weights ---------------------------------------


def test_effl0_mapping_equals_package_tensors_in_order():
    package = torch.load(backbones.effl0_weights_path(), map_location="cpu", weights_only=True)
    mapped = backbones.effl0_imagenet_state_dict()
    reference = timm.create_model("efficientnet_lite0").state_dict()
    assert len(package) == len(mapped) == len(reference) == 296
    assert list(mapped) == list(reference)
    for (src_key, src), (key, dst) in zip(package.items(), mapped.items()):
        assert torch.equal(src, dst), (src_key, key)
    assert torch.equal(mapped["conv_stem.weight"], package["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.bias"], package["_fc.bias"])


def test_effl0_imagenet_classifies_a_real_photo():
    import matplotlib.cbook

    photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = F.to_dtype(F.to_image(Image.open(photo).convert("RGB")), torch.float32, scale=True)
    x = F.normalize(
        F.center_crop(F.resize(image, [256]), [224]), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    )
    model = timm.create_model("efficientnet_lite0").eval()
    assert backbones.load_effl0_imagenet(model) == 296
    with torch.no_grad():
        probs = model(x[None]).softmax(-1)[0]
    top = probs.topk(5)
    # Grace Hopper in uniform with a bow tie: 457 bow tie, 400 academic gown,
    # 652 military uniform, 834 suit, 906 Windsor tie. Random weights give ~1e-3.
    assert int(top.indices[0]) in {457, 400, 652, 834, 906}
    assert float(top.values[0]) > 0.2
    assert {457, 400} <= set(top.indices.tolist())


@pytest.mark.parametrize("name", ["faster_rcnn_effl0_fpn", "fcos_effl0_fpn", "ssdlite_effl0"])
def test_effl0_detectors_load_imagenet_backbone(name):
    mapped = backbones.effl0_imagenet_state_dict()
    model = build_model(name, 3, weights="imagenet", log=None)
    body = model.backbone.body.state_dict()
    assert torch.equal(body["conv_stem.weight"], mapped["conv_stem.weight"])
    assert torch.equal(body["blocks.3.0.conv_pw.weight"], mapped["blocks.3.0.conv_pw.weight"])
    assert model.build_kwargs["frozen_bn"] is True
    rebuilt = build_model(name, 3, log=None, **model.build_kwargs)  # how a checkpoint is rebuilt
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


# --- hub-cache files (torchvision ImageNet / COCO) ---------------------------------------


def test_imagenet_resnet_from_hub_cache(hub):
    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), hub / "resnet18-f37072fd.pth")
    model = build_model("fcos_r18_fpn", 3, weights="imagenet", log=None, **TINY)
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, resnet.conv1.weight)
    assert torch.equal(body.layer3[0].bn1.running_var, resnet.layer3[0].bn1.running_var)
    assert isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert (
        not body.conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad
    )  # 3 stages trainable


@pytest.mark.parametrize(
    "name, reference, family",
    [
        ("fcos_r50_fpn", fcos_resnet50_fpn, fcos),
        ("faster_rcnn_r50_fpn", fasterrcnn_resnet50_fpn, faster_rcnn),
    ],
)
def test_coco_weights_keep_every_tensor_but_the_class_head(hub, name, reference, family):
    torch.manual_seed(0)
    coco = _plain_state_dict(reference(weights=None, weights_backbone=None, num_classes=91))
    torch.save(coco, hub / family.COCO_WEIGHTS[name].rsplit("/", 1)[-1])
    head = family.HEAD_PREFIXES
    lines: list[str] = []
    model = build_model(name, 3, weights="coco", log=lines.append, **TINY)
    own = model.state_dict()
    assert set(coco) == {k for k in own if not k.endswith("num_batches_tracked")}
    head_keys = [k for k in own if k.startswith(head)]
    assert head_keys
    for key, value in coco.items():
        if key in head_keys:
            assert own[key].shape != value.shape  # 3 (+ background) classes, not 91
        else:
            assert torch.equal(own[key], value), key
    assert len(lines) == 1 and all(k in lines[0] for k in head_keys) and "re-initialised" in lines[0]
    if name == "fcos_r50_fpn":  # torchvision's fresh init: prior probability 0.01
        bias = own["head.classification_head.cls_logits.bias"]
        assert torch.allclose(bias, torch.full((3,), -math.log(99.0)))
    else:
        assert own["roi_heads.box_predictor.cls_score.weight"].shape == (4, 1024)


def test_missing_coco_file_is_one_line_error_naming_file_and_folder(hub):
    with pytest.raises(WeightsError) as info:
        build_model("retinanet_r50_fpn", 3, weights="coco", log=None, **TINY)
    message = str(info.value)
    assert "\n" not in message
    assert "retinanet_resnet50_fpn_coco-eeacb38b.pth" in message and str(hub) in message


def test_no_published_coco_weights(hub):
    with pytest.raises(WeightsError, match="no published COCO weights"):
        build_model("fcos_r18_fpn", 3, weights="coco", log=None, **TINY)


# --- files given by path -------------------------------------------------------------------


def test_detlab_checkpoint_round_trip_and_class_count_change(tmp_path):
    torch.manual_seed(0)
    source = build_model("fcos_r18_fpn", 5, log=None, **TINY)
    path = tmp_path / "best.pt"
    torch.save({"model": source.state_dict(), "model_name": "fcos_r18_fpn", "num_classes": 5}, path)
    same = build_model("fcos_r18_fpn", 5, weights=str(path), log=None, frozen_bn=False, **TINY)
    for key, value in source.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key
    lines: list[str] = []
    fewer = build_model("fcos_r18_fpn", 3, weights=str(path), log=lines.append, frozen_bn=False, **TINY)
    assert fewer.head.classification_head.cls_logits.weight.shape[0] == 3
    assert torch.equal(
        fewer.head.regression_head.bbox_reg.weight, source.head.regression_head.bbox_reg.weight
    )
    assert "head.classification_head.cls_logits.weight" in lines[-1]


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "frcnn.pth"
    torch.save(build_model("faster_rcnn_r18_fpn", 3, log=None, **TINY).state_dict(), path)
    with pytest.raises(WeightsError, match="another architecture"):
        build_model("fcos_r18_fpn", 3, weights=str(path), log=None, **TINY)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        build_model("fcos_r18_fpn", 3, weights=str(tmp_path / "absent.pt"), **TINY)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        read_weights_file(junk)
    torch.save({"epoch": 3}, tmp_path / "nodict.pt")
    with pytest.raises(WeightsError, match="no state dict"):
        read_weights_file(tmp_path / "nodict.pt")


def test_head_surgery_adapt_hook_keeps_a_slot():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    source = {"0.weight": torch.ones(5, 4), "0.bias": torch.arange(5.0)}

    def keep_last(key, src, dst):  # e.g. DETR's no-object slot: first rows + last row
        return torch.cat([src[: dst.shape[0] - 1], src[-1:]]) if key == "0.bias" else None

    dropped = load_with_head_surgery(model, source, ("0.",), log=None, adapt=keep_last)
    assert dropped == ["0.weight"]
    assert model[0].bias.tolist() == [0.0, 1.0, 4.0]
