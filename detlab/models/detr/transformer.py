"""DETR's transformer: a post-norm encoder over the flattened feature map and a decoder over the
object queries that returns every layer's output (for the auxiliary losses).

Legend for shape comments: ``B`` images, ``Q`` queries, ``L`` decoder layers, ``D`` model width,
``h``/``w`` feature size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.models.detr.knobs import DetrKnobs


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: self-attention, then FFN, each followed by add & norm."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, key_padding_mask: Tensor, pos: Tensor) -> Tensor:
        q = k = src + pos  # positions go into queries and keys, never values
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, key_padding_mask=key_padding_mask)[0]))
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, cross-attention to the memory, FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)[0]))
        attn = self.multihead_attn(tgt + query_pos, memory + pos, memory, key_padding_mask=memory_mask)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerEncoder(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src: Tensor, key_padding_mask: Tensor, pos: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src


class TransformerDecoder(nn.Module):
    """Decoder returning every layer's (normed) output, for the auxiliary losses."""

    def __init__(self, layers: list[nn.Module], d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_mask, pos, query_pos)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)  # [L, Q, B, D]


class Transformer(nn.Module):
    """Encoder over the flattened feature map, decoder over the object queries."""

    def __init__(self, k: DetrKnobs):
        super().__init__()
        d = k.hidden_dim
        self.encoder = TransformerEncoder(
            [TransformerEncoderLayer(d, k.nheads, k.dim_feedforward, k.dropout) for _ in range(k.enc_layers)]
        )
        self.decoder = TransformerDecoder(
            [TransformerDecoderLayer(d, k.nheads, k.dim_feedforward, k.dropout) for _ in range(k.dec_layers)],
            d,
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> Tensor:
        """``src``/``pos`` ``[B, D, h, w]``, ``mask`` ``[B, h, w]``, ``query_embed`` ``[Q, D]`` → ``[L, B, Q, D]``."""
        memory = self.encode(src, mask, pos)  # [h*w, B, D]
        query_pos = query_embed.unsqueeze(1).repeat(1, src.shape[0], 1)  # [Q, B, D]
        pos = pos.flatten(2).permute(2, 0, 1)  # [h*w, B, D]
        hs = self.decoder(
            torch.zeros_like(query_pos), memory, mask.flatten(1), pos, query_pos
        )  # [L, Q, B, D]
        return hs.transpose(1, 2)

    def encode(self, src: Tensor, mask: Tensor, pos: Tensor) -> Tensor:
        """Encoder memory ``[h*w, B, D]`` of ``src``/``pos`` ``[B, D, h, w]`` with ``mask`` ``[B, h, w]``."""
        return self.encoder(src.flatten(2).permute(2, 0, 1), mask.flatten(1), pos.flatten(2).permute(2, 0, 1))
