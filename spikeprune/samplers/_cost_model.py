"""Predicted costs of any compression config, from the base's spike statistics (_stats.py).

The predictor builds the spike record the compressed model would produce and hands it to
``count_ops``, the same accounting a trial uses: so size, Σ T and max T are exact, and SOPs and
energy are exact at the base config and off only by how much compression changes the spikes that
remain. Per layer l running T_l steps, a population's count is

    (count of its kept channels at the base T)  x  (its count at uniform T*_l / its count at the base T)

where the kept channels (heads and FFN neurons chosen by the same importance ranking as ``prune``)
come from the per-channel histograms, and the T factor is interpolated between the uniform-T
simulations the statistics hold (0 at T = 0), at T*_l. For a lockstep family T*_l is the fewest
steps of layers 0..l: a layer after a short one spikes like the whole model at that short T (this
predicts SOPs better than each layer's own T; docs/RESULTS.md gives the predictor's error). A
sequential family's layer (the elastic one) integrates its whole input before it fires, so its
counts follow its own T_l: T*_l = T_l. The layer's input is the previous layer's predicted
output (layer 0: the encoder's train at T_0), as re-timing keeps counts; each ``*_x_len`` product
scales with its population's kept share and has its own T factor. A config at a measured uniform T
is therefore predicted exactly, pruning aside.
"""
from __future__ import annotations

import dataclasses
import itertools
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spikeprune.models._compress import _head_rows, select_units
from spikeprune.models._config import CompressionConfig, SpikingBertConfig
from spikeprune.costs._ops import OpReport, count_ops
from spikeprune.models._families import family_of
from spikeprune.models._record import SimRecord
from spikeprune.models._model import SpikingBertForSequenceClassification

from spikeprune.samplers._stats import SpikeStats

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

    def _factor(self, layer: int, name: str, steps: int) -> float:
        """A population's count at uniform ``steps`` over its count at the base T (interpolated)."""
        measured = self.stats.by_steps
        base = self.stats.counts[layer][name]
        if not base:
            return 0.0
        if not measured:   # no uniform runs: the cap of one spike per step is all that is known
            return min(steps / max(self.stats.timesteps), 1.0)
        xs = [0, *sorted(measured)]
        ys = [0.0, *(measured[t][layer][name] / base for t in sorted(measured))]
        return float(np.interp(steps, xs, ys))

    def config(self, compression: CompressionConfig) -> SpikingBertConfig:
        """The compressed model's config (what count_ops sees)."""
        c = compression.resolve(self.base)
        return dataclasses.replace(self.base, heads=list(c.heads), intermediate_sizes=list(c.neurons),
                                   timesteps=list(c.timesteps), weight_bits=list(c.weight_bits))

    def record(self, config: SpikingBertConfig) -> SimRecord:
        """The predicted spike record of the compressed model ``config`` (see the module doc)."""
        stats = self.stats
        spikes = torch.arange(max(stats.timesteps) + 1, dtype=torch.float64)   # spikes per pair, by bin
        layers: list[dict[str, int]] = []
        previous_output = 0.0
        family = family_of(config.family)
        own = family.sequential   # else the bottleneck so far
        for l, steps in enumerate(config.timesteps if own else itertools.accumulate(config.timesteps, min)):
            sums = self._kept(l, config.heads[l], config.intermediate_sizes[l])
            names = [*family.populations, *(["input"] if l == 0 else [])]
            kept = {name: float(sums[name] @ spikes) for name in names}   # at the base T
            counts = {name: kept[name] * self._factor(l, name, steps) for name in names}
            if l > 0:
                counts["input"] = previous_output
            base = stats.counts[l]
            for name in family.products:   # the kept share of the population, times the product's own T factor
                share = kept[name] / base[name] if base[name] else 0.0
                counts[f"{name}_x_len"] = base[f"{name}_x_len"] * share * self._factor(l, f"{name}_x_len", steps)
            previous_output = counts["output"]
            layers.append({k: int(round(v)) for k, v in counts.items()})
        return SimRecord(examples=stats.examples, tokens=stats.tokens, token_pairs=stats.token_pairs, layers=layers)

    def predict(self, compression: CompressionConfig, energy: Any = "float45nm") -> OpReport:
        config = self.config(compression)
        return count_ops(config, self.record(config), energy)

    def objectives(self, compression: CompressionConfig, energy: Any = "float45nm") -> dict[str, float]:
        """The predicted cost objectives (everything a space may minimise; not the metric)."""
        return self.predict(compression, energy).costs()
