"""DETR: published state-dict layout, matcher, criterion, postprocess frame, weights surgery, learning."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from detlab.config import RECIPES
from detlab.errors import ConfigError, WeightsError
from detlab.models.detr import build_detr
from detlab.models.detr.criterion import HungarianMatcher, SetCriterion

# Small enough for CPU tests; the published defaults are checked separately.
TINY = dict(
    min_size=96,
    max_size=160,
    num_queries=8,
    enc_layers=1,
    dec_layers=2,
    dim_feedforward=64,
    hidden_dim=32,
    nheads=4,
)


def _target(boxes, labels) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_detr_r50_state_dict_matches_published_layout(fixtures_dir):
    reference = json.loads((fixtures_dir / "detr_r50_coco_state_dict_shapes.json").read_text())
    model = build_detr("detr_r50", num_classes=91)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}
    assert "backbone.0.body.bn1.running_var" in ours and not any(
        k.endswith("num_batches_tracked") for k in ours
    )
    # Published defaults stay the published ones.
    assert model.knobs.num_queries == 100 and model.knobs.min_size == 800 and model.knobs.max_size == 1333
    assert len(model.transformer.encoder.layers) == 6 and len(model.transformer.decoder.layers) == 6


def test_model_contract_attributes_and_rebuild():
    model = build_detr("detr_r18", num_classes=3, **TINY)
    assert (model.name, model.family, model.num_classes, model.transform_recipe) == (
        "detr_r18",
        "detr",
        3,
        "detr",
    )
    assert model.build_kwargs == TINY
    assert all(any(k.startswith(p) for k in model.state_dict()) for p in model.backbone_prefixes)
    rebuilt = build_detr("detr_r18", 3, **model.build_kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    # Stem and first stage frozen, later stages train (published DETR).
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert not grads["backbone.0.body.conv1.weight"] and grads["backbone.0.body.layer2.0.conv1.weight"]


def test_bad_knobs_and_names_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="num_querys"):
        build_detr("detr_r18", 3, num_querys=10)
    with pytest.raises(ConfigError, match="detr_r50"):
        build_detr("detr_r34", 3)
    with pytest.raises(ConfigError, match="nheads"):
        build_detr("detr_r18", 3, hidden_dim=30, nheads=4)


def _random_outputs(bs: int, nq: int, nc: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat(
        [torch.rand(bs, nq, 2, generator=g) * 0.6 + 0.2, torch.rand(bs, nq, 2, generator=g) * 0.3 + 0.05], -1
    )
    return {"pred_logits": torch.randn(bs, nq, nc + 1, generator=g), "pred_boxes": boxes}


def _random_targets(counts: list[int], nc: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "boxes": torch.cat(
                [torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], -1
            ),
            "labels": torch.randint(nc, (n,), generator=g),
        }
        for n in counts
    ]


def test_batched_matching_equals_one_image_at_a_time():
    matcher = HungarianMatcher(1, 5, 2)
    outputs = _random_outputs(4, 12, 5, seed=0)
    targets = _random_targets([3, 0, 7, 12], 5, seed=1)
    batched = matcher(outputs, targets)
    for i, target in enumerate(targets):
        single = matcher({k: v[i : i + 1] for k, v in outputs.items()}, [target])[0]
        assert torch.equal(batched[i][0], single[0]) and torch.equal(batched[i][1], single[1])
        assert len(batched[i][0]) == len(target["labels"])
    assert batched[1][0].numel() == 0


def test_matching_is_the_minimum_cost_assignment():
    from torchvision.ops import box_convert, generalized_box_iou

    outputs = _random_outputs(1, 5, 3, seed=2)
    target = _random_targets([3], 3, seed=3)[0]
    rows, cols = HungarianMatcher(1, 5, 2)(outputs, [target])[0]
    prob = outputs["pred_logits"][0].softmax(-1)
    xyxy = lambda b: box_convert(b, "cxcywh", "xyxy")  # noqa: E731
    cost = (
        -prob[:, target["labels"]]
        + 5 * torch.cdist(outputs["pred_boxes"][0], target["boxes"], p=1)
        - 2 * generalized_box_iou(xyxy(outputs["pred_boxes"][0]), xyxy(target["boxes"]))
    )  # [Q, N]
    best = min(
        sum(cost[q, n].item() for n, q in enumerate(perm)) for perm in itertools.permutations(range(5), 3)
    )
    assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-5)


def test_criterion_hand_computed_case():
    criterion = SetCriterion(2, HungarianMatcher(1, 5, 2), eos_coef=0.1)
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])  # [B=1, Q=2, C+1=3]
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]]), "labels": torch.tensor([0])}
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, [target])
    log_p = logits[0].log_softmax(-1)
    expected_ce = (-1.0 * log_p[0, 0] - 0.1 * log_p[1, 2]) / 1.1  # weighted mean over queries
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5 * 0.2, rel=1e-5)  # |0.2 - 0.4| on h only
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - 0.5), rel=1e-5)  # IoU = enclosing = 0.04/0.08
    assert losses["class_error"].item() == 0.0 and losses["cardinality_error"].item() == 0.0


def test_empty_targets_give_finite_no_object_only_losses():
    torch.manual_seed(0)
    model = build_detr("detr_r18", num_classes=3, **TINY).eval()
    images = [torch.rand(3, 70, 90), torch.rand(3, 90, 60)]
    empty = [_target([], []), _target([], [])]
    with torch.no_grad():
        losses = model.val_losses(images, empty)
        raw = model.forward_raw(images)
    assert not model.training
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    assert losses["loss_bbox_0"].item() == 0.0 and "loss_ce_0" in losses and "loss_ce_1" not in losses
    expected = -raw["pred_logits"].log_softmax(-1)[..., -1].mean()  # every query → no-object
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    model.train()
    train_losses = model(images, empty)
    sum(
        v for k, v in train_losses.items() if k.startswith("loss_")
    ).backward()  # gradients flow with no boxes


def test_loss_halves_in_30_steps_on_one_image():
    torch.manual_seed(0)
    # The backbone stays frozen to keep this CPU test short (its optimizer step alone would
    # dominate); what must learn here is DETR's own part: transformer, heads, matching, loss.
    model = build_detr(
        "detr_r18",
        num_classes=2,
        min_size=128,
        max_size=128,
        num_queries=10,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=256,
        hidden_dim=64,
        nheads=4,
        dropout=0.0,
        train_backbone=False,
    )
    history, _ = train_30_steps_on_one_image(model)
    assert history[-1] < 0.5 * history[0], history


def train_30_steps_on_one_image(model) -> tuple[list[float], torch.Tensor]:
    """30 AdamW steps (lr 5e-4, clip 0.1) on a 128x128 image with a red block and a second box;
    the training loss after each step, and the image."""
    image = torch.rand(3, 128, 128)
    image[:, 20:70, 30:90] = torch.tensor([1.0, 0.2, 0.2])[:, None, None]
    target = _target([[30, 20, 90, 70], [80, 90, 120, 120]], [0, 1])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-4)
    model.train()
    history = []
    for _ in range(30):
        losses = model([image], [target])
        loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        optimizer.step()
        history.append(loss.item())
    return history, image


def test_postprocess_hand_computed_non_square_frame():
    model = build_detr("detr_r18", num_classes=2, **TINY)
    logits = torch.tensor([[[0.0, 1.0, 0.0], [3.0, 0.0, 1.0]]])  # [1, Q=2, C+1=3]
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    out = model.postprocess({"pred_logits": logits, "pred_boxes": boxes}, [(100, 300)])[0]  # H=100, W=300
    p = logits[0].softmax(-1)
    # query 1 has the higher non-no-object score, so it comes first
    assert out["labels"].tolist() == [0, 1]
    assert out["scores"].tolist() == pytest.approx([p[1, 0].item(), p[0, 1].item()])
    expected = torch.tensor([[0.0, 50.0, 150.0, 100.0], [120.0, 30.0, 180.0, 70.0]])
    assert torch.allclose(out["boxes"], expected, atol=1e-4)


def test_eval_boxes_are_in_each_input_images_pixels():
    torch.manual_seed(0)
    model = build_detr("detr_r18", num_classes=2, **TINY).eval()
    images = [torch.rand(3, 60, 200), torch.rand(3, 150, 90)]  # resized and padded very differently
    with torch.no_grad():
        raw = model.forward_raw(images)  # one padded batch (model(images) runs each size alone)
        dets = model.postprocess(raw, [tuple(im.shape[-2:]) for im in images])
    for i, (img, det) in enumerate(zip(images, dets)):
        h, w = img.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        cx, cy, bw, bh = raw["pred_boxes"][i].unbind(-1)
        expected = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * scale
        order = raw["pred_logits"][i].softmax(-1)[:, :-1].max(-1).values.argsort(descending=True)
        assert torch.allclose(det["boxes"], expected[order], atol=1e-4)
        assert det["labels"].dtype == torch.int64 and int(det["labels"].max()) < 2
        assert det["boxes"].shape == (TINY["num_queries"], 4)
    batch, mask = model.preprocess(images)
    assert (
        batch.shape[-2:] == mask.shape[-2:] and mask[0, 48:].all() and not mask[0, :48].any()
    )  # 60x200 → 48x160


def test_train_targets_round_trip_to_normalised_cxcywh():
    images = [torch.rand(3, 100, 200)]
    converted = build_detr("detr_r18", 2, **TINY).targets_to_detr(images, [_target([[20, 10, 60, 50]], [1])])
    assert torch.allclose(converted[0]["boxes"], torch.tensor([[0.2, 0.3, 0.2, 0.4]]))


def test_multiscale_training_sizes():
    model = build_detr("detr_r18", 2, **dict(TINY, train_min_sizes=(64, 80)))
    model.train()
    shorter = {min(model.preprocess([torch.rand(3, 100, 150)])[0].shape[-2:]) for _ in range(12)}
    assert shorter == {64, 80}
    model.eval()
    assert min(model.preprocess([torch.rand(3, 100, 150)])[0].shape[-2:]) == TINY["min_size"]


def test_finetune_91_to_3_classes_keeps_everything_but_the_class_rows(tmp_path, capsys):
    torch.manual_seed(0)
    knobs = dict(TINY, num_queries=100)
    coco = build_detr("detr_r18", num_classes=91, **knobs)
    state = coco.state_dict()
    path = tmp_path / "detr-r18-coco.pth"
    torch.save({"model": state}, path)  # official checkpoint layout
    model = build_detr("detr_r18", num_classes=3, weights=str(path), **dict(knobs, num_queries=20))
    mine = model.state_dict()
    assert mine["class_embed.weight"].shape == (4, TINY["hidden_dim"]) and mine["class_embed.bias"].shape == (
        4,
    )
    assert torch.equal(mine["class_embed.weight"][-1], state["class_embed.weight"][-1])  # no-object row kept
    assert not torch.equal(mine["class_embed.weight"][:3], state["class_embed.weight"][:3])
    assert torch.equal(mine["query_embed.weight"], state["query_embed.weight"][:20])
    for key, value in mine.items():
        if not key.startswith(("class_embed.", "query_embed.")):
            assert torch.equal(value, state[key]), key
    assert "class_embed" in capsys.readouterr().out  # the surgery is reported


def test_same_class_count_loads_exactly_and_reset_is_a_knob(tmp_path):
    source = build_detr("detr_r18", 3, **TINY)
    path = tmp_path / "plain.pt"
    torch.save(source.state_dict(), path)  # plain state dict
    exact = build_detr("detr_r18", 3, weights=str(path), **TINY)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in exact.state_dict().items())
    reset = build_detr("detr_r18", 3, weights=str(path), reset_class_head=True, **TINY)
    assert not torch.equal(reset.class_embed.weight[:3], source.class_embed.weight[:3])
    assert torch.equal(reset.class_embed.weight[3], source.class_embed.weight[3])
    assert "reset_class_head" not in reset.build_kwargs
    with pytest.raises(WeightsError, match="reset_class_head"):
        build_detr("detr_r18", 5, weights=str(path), reset_class_head=False, **TINY)
    with pytest.raises(WeightsError, match="another"):
        build_detr("detr_r18", 3, weights=str(path), **dict(TINY, hidden_dim=64))


def test_offline_pretrained_weights_errors_name_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"detr-r50-e632da11\.pth.*checkpoints"):
        build_detr("detr_r50", 3, weights="coco")
    with pytest.raises(WeightsError, match="no official DETR COCO checkpoint"):
        build_detr("detr_r18", 3, weights="coco")
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd\.pth"):
        build_detr("detr_r18", 3, weights="imagenet")
    with pytest.raises(WeightsError, match="no such file"):
        build_detr("detr_r18", 3, weights=str(tmp_path / "missing.pth"))


def test_effl0_imagenet_backbone_loads_offline():
    from detlab.models.backbones import effl0_imagenet_state_dict

    model = build_detr("detr_effl0", num_classes=3, weights="imagenet", **TINY)
    reference = effl0_imagenet_state_dict()
    body = model.backbone[0].body.state_dict()
    assert torch.equal(body["conv_stem.weight"], reference["conv_stem.weight"])
    assert torch.equal(body["blocks.6.0.conv_pwl.weight"], reference["blocks.6.0.conv_pwl.weight"])
    assert model.input_proj.in_channels == 320
    with torch.no_grad():
        dets = model.eval()([torch.rand(3, 64, 96)])
    assert dets[0]["boxes"].shape == (TINY["num_queries"], 4)


def test_small_data_recipe_builds():
    r = RECIPES["detr"]  # in TrainConfig's own keys: base_lr (absolute: base_batch 0), model_kwargs
    assert {
        "optimizer",
        "base_lr",
        "backbone_lr_mult",
        "weight_decay",
        "clip_grad_norm",
        "epochs",
        "model_kwargs",
    } <= set(r)
    model = build_detr("detr_effl0", num_classes=3, **r["model_kwargs"])
    assert model.knobs.num_queries == r["model_kwargs"]["num_queries"]


@pytest.mark.parametrize("name", ["detr_r50", "detr_effl0"])
def test_dilation_knob_gives_stride_16_features_with_the_same_weights(name):
    torch.manual_seed(0)
    plain = build_detr(name, num_classes=3, **TINY).eval()
    dc5 = build_detr(name, num_classes=3, dilation=True, **TINY).eval()
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in dc5.state_dict().items()
    }
    images = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert plain.backbone[0](images).shape[-2:] == (3, 4)
        assert dc5.backbone[0](images).shape[-2:] == (6, 8)


def test_dilation_on_a_basic_block_resnet_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="detr_r18's basic blocks cannot be dilated"):
        build_detr("detr_r18", num_classes=3, dilation=True, **TINY)
