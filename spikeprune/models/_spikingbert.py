"""The SpikingBERT family, after Bal and Sengupta (AAAI 2024): binary IF neurons, and softmax and
LayerNorm applied to each timestep's spikes.

Each encoder layer is six spiking sublayers, each ending in a population of integrate-and-fire
neurons (docs/DESIGN.md §3): K, V, attention context, attention output (+residual, LayerNorm),
intermediate (GELU), output (+residual, LayerNorm). The BERT embedding drives an IF encoder as a
constant current; the classifier reads the average spiking rate (ASR) of the last layer.

Three ways to run the same weights:

- ``mode="batched"`` (default): layer by layer, each sublayer's Linear on the whole spike train
  in one matmul, then the IF recurrence over time. Layers may run different numbers of steps.
- ``mode="lockstep"``: the reference, every layer advanced one timestep at a time. It needs equal
  timesteps in every layer and gives exactly the spikes of ``batched``.
- ``mode="surrogate"``: for training. Values are the simulated rates; gradients flow through the
  equilibrium map ``a_out = clamp(f(a_in) / θ, 0, 1)`` (a straight-through estimator), so the
  backward pass costs one non-spiking forward whatever T is.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikeprune.errors import SpikepruneError
from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._families import FAMILIES
from spikeprune.models._layer import EncoderLayerWeights, LayerRun, count_layer
from spikeprune.models._neurons import IFNeuron

FAMILY = FAMILIES["spikingbert"]

# A "fire" function turns a sublayer's input current into spikes. Batched simulation runs the
# neuron over the whole train, lockstep steps it once, the surrogate returns rates with an STE.
Fire = Callable[[str, Tensor], Tensor]


def align_train(spikes: Tensor, steps: int, rule: str, threshold: float) -> Tensor:
    """Adapt a spike train of T_prev steps (dim 0) to a layer that runs ``steps`` steps.

    ``repeat`` takes the last ``steps`` steps, cycling backwards when more are needed, so the
    settled tail of the previous layer is what the next layer sees. ``rate`` re-encodes the
    previous layer's average rate with a fresh IF encoder. Equal lengths pass through untouched,
    which is what makes batched and lockstep simulation agree exactly.
    """
    prev = spikes.shape[0]
    if prev == steps:
        return spikes
    if rule == "repeat":
        index = torch.tensor([(prev - steps + t) % prev for t in range(steps)], device=spikes.device)
        return spikes.index_select(0, index)
    rate = spikes.mean(dim=0)
    return IFNeuron(threshold).run(rate.expand(steps, *rate.shape) * threshold)


class SpikingLayer(EncoderLayerWeights):
    """One encoder layer; its math is written once and shared by all three modes."""

    def __init__(self, cfg: SpikingBertConfig, index: int) -> None:
        super().__init__(cfg, index)
        self.neurons = nn.ModuleDict({name: IFNeuron(cfg.threshold, cfg.leak) for name in FAMILY.populations})

    def forward(self, x: Tensor, key_mask: Tensor, fire: Fire) -> tuple[dict[str, Tensor], Tensor]:
        """Run the six sublayers on input ``x`` ([..., B, L, H]); return every sublayer's output
        and the attention scores (pre-softmax)."""
        k = fire("key", self.key(x))
        v = fire("value", self.value(x))
        context, scores = self.attention(self.query(x), k, v, key_mask)
        c = fire("context", context)
        a = fire("attn_out", self.attn_norm(self.attn_out(c) + x))
        m = fire("intermediate", F.gelu(self.intermediate(a)))
        y = fire("output", self.out_norm(self.output(m) + a))
        return {"key": k, "value": v, "context": c, "attn_out": a, "intermediate": m, "output": y}, scores


class SpikingBertSimulation:
    """Builds the family's populations on a model and runs them (``model.run_encoder`` calls it)."""

    family = FAMILY

    def build(self, model: nn.Module) -> None:
        cfg = model.config
        model.encoder_neuron = IFNeuron(cfg.threshold, cfg.leak)
        model.layers = nn.ModuleList(SpikingLayer(cfg, i) for i in range(cfg.num_layers))

    def run(self, model: nn.Module, mode: str, embedded: Tensor, token_mask: Tensor, key_mask: Tensor,
            record: bool) -> LayerRun:
        if mode == "batched":
            return self.batched(model, embedded, token_mask, key_mask, record)[:3]
        if mode == "lockstep":
            return self.lockstep(model, embedded, token_mask, key_mask, record)
        return self.surrogate(model, embedded, token_mask, key_mask, record)

    def batched(self, model: nn.Module, embedded: Tensor, token_mask: Tensor, key_mask: Tensor, record: bool,
                keep_sublayers: bool = False) -> tuple[list[Tensor], list[Tensor], list[dict[str, int]], list[dict[str, Tensor]]]:
        """Layer by layer, whole trains at once. Returns each layer's output rate and mean attention
        scores, spike counts when ``record``, and every sublayer's rate when ``keep_sublayers``."""
        cfg = model.config
        x = model.encoder_neuron.run(embedded.expand(cfg.timesteps[0], *embedded.shape), token_mask=token_mask)
        rates, scores, counts, sublayers = [], [], [], []
        for layer, steps in zip(model.layers, cfg.timesteps):
            x = align_train(x, steps, cfg.boundary, cfg.threshold)
            outputs, s = layer(x, key_mask, lambda name, c, layer=layer: layer.neurons[name].run(c, token_mask=token_mask))
            model.observe(len(rates), x, outputs)
            if record:
                counts.append(count_layer(x, outputs, token_mask, FAMILY))
            if keep_sublayers:
                sublayers.append({"input": x.mean(dim=0), **{n: t.mean(dim=0) for n, t in outputs.items()}})
            x = outputs["output"]
            rates.append(x.mean(dim=0))
            scores.append(s.mean(dim=0))
        return rates, scores, counts, sublayers

    def lockstep(self, model: nn.Module, embedded: Tensor, token_mask: Tensor, key_mask: Tensor,
                 record: bool) -> LayerRun:
        cfg = model.config
        steps = cfg.timesteps[0]
        if any(t != steps for t in cfg.timesteps):
            raise SpikepruneError("lockstep simulation needs the same timesteps in every layer; use mode='batched'")
        neurons = [model.encoder_neuron, *(n for layer in model.layers for n in layer.neurons.values())]
        for n in neurons:
            n.reset()
        n_layers = len(model.layers)
        spike_sums = [torch.zeros_like(embedded) for _ in range(n_layers)]
        score_sums: list[Tensor | float] = [0.0] * n_layers
        counts = [None] * n_layers
        for _ in range(steps):
            x = model.encoder_neuron.step(embedded) * token_mask
            for i, layer in enumerate(model.layers):
                def fire(name: str, current: Tensor, layer: SpikingLayer = layer) -> Tensor:
                    return layer.neurons[name].step(current) * token_mask
                outputs, s = layer(x, key_mask, fire)
                if record:
                    step_counts = count_layer(x[None], {k: v[None] for k, v in outputs.items()}, token_mask, FAMILY)
                    counts[i] = step_counts if counts[i] is None else {
                        k: counts[i][k] + step_counts[k] for k in step_counts}
                x = outputs["output"]
                spike_sums[i] = spike_sums[i] + x
                score_sums[i] = score_sums[i] + s
        for n in neurons:
            n.reset()
        rates = [s / steps for s in spike_sums]
        scores = [s / steps for s in score_sums]
        return rates, scores, (counts if record else [])

    def surrogate(self, model: nn.Module, embedded: Tensor, token_mask: Tensor, key_mask: Tensor,
                  record: bool) -> LayerRun:
        """Rates with straight-through gradients: value = simulated ASR, gradient = d clamp(f/θ)."""
        with torch.no_grad():
            _, _, counts, simulated = self.batched(model, embedded, token_mask, key_mask, record, keep_sublayers=True)
        theta = model.config.threshold

        def straight_through(approx: Tensor, target: Tensor) -> Tensor:
            # target + 0 keeps the simulated value bit-exact; approx + (target - approx) can be 1 ulp off.
            return target + (approx - approx.detach())

        x = straight_through(torch.clamp(embedded / theta, 0.0, 1.0) * token_mask, simulated[0]["input"])
        rates, scores = [], []
        for layer, target in zip(model.layers, simulated):
            def fire(name: str, current: Tensor, target: dict[str, Tensor] = target) -> Tensor:
                return straight_through(torch.clamp(current / theta, 0.0, 1.0) * token_mask, target[name])
            outputs, s = layer(x, key_mask, fire)
            x = outputs["output"]
            rates.append(x)
            scores.append(s)
        return rates, scores, counts
