"""The weights of one encoder layer in BERT's layout, shared by both model families.

Names match the teacher's (query, key, value, attn_out, attn_norm, intermediate, output,
out_norm), so conversion, pruning and quantization act on either family alike.
"""
from __future__ import annotations

from torch import Tensor, nn

from spikeprune.models._config import SpikingBertConfig


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
