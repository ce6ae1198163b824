"""Building blocks that DETR and its query selection share: the MLP head and the sine encoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sine_encoding(x: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """DETR's sine/cosine features of ``x`` (already in radians): ``[...]`` → ``[..., num_feats]``.

    Feature ``i`` is ``sin`` (even ``i``) or ``cos`` (odd ``i``) of ``x / temperature ** (2 * (i // 2) / num_feats)``.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = x[..., None] / dim_t  # [..., F]
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


class MLP(nn.Module):
    """Plain feed-forward network (ReLU between layers), the published box head."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x
