"""The conversion-faithful family: a spiking BERT equivalent to a quantized BERT.

SpikingBERT's family (_spiking.py) applies softmax and LayerNorm to each timestep's binary spikes,
so the negative half of every LayerNorm output is clipped and the attention path carries little.
This family follows the conversion literature (SpikeZIP-TF, QCFS) instead:

- **Signed IF neurons** (``SignedIFNeuron``): the membrane starts at θ/2 and the neuron fires +1
  when it reaches θ and -1 when it falls below 0 while its running count is above -L; a
  population's accumulated count then tracks round(accumulated input / θ) clipped to [-L, L],
  the L-level quantizer of its teacher, negative values included.
- **Operators on accumulated input**: every non-linear operator f (attention with its softmax,
  LayerNorm, GELU) sees the sum X_t of its input currents up to step t and emits
  f(X_t) - f(X_{t-1}), so its outputs sum to f(X_T) exactly. Linear layers pass spikes (weights
  times ±θ) and inject their bias once, at the first step.
- **Per-population thresholds** θ = λ/L (query, key, value, context, attn_out, intermediate and
  output of every layer, and the embedding encoder), calibrated from the teacher's activations
  and trained as the clip λ of a QCFS-style quantizer in ``mode="surrogate"``. With
  ``residual_thresholds="unit"`` the residual-stream populations (encoder, attn_out, output)
  scale θ per unit: a LayerNorm output's few outlier dimensions then no longer set the step of
  all the others. A per-unit θ folds into the next layer's weight columns, so a spike still
  costs one accumulate.

Once every neuron has caught up (enough steps), the accumulated output of each population equals
the L-level quantized BERT's activation, so the classifier reads the accumulated value of the
last layer at [CLS] through the teacher's own pooler and head. Fewer steps than needed leave some
neurons behind (a neuron fires at most once per step): that is the temporal-pruning trade-off.

Per-layer timesteps: a layer running T_l steps reads the previous layer's spike train re-timed
to T_l steps (``retime``): a longer train's last steps are summed into step T_l (the counts, and
so the accumulated input, are kept exactly; a merged step carries an integer spike count), a
shorter one is padded with silent steps. Simulation modes (``batched``, ``lockstep``) share one
function that advances a chunk of steps with explicit accumulator state, so they agree bit for bit.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._layer import EncoderLayerWeights
from spikeprune.models._neurons import SignedIFNeuron

#: The spiking populations of one layer of this family, in the order they fire.
POPULATIONS: tuple[str, ...] = ("query", "key", "value", "context", "attn_out", "intermediate", "output")
#: The hidden-width populations of a layer (the residual stream), which may have per-unit θ.
RESIDUAL: tuple[str, ...] = ("attn_out", "output")


def retime(spikes: Tensor, steps: int) -> Tensor:
    """A spike train [T_prev, ...] as ``steps`` steps with the same total: the last steps of a
    longer train summed into the final step, a shorter train padded with silent steps."""
    prev = spikes.shape[0]
    if prev == steps:
        return spikes
    if prev < steps:
        return torch.cat([spikes, spikes.new_zeros((steps - prev, *spikes.shape[1:]))])
    return torch.cat([spikes[:steps - 1], spikes[steps - 1:].sum(dim=0, keepdim=True)])


def quantize_ste(x: Tensor, theta: Tensor, levels: int) -> Tensor:
    """θ·clamp(round(x/θ), -L, L) with straight-through gradients for x and the LSQ-style
    gradient for θ: the value the signed neurons converge to, trainable (QCFS with a signed range)."""
    scaled = torch.clamp(x / theta, -levels, levels)
    rounded = torch.floor(scaled + 0.5).clamp(-levels, levels)
    return theta * (scaled + (rounded - scaled).detach())


class Accumulator:
    """Running sums of a layer's operator inputs and last outputs across chunks of steps."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.last: dict[str, Tensor] = {}

    def cumulative(self, name: str, steps: Tensor) -> Tensor:
        """X_t for each step of the chunk [t, ...], continuing the sum of earlier chunks."""
        out = []
        acc = self.sums.get(name)
        for x in steps:
            acc = x if acc is None else acc + x
            out.append(acc)
        self.sums[name] = acc
        return torch.stack(out)

    def increments(self, name: str, values: Tensor) -> Tensor:
        """f(X_t) - f(X_{t-1}) for the chunk's values f(X_t) [t, ...] (f(X_{-1}) = 0)."""
        prev = self.last.get(name)
        first = values[:1] if prev is None else values[:1] - prev
        self.last[name] = values[-1]
        return torch.cat([first, values[1:] - values[:-1]])


class ConvertedLayer(EncoderLayerWeights):
    """One encoder layer of the conversion-faithful family (same weights as SpikingLayer)."""

    def __init__(self, cfg: SpikingBertConfig, index: int) -> None:
        super().__init__(cfg, index)
        self.levels = cfg.levels
        #: θ of each population, in POPULATIONS order.
        self.thresholds = nn.Parameter(torch.ones(len(POPULATIONS)))
        #: Per-unit scales of the RESIDUAL populations' θ (residual_thresholds="unit"), [2, hidden].
        self.unit_scales = (nn.Parameter(torch.ones(len(RESIDUAL), cfg.hidden_size))
                            if cfg.residual_thresholds == "unit" else None)
        self.neurons = nn.ModuleDict({name: SignedIFNeuron(cfg.levels) for name in POPULATIONS})

    def theta(self, name: str) -> Tensor:
        """θ of a population: a scalar, or [hidden] for a residual population with unit scales."""
        theta = self.thresholds[POPULATIONS.index(name)]
        if self.unit_scales is not None and name in RESIDUAL:
            return theta * self.unit_scales[RESIDUAL.index(name)]
        return theta

    def _linear(self, layer: nn.Linear, spikes: Tensor, theta: Tensor, first: bool) -> Tensor:
        """Currents of a Linear fed signed spikes [t, ...] of threshold θ: W·θ·s, plus the bias at
        step 0 only. The module itself is called, so its forward hooks (importance) see the input."""
        out = layer(spikes * theta)
        return torch.cat([out[:1], out[1:] - layer.bias]) if first else out - layer.bias

    def forward(self, x: Tensor, theta_in: Tensor, key_mask: Tensor, state: Accumulator, first: bool,
                fire: Callable[[str, Tensor], Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Advance a chunk of steps: ``x`` [t, B, L, H] are the input population's spikes (threshold
        ``theta_in``); ``first`` says the chunk starts at step 0. Returns every population's spikes
        and the accumulated attention scores at each step of the chunk."""
        q = fire("query", self._linear(self.query, x, theta_in, first))
        k = fire("key", self._linear(self.key, x, theta_in, first))
        v = fire("value", self._linear(self.value, x, theta_in, first))
        q_acc = state.cumulative("query", q * self.theta("query"))
        k_acc = state.cumulative("key", k * self.theta("key"))
        v_acc = state.cumulative("value", v * self.theta("value"))
        scores = self._heads(q_acc) @ self._heads(k_acc).transpose(-1, -2) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + key_mask, dim=-1)
        context = (probs @ self._heads(v_acc)).transpose(-2, -3).flatten(-2)
        c = fire("context", state.increments("context", context))
        a_in = state.cumulative("attn_in", self._linear(self.attn_out, c, self.theta("context"), first) + x * theta_in)
        a = fire("attn_out", state.increments("attn_out", self.attn_norm(a_in)))
        m_in = state.cumulative("inter_in", self._linear(self.intermediate, a, self.theta("attn_out"), first))
        m = fire("intermediate", state.increments("intermediate", F.gelu(m_in)))
        y_in = state.cumulative("out_in", self._linear(self.output, m, self.theta("intermediate"), first)
                                + a * self.theta("attn_out"))
        y = fire("output", state.increments("output", self.out_norm(y_in)))
        return {"query": q, "key": k, "value": v, "context": c, "attn_out": a, "intermediate": m, "output": y}, scores

    def quantized(self, x: Tensor, key_mask: Tensor, observe: Callable[[str, Tensor], None] | None = None,
                  keep_float: frozenset[str] = frozenset()) -> tuple[dict[str, Tensor], Tensor]:
        """The L-level quantized network the spikes converge to, on values (not spikes), with
        straight-through gradients: ``x`` [B, L, H] is the input population's value. With
        ``observe`` nothing is quantized: each population's float activation is passed to it
        (threshold calibration); the populations in ``keep_float`` stay float too."""
        def qz(name: str, value: Tensor) -> Tensor:
            if observe is not None:
                observe(name, value)
                return value
            if name in keep_float:
                return value
            return quantize_ste(value, self.theta(name), self.levels)

        q = qz("query", self.query(x))
        k = qz("key", self.key(x))
        v = qz("value", self.value(x))
        scores = self._heads(q) @ self._heads(k).transpose(-1, -2) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + key_mask, dim=-1)
        c = qz("context", (probs @ self._heads(v)).transpose(-2, -3).flatten(-2))
        a = qz("attn_out", self.attn_norm(self.attn_out(c) + x))
        m = qz("intermediate", F.gelu(self.intermediate(a)))
        y = qz("output", self.out_norm(self.output(m) + a))
        return {"query": q, "key": k, "value": v, "context": c, "attn_out": a, "intermediate": m, "output": y}, scores
