"""DETR query selection: token anchors, top-k selection, losses, learning, weights."""

from __future__ import annotations

import torch
from test_detr import TINY, _target, train_30_steps_on_one_image

from detlab.models.detr import build_detr
from detlab.models.detr.query_selection import (
    QuerySelection,
    inverse_sigmoid,
    sine_box_embedding,
    token_anchors,
)


def test_token_anchors_hand_computed_with_padding():
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, :, 3] = True  # last column is padding: 3 valid columns, 2 valid rows
    anchors = token_anchors(mask).view(2, 4, 4)  # [h, w, 4]
    torch.testing.assert_close(anchors[0, 0], torch.tensor([0.5 / 3, 0.5 / 2, 2 / 3, 2 / 2]))
    torch.testing.assert_close(anchors[1, 2], torch.tensor([2.5 / 3, 1.5 / 2, 2 / 3, 2 / 2]))
    assert anchors[:, 3, 0].min() > 1  # padding tokens lie outside the image


def test_sine_box_embedding_matches_detr_position_formula():
    emb = sine_box_embedding(torch.tensor([[0.25, 0.5, 0.1, 0.2]]), num_feats=4)  # [1, 16]
    dim_t = 10000 ** (torch.tensor([0, 0, 2, 2]) / 4)
    x = 0.25 * 2 * torch.pi / dim_t
    torch.testing.assert_close(emb[0, :4], torch.stack([x[0].sin(), x[1].cos(), x[2].sin(), x[3].cos()]))
    assert emb.shape == (1, 16)


def test_selection_takes_the_top_scoring_valid_tokens_without_gradient():
    torch.manual_seed(0)
    select = QuerySelection(hidden_dim=16, num_classes=3, num_queries=5)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, 2:, :] = True  # image 1: last row padded
    memory = torch.randn(12, 2, 16, requires_grad=True)  # [T, B, D]
    enc, content, ref = select(memory, mask)
    assert enc["pred_logits"].shape == (2, 12, 4) and enc["pred_boxes"].shape == (2, 12, 4)
    assert content.shape == (5, 2, 16) and ref.shape == (2, 5, 4)
    objectness = enc["pred_logits"].softmax(-1)[..., :-1].amax(-1)  # [B, T]
    objectness[1, 8:] = -1  # padding never competes
    top = objectness.topk(5, dim=1).indices
    for b in range(2):
        torch.testing.assert_close(ref[b], enc["pred_boxes"][b, top[b]].detach())
    assert (top[1] < 8).all()
    assert not ref.requires_grad and not content.requires_grad  # the selection passes no gradient back
    assert enc["pred_boxes"].requires_grad and select.query_pos(ref).shape == (2, 5, 16)


def test_untrained_token_boxes_are_the_anchors():
    select = QuerySelection(hidden_dim=16, num_classes=2, num_queries=3)
    mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    enc, *_ = select(torch.randn(6, 1, 16), mask)
    torch.testing.assert_close(
        enc["pred_boxes"], token_anchors(mask).clamp(1e-5, 1 - 1e-5), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(inverse_sigmoid(torch.tensor([0.5])), torch.tensor([0.0]))


def test_losses_keys_and_state_dict_layout():
    torch.manual_seed(0)
    plain = build_detr("detr_r18", num_classes=3, **TINY)
    selected = build_detr("detr_r18", num_classes=3, query_selection=True, **TINY)
    plain_keys, selected_keys = set(plain.state_dict()), set(selected.state_dict())
    assert plain_keys - selected_keys == {"query_embed.weight"}  # learned queries are replaced, not unused
    assert all(k.startswith("query_selection.") for k in selected_keys - plain_keys)
    images = [torch.rand(3, 70, 90), torch.rand(3, 90, 60)]
    targets = [_target([[10, 10, 40, 50]], [1]), _target([], [])]
    losses = selected.train()(images, targets)
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc", "loss_ce_0"} <= set(losses)
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    trainable = [(n, p) for n, p in selected.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]
    with torch.no_grad():
        dets = selected.eval()(images)
    assert [d["boxes"].shape for d in dets] == [(TINY["num_queries"], 4)] * 2


def test_plain_checkpoint_loads_into_a_query_selection_model(tmp_path, capsys):
    torch.manual_seed(0)
    plain = build_detr("detr_r18", num_classes=3, **TINY)
    torch.save({"model": plain.state_dict()}, tmp_path / "detr.pth")
    selected = build_detr(
        "detr_r18", num_classes=3, weights=str(tmp_path / "detr.pth"), query_selection=True, **TINY
    )
    for key, value in plain.state_dict().items():
        if key != "query_embed.weight":
            torch.testing.assert_close(selected.state_dict()[key], value, rtol=0, atol=0)
    assert "not in the file kept fresh" in capsys.readouterr().out


def test_loss_halves_in_30_steps_with_query_selection():
    torch.manual_seed(0)
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
        query_selection=True,
    )
    history, image = train_30_steps_on_one_image(model)
    assert history[-1] < 0.5 * history[0], history
    model.eval()
    with torch.no_grad():
        det = model([image])[0]
    best = det["boxes"][det["labels"] == 0][0]  # the highest-scoring box of class 0: the red block
    assert torch.allclose(best, torch.tensor([30.0, 20.0, 90.0, 70.0]), atol=12), best


def test_more_queries_than_tokens_selects_every_token():
    torch.manual_seed(0)
    model = build_detr("detr_r18", num_classes=2, query_selection=True, **{**TINY, "num_queries": 50}).eval()
    with torch.no_grad():
        det = model([torch.rand(3, 96, 96)])[0]  # 96 px at stride 32: 9 tokens
    assert det["boxes"].shape == (9, 4)


def test_each_decoder_layer_refines_the_previous_layers_boxes():
    torch.manual_seed(0)
    model = build_detr("detr_r18", num_classes=2, query_selection=True, **TINY).eval()
    seen = []  # the positional query each decoder layer receives
    hooks = [
        layer.register_forward_pre_hook(lambda m, args: seen.append(args[4].clone()))
        for layer in model.transformer.decoder.layers
    ]
    with torch.no_grad():
        raw = model.forward_raw([torch.rand(3, 96, 128)])
    for h in hooks:
        h.remove()
    layer_boxes = [a["pred_boxes"] for a in raw["aux_outputs"]] + [raw["pred_boxes"]]  # [B, Q, 4] per layer
    # layer i+1 is positioned by layer i's boxes
    for i in range(1, len(model.transformer.decoder.layers)):
        expected = model.query_selection.query_pos(layer_boxes[i - 1]).transpose(0, 1)
        torch.testing.assert_close(seen[i], expected)
