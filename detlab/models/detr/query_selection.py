"""Query selection for DETR: decoder queries taken from the encoder's best tokens.

On small data, DETR's learned queries collapse to image-independent prior boxes
(``benchmarks/detr_small_data.py`` measures it). The two-stage scheme of
Deformable DETR / DINO avoids that: every encoder token predicts a class and a
box relative to its own grid cell (an extra set-prediction loss, ``*_enc``), the
``Q`` tokens with the highest object score become the decoder's queries — their
content and a positional query made from their box — and each decoder layer
refines the previous layer's boxes. The queries are image-dependent
from the first iteration, and the dense token loss gives the encoder a direct,
per-location signal.

Legend for shape comments: ``B`` images, ``T`` tokens (``h*w``), ``Q`` queries,
``C`` classes, ``D`` model width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from detlab.models.detr.layers import MLP, sine_encoding


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def token_anchors(mask: Tensor, cells: float = 2.0) -> Tensor:
    """One ``cxcywh`` box per token, normalised to each image's unpadded area.

    Args:
        mask: ``[B, h, w]`` True on padding.
        cells: anchor side in grid cells.

    Returns:
        ``[B, h*w, 4]``: the cell's centre, ``cells`` cells wide and high (padding tokens
        fall outside ``0..1``).
    """
    valid_h = (~mask[:, :, 0]).sum(1).clamp(min=1).float()  # [B]
    valid_w = (~mask[:, 0, :]).sum(1).clamp(min=1).float()
    h, w = mask.shape[-2:]
    ys = torch.arange(h, device=mask.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=mask.device, dtype=torch.float32) + 0.5
    cy = ys[None, :, None] / valid_h[:, None, None]  # [B, h, 1]
    cx = xs[None, None, :] / valid_w[:, None, None]  # [B, 1, w]
    cy, cx = torch.broadcast_tensors(cy, cx)  # [B, h, w]
    bw = (cells / valid_w)[:, None, None].expand_as(cx)
    bh = (cells / valid_h)[:, None, None].expand_as(cy)
    return torch.stack([cx, cy, bw, bh], dim=-1).flatten(1, 2)  # [B, h*w, 4]


def sine_box_embedding(boxes: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """``boxes`` ``[..., 4]`` in 0..1 → ``[..., 4 * num_feats]``, DETR's sine encoding per coordinate."""
    return sine_encoding(boxes.float() * (2 * math.pi), num_feats, temperature).flatten(-2)  # [..., 4*F]


class QuerySelection(nn.Module):
    """Per-token predictions on the encoder memory and the top-``Q`` tokens as queries.

    Args:
        hidden_dim: ``D``.
        num_classes: ``C``; the token class head has ``C + 1`` outputs, the last no-object.
        num_queries: ``Q``, tokens kept for the decoder.
    """

    def __init__(self, hidden_dim: int, num_classes: int, num_queries: int):
        super().__init__()
        self.num_queries = num_queries
        self.memory_proj = nn.Linear(hidden_dim, hidden_dim)
        self.memory_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.pos_head = MLP(2 * hidden_dim, hidden_dim, hidden_dim, 2)
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)  # start at the anchors
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    def query_pos(self, ref: Tensor) -> Tensor:
        """Positional query ``[B, Q, D]`` of reference boxes ``[B, Q, 4]`` cxcywh in 0..1."""
        return self.pos_head(sine_box_embedding(ref, self.memory_proj.in_features // 2))

    def refine(
        self,
        decoder: nn.Module,
        bbox_embed: nn.Module,
        memory: Tensor,
        mask: Tensor,
        pos: Tensor,
        content: Tensor,
        ref: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Run ``decoder``'s layers one by one, each refining the previous layer's boxes.

        Each layer's positional query is made from the current reference boxes, and its
        boxes are ``sigmoid(bbox_embed(output) + logit(reference))``; the next layer's
        reference is that box without gradient (Deformable DETR's box refinement, one
        box head shared by all layers as DETR's is).

        Args:
            decoder: DETR's ``TransformerDecoder`` (its ``layers`` and final ``norm``).
            bbox_embed: DETR's box MLP.
            memory: encoder output ``[T, B, D]``; ``mask`` ``[B, h, w]``; ``pos`` ``[B, D, h, w]``.
            content: content queries ``[Q, B, D]``; ``ref``: reference boxes ``[B, Q, 4]``.

        Returns:
            Every layer's normed output ``[L, B, Q, D]`` and boxes ``[L, B, Q, 4]`` cxcywh in 0..1.
        """
        memory_mask, pos = mask.flatten(1), pos.flatten(2).permute(2, 0, 1)  # [B, T], [T, B, D]
        tgt, outputs, boxes = content, [], []
        for layer in decoder.layers:
            tgt = layer(tgt, memory, memory_mask, pos, self.query_pos(ref).transpose(0, 1))  # [Q, B, D]
            h = decoder.norm(tgt).transpose(0, 1)  # [B, Q, D]
            box = (bbox_embed(h) + inverse_sigmoid(ref)).sigmoid()  # [B, Q, 4]
            outputs.append(h)
            boxes.append(box)
            ref = box.detach()
        return torch.stack(outputs), torch.stack(boxes)

    def forward(self, memory: Tensor, mask: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Token predictions and the selected queries.

        Args:
            memory: encoder output ``[T, B, D]``.
            mask: ``[B, h, w]`` True on padding (``T = h*w``).

        Returns:
            ``enc_outputs`` (``pred_logits`` ``[B, T, C+1]``, ``pred_boxes`` ``[B, T, 4]``
            cxcywh normalised, for the ``*_enc`` losses), the decoder's content queries
            ``[Q, B, D]`` and their reference boxes ``[B, Q, 4]`` (no gradient flows back
            through the selection).
        """
        pad = mask.flatten(1)  # [B, T]
        tokens = self.memory_norm(self.memory_proj(memory.transpose(0, 1)))  # [B, T, D]
        tokens = tokens.masked_fill(pad[..., None], 0.0)
        logits = self.class_embed(tokens)  # [B, T, C+1]
        anchors = token_anchors(mask)  # [B, T, 4]
        boxes = (self.bbox_embed(tokens) + inverse_sigmoid(anchors)).sigmoid()  # [B, T, 4]
        with torch.no_grad():
            objectness = logits.float().softmax(-1)[..., :-1].amax(-1).masked_fill(pad, -1.0)  # [B, T]
            k = min(self.num_queries, objectness.shape[1])
            top = objectness.topk(k, dim=1).indices  # [B, Q]
        ref = boxes.detach().gather(1, top[..., None].expand(-1, -1, 4))  # [B, Q, 4]
        content = tokens.detach().gather(1, top[..., None].expand(-1, -1, tokens.shape[-1]))  # [B, Q, D]
        enc_outputs = {"pred_logits": logits, "pred_boxes": boxes}
        return enc_outputs, content.transpose(0, 1), ref
