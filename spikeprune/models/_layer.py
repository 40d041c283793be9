"""What both model families share in an encoder layer: BERT's weights, the attention product,
and the exact spike counts of a layer's trains.

Names match the teacher's (query, key, value, attn_out, attn_norm, intermediate, output,
out_norm), so conversion, pruning and quantization act on either family alike.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._families import Family

#: What a family's simulation returns: each layer's output (rates or accumulated values), its
#: attention scores, and its spike counts when recorded.
LayerRun = tuple[list[Tensor], list[Tensor], list[dict[str, int]]]


class EncoderLayerWeights(nn.Module):
    def __init__(self, cfg: SpikingBertConfig, index: int) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.head_dim = cfg.heads[index], d
        inner = self.num_heads * d
        self.query = nn.Linear(h, inner)
        self.key = nn.Linear(h, inner)
        self.value = nn.Linear(h, inner)
        self.attn_out = nn.Linear(inner, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(h, cfg.intermediate_sizes[index])
        self.output = nn.Linear(cfg.intermediate_sizes[index], h)
        self.out_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def _heads(self, x: Tensor) -> Tensor:
        """[..., B, L, nh*dh] -> [..., B, nh, L, dh]"""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-2, -3)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled dot-product attention over heads: the context [..., B, L, nh*dh] and the
        pre-softmax scores [..., B, nh, L, L]; ``key_mask`` is added to the scores (−inf-like at padding)."""
        scores = self._heads(q) @ self._heads(k).transpose(-1, -2) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + key_mask, dim=-1)
        return (probs @ self._heads(v)).transpose(-2, -3).flatten(-2), scores


def count_layer(x: Tensor, outputs: dict[str, Tensor], token_mask: Tensor, family: Family) -> dict[str, int]:
    """Exact spike counts of one layer's trains (each [T, B, L, D], padding already zeroed): the
    input train and every population, plus ``<name>_x_len`` for the family's ``products``. A
    signed spike counts once, and a merged step of k spikes k times.

    Counts are summed per example in float32, exact while one example has < 2^24 spikes per
    sublayer (T·L·D = 16·512·1536 is 1.3e7), then totalled in int64: cheap next to the run."""
    lengths = token_mask[..., 0].sum(dim=-1).to(torch.int64)    # [B]
    per_example = {name: (spikes.abs() if family.signed else spikes).sum(dim=(0, 2, 3)).to(torch.int64)
                   for name, spikes in {"input": x, **outputs}.items()}
    counts = {name: int(n.sum()) for name, n in per_example.items()}
    for name in family.products:
        counts[f"{name}_x_len"] = int((per_example[name] * lengths).sum())
    return counts
