"""Predicted costs of any compression config, from the base's spike statistics (stats.py).

The predictor builds the spike record the compressed model would produce if every kept neuron
spiked as it does in the base, and hands it to ``count_ops``, the same accounting a trial uses:
so size, Σ T and max T are exact, and SOPs and energy are exact at the base config and off only by
how much compression changes the spikes that remain. Per layer l running T_l steps:

- a population's count is the sum over its kept channels (heads and FFN neurons chosen by the
  same importance ranking as ``prune``) of Σ_k hist[k]·w(k), with w(k) = min(k, T_l) in the
  converted family (a neuron fires at most once per step) and k·T_l / T_base for binary rate
  codes (the SpikingBERT family);
- the layer's input is the previous layer's predicted output (layer 0: the encoder's train),
  re-timed as the simulation does: counts kept (converted) or scaled by T_l / T_{l-1} (binary);
- each ``*_x_len`` product scales with its population's count.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from spikeprune._model.compress import _head_rows, select_units
from spikeprune._model.config import CompressionConfig, SpikingBertConfig
from spikeprune._model.ops import OpReport, _products, count_ops, populations
from spikeprune._model.spiking import SimRecord, SpikingBertForSequenceClassification

from .stats import SpikeStats

HEAD_POPULATIONS = ("query", "key", "value", "context")


class CostPredictor:
    """``predict(config)`` -> the OpReport a trial of that config would count, without running it."""

    def __init__(self, student: SpikingBertForSequenceClassification, importance: dict[str, Tensor],
                 stats: SpikeStats, method: str = "grad") -> None:
        self.student, self.importance, self.stats, self.method = student, importance, stats, method
        self.base: SpikingBertConfig = student.config
        self._kept = lru_cache(maxsize=None)(self._kept_sums)

    def _kept_sums(self, layer: int, heads: int, neurons: int) -> dict[str, Tensor]:
        """Histograms [K + 1] of layer ``layer`` summed over the channels ``prune`` would keep."""
        keep_h = [self.base.heads[l] if l != layer else heads for l in range(self.base.num_layers)]
        keep_n = [self.base.intermediate_sizes[l] if l != layer else neurons for l in range(self.base.num_layers)]
        kept_heads, kept_neurons = select_units(self.student, keep_h, keep_n, self.importance, self.method)
        rows = _head_rows(kept_heads[layer], self.base.head_dim)
        out = {}
        for name, hist in self.stats.histograms[layer].items():
            if name in HEAD_POPULATIONS:
                hist = hist.index_select(0, rows)
            elif name == "intermediate":
                hist = hist.index_select(0, kept_neurons[layer])
            out[name] = hist.sum(dim=0)
        return out

    def _weights(self, steps: int, base_steps: int) -> Tensor:
        k = torch.arange(max(self.stats.timesteps) + 1, dtype=torch.float64)
        if self.base.family == "converted":
            return k.clamp(max=steps)
        return k * (steps / base_steps)

    def config(self, compression: CompressionConfig) -> SpikingBertConfig:
        """The compressed model's config (what count_ops sees)."""
        c = compression.resolve(self.base)
        return dataclasses.replace(self.base, heads=list(c.heads), intermediate_sizes=list(c.neurons),
                                   timesteps=list(c.timesteps), weight_bits=list(c.weight_bits))

    def record(self, config: SpikingBertConfig) -> SimRecord:
        """The predicted spike record of the compressed model ``config`` (see the module doc)."""
        stats, converted = self.stats, self.base.family == "converted"
        layers: list[dict[str, int]] = []
        previous_output, previous_steps = 0.0, None
        for l, steps in enumerate(config.timesteps):
            base_steps = stats.timesteps[l]
            sums = self._kept(l, config.heads[l], config.intermediate_sizes[l])
            w = self._weights(steps, base_steps)
            counts = {name: float(sums[name] @ w) for name in populations(config)}
            if l == 0:
                counts["input"] = float(sums["input"] @ w)
            else:
                counts["input"] = previous_output if converted else previous_output * steps / previous_steps
            base = stats.counts[l]
            for name in _products(config):
                ratio = counts[name] / base[name] if base[name] else 0.0
                counts[f"{name}_x_len"] = base[f"{name}_x_len"] * ratio
            previous_output, previous_steps = counts["output"], steps
            layers.append({k: int(round(v)) for k, v in counts.items()})
        return SimRecord(examples=stats.examples, tokens=stats.tokens, token_pairs=stats.token_pairs, layers=layers)

    def predict(self, compression: CompressionConfig, energy: Any = "float45nm") -> OpReport:
        config = self.config(compression)
        return count_ops(config, self.record(config), energy)

    def objectives(self, compression: CompressionConfig, energy: Any = "float45nm") -> dict[str, float]:
        """The predicted cost objectives (everything a space may minimise; not the metric)."""
        return self.predict(compression, energy).costs()
