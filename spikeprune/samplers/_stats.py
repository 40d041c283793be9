"""Spike statistics of a prepared base, the input of the cost predictor (_cost_model.py).

Two things, both measured on the same dev examples:

- for every layer and population, a histogram per channel: how many (token, channel) pairs spent
  k spikes at the base's timesteps (k = 0..K, |spikes| summed over the steps, so a signed -1
  counts once, as it costs one accumulate). Summing ``k`` over the rows of the kept channels
  gives the count that remains after pruning; gathered through the model's ``spike_observer``;
- every population's total count when the whole model runs T steps, for a few uniform T
  (``by_steps``): fewer steps cut counts by more than the cap of one spike per step, because a
  deep layer's input arrives late, so the predictor reads the effect of T from these runs.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import field, dataclass
from pathlib import Path

import torch
from torch import Tensor

from spikeprune.models._evaluation import Evaluation, evaluate_model
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.errors import SpikepruneError

FORMAT = 2


@dataclass
class SpikeStats:
    """Histograms ``[layer][population] -> [channels, K + 1]`` plus the base record's token totals."""

    family: str
    timesteps: list[int]
    examples: int
    tokens: int
    token_pairs: int
    counts: list[dict[str, int]]          # the base SimRecord's layers (spike counts and *_x_len)
    histograms: list[dict[str, Tensor]]
    metric: float                         # the base's metric on the same examples
    by_steps: dict[int, list[dict[str, int]]] = field(default_factory=dict)   # uniform T -> record layers

    @classmethod
    def gather(cls, model: SpikingBertForSequenceClassification, batches: Iterable[dict[str, Tensor]],
               task: str, steps: Iterable[int] = ()) -> "tuple[SpikeStats, Evaluation, dict[int, Evaluation]]":
        """One evaluation of ``model`` on ``batches`` with every spike train histogrammed, then one
        simulation at each uniform T of ``steps``; the statistics, that evaluation and those
        simulations (their predictions give the sensitivity profile's timestep term)."""
        from spikeprune.models._compress import set_timesteps

        batches = list(batches)
        cfg = model.config
        top = max(cfg.timesteps)
        hists: list[dict[str, Tensor]] = [{} for _ in range(cfg.num_layers)]

        def observe(layer: int, name: str, spikes: Tensor) -> None:
            per_unit = spikes.abs().sum(dim=0).round().to(torch.int64).clamp_(0, top)   # [B, L, D]
            width = per_unit.shape[-1]
            flat = (per_unit.reshape(-1, width) * width + torch.arange(width)).reshape(-1)
            hist = torch.bincount(flat, minlength=(top + 1) * width).reshape(top + 1, width).T.to(torch.float64)
            hists[layer][name] = hists[layer].get(name, 0) + hist

        model.spike_observer = observe
        try:
            evaluation = evaluate_model(model, batches, task)
        finally:
            model.spike_observer = None
        record = evaluation.record
        by_steps = {}
        if len(set(cfg.timesteps)) == 1:
            by_steps[cfg.timesteps[0]] = [dict(layer) for layer in record.layers]
        at_steps = {int(t): evaluate_model(set_timesteps(model, t), batches, task)
                    for t in sorted(set(steps) - set(by_steps))}
        by_steps.update({t: [dict(layer) for layer in ev.record.layers] for t, ev in at_steps.items()})
        stats = cls(family=cfg.family, timesteps=list(cfg.timesteps), examples=record.examples, tokens=record.tokens,
                    token_pairs=record.token_pairs, counts=[dict(layer) for layer in record.layers],
                    histograms=hists, metric=float(evaluation.metrics["metric"]), by_steps=by_steps)
        return stats, evaluation, at_steps

    def save(self, path: str | Path) -> Path:
        """safetensors with the scalars as JSON metadata; written to a temporary name, then renamed."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{l}.{name}": h.contiguous() for l, layer in enumerate(self.histograms) for name, h in layer.items()}
        meta = {"format": FORMAT, "family": self.family, "timesteps": self.timesteps, "examples": self.examples,
                "tokens": self.tokens, "token_pairs": self.token_pairs, "counts": self.counts, "metric": self.metric,
                "by_steps": {str(t): layers for t, layers in self.by_steps.items()}}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"spikeprune": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SpikeStats":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["spikeprune"])
                tensors = {key: f.get_tensor(key) for key in f.keys()}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')}, expected {FORMAT}")
            hists: list[dict[str, Tensor]] = [{} for _ in meta["timesteps"]]
            for key, value in tensors.items():
                layer, name = key.split(".", 1)
                hists[int(layer)][name] = value
            return cls(family=meta["family"], timesteps=meta["timesteps"], examples=meta["examples"],
                       tokens=meta["tokens"], token_pairs=meta["token_pairs"], counts=meta["counts"],
                       histograms=hists, metric=meta["metric"],
                       by_steps={int(t): layers for t, layers in meta["by_steps"].items()})
        except (OSError, KeyError, ValueError, SafetensorError) as e:
            raise SpikepruneError(f"{path} is not a spike-statistics file ({e}); delete it and it is gathered again") from None
