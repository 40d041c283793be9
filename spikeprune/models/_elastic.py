"""The time-elastic family: any per-layer number of steps T_l in 1..16 is a sensible network.

The converted family's neurons carry θ = λ/L whatever their steps, so below L steps most of their
2L+1 levels are out of reach (clipping) and cutting steps saves no spikes. Here the spike value
follows the steps instead (the research note's design A):

- **A θ table per T**: every population (and the embedding encoder) keeps one θ for each step
  count 1..16 (``thresholds`` [16, populations]); the trained per-unit scales of the residual
  populations are shared by all T. ``training.elastic_from_converted`` fills the table from a
  converted base by least squared error, no training.
- **Layer-sequential firing**: a population integrates its whole input first (the bias once),
  then fires for T_l steps at most one signed spike per step (``ElasticIFNeuron``). Its count
  is exactly clamp(round(x/θ), -T_l, T_l): the (2T_l+1)-level quantizer of its input, for any
  T_l, and at most T_l spikes per neuron, so fewer steps cost fewer spikes. Operators
  (attention with its softmax, LayerNorm, GELU) run once per token on the accumulated values,
  and a layer reads the previous layer's whole train however long it was: charge passes
  between layers with different T unchanged, and every spike sent is an event (counted
  spike by spike, no merged steps). Latency is Σ T_l.
- **The quantized twin**: the same layer code with ``fire`` computing that count directly
  (mode ``"twin"``). The neuron's arithmetic in θ units is exact, so the twin's values and the
  per-neuron |count| (hence every spike count) equal the simulation's bit for bit
  (``tests/test_elastic.py``); trials evaluate the twin, ``export`` re-measures by simulation.
  ``"surrogate"`` is the twin with straight-through gradients, for training.

``batched`` and ``lockstep`` are the same simulation: layers run one after the other by design,
each neuron stepped T_l times.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikeprune.errors import SpikepruneError
from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._converted import quantize_ste
from spikeprune.models._families import FAMILIES
from spikeprune.models._layer import EncoderLayerWeights, LayerRun, count_layer
from spikeprune.models._neurons import ElasticIFNeuron

FAMILY = FAMILIES["elastic"]
POPULATIONS: tuple[str, ...] = FAMILY.populations
RESIDUAL: tuple[str, ...] = FAMILY.residual
#: Largest steps per layer (rows of the θ table).
MAX_STEPS: int = FAMILY.threshold_rows

#: ``fire(name, current, theta, steps)`` -> (the population's value, its spike train or None).
Fire = Callable[[str, Tensor, Tensor, int], tuple[Tensor, Tensor | None]]


def check_steps(timesteps: list[int]) -> None:
    """Refuse steps beyond the θ table: a layer has a threshold for 1..MAX_STEPS steps only."""
    if any(t > MAX_STEPS for t in timesteps):
        raise SpikepruneError(f"the elastic family runs 1..{MAX_STEPS} steps per layer, got {timesteps}; "
                              f"pick timesteps <= {MAX_STEPS}")


class ElasticLayer(EncoderLayerWeights):
    """One encoder layer of the time-elastic family (the same weights as the other families')."""

    def __init__(self, cfg: SpikingBertConfig, index: int) -> None:
        super().__init__(cfg, index)
        #: θ of each population for each step count: row T-1, columns in POPULATIONS order.
        self.thresholds = nn.Parameter(torch.ones(MAX_STEPS, len(POPULATIONS)))
        #: Per-unit scales of the RESIDUAL populations' θ (residual_thresholds="unit"), [2, hidden].
        self.unit_scales = (nn.Parameter(torch.ones(len(RESIDUAL), cfg.hidden_size))
                            if cfg.residual_thresholds == "unit" else None)

    def theta(self, name: str, steps: int) -> Tensor:
        """θ of a population at ``steps``: a scalar, or [hidden] for a residual population with unit scales."""
        theta = self.thresholds[steps - 1, POPULATIONS.index(name)]
        if self.unit_scales is not None and name in RESIDUAL:
            return theta * self.unit_scales[RESIDUAL.index(name)]
        return theta

    def forward(self, x: Tensor, steps: int, key_mask: Tensor, fire: Fire) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """One layer on its input value ``x`` [B, L, H] (the previous population's accumulated
        output): every population's value and spike train (empty for the twin) and the scores."""
        values, trains = {}, {}

        def population(name: str, current: Tensor) -> Tensor:
            values[name], train = fire(name, current, self.theta(name, steps), steps)
            if train is not None:
                trains[name] = train
            return values[name]

        q = population("query", self.query(x))
        k = population("key", self.key(x))
        v = population("value", self.value(x))
        context, scores = self.attention(q, k, v, key_mask)
        c = population("context", context)
        a = population("attn_out", self.attn_norm(self.attn_out(c) + x))
        m = population("intermediate", F.gelu(self.intermediate(a)))
        population("output", self.out_norm(self.output(m) + a))
        return values, trains, scores


def encoder_theta(model: nn.Module, steps: int) -> Tensor:
    """θ of the embedding encoder at ``steps``: a scalar, or [hidden] with unit scales."""
    theta = model.encoder_threshold[steps - 1]
    return theta if model.encoder_scales is None else theta * model.encoder_scales


def twin_counts(current: Tensor, theta: Tensor, steps: int) -> Tensor:
    """The spike count of every neuron fed ``current`` at once and run ``steps`` steps:
    clamp(floor(current/θ + 1/2), -T, T), in the neuron's own float operations."""
    return torch.floor(current / theta + 0.5).clamp(-steps, steps)


class ElasticSimulation:
    """Builds the family's populations on a model and runs them (``model.run_encoder`` calls it)."""

    family = FAMILY

    def build(self, model: nn.Module) -> None:
        cfg = model.config
        check_steps(cfg.timesteps)
        #: One population of neurons serves every population in turn: a run starts from rest.
        model.encoder_neuron = ElasticIFNeuron()
        model.encoder_threshold = nn.Parameter(torch.ones(MAX_STEPS))
        model.encoder_scales = (nn.Parameter(torch.ones(cfg.hidden_size))
                                if cfg.residual_thresholds == "unit" else None)
        model.layers = nn.ModuleList(ElasticLayer(cfg, i) for i in range(cfg.num_layers))

    def run(self, model: nn.Module, mode: str, embedded: Tensor, token_mask: Tensor, key_mask: Tensor,
            record: bool) -> LayerRun:
        check_steps(model.config.timesteps)
        if mode == "surrogate":
            if record:
                raise SpikepruneError("the surrogate mode runs no spikes to record; use mode='twin' (the "
                                      "same values with exact counts) or mode='batched' to count operations")
            return self._run(model, embedded, token_mask, key_mask, _surrogate(token_mask), False, False)
        if mode == "twin":
            return self._run(model, embedded, token_mask, key_mask, _twin(token_mask), record, False)
        fire = _simulated(model.encoder_neuron, token_mask)
        return self._run(model, embedded, token_mask, key_mask, fire, record, True)

    @staticmethod
    def _run(model: nn.Module, embedded: Tensor, token_mask: Tensor, key_mask: Tensor, fire: Fire, record: bool,
             simulated: bool) -> LayerRun:
        """The encoder, then each layer in turn. Counts come from the trains: the simulated
        ones, or the twin's counts as one merged step (|count| spikes each)."""
        steps = model.config.timesteps
        x, x_train = fire("encoder", embedded, encoder_theta(model, steps[0]), steps[0])
        rates, scores, counts = [], [], []
        for i, (layer, t) in enumerate(zip(model.layers, steps)):
            values, trains, s = layer(x, t, key_mask, fire)
            if simulated:
                model.observe(i, x_train, trains)
            if record:
                counts.append(count_layer(x_train, trains, token_mask, FAMILY))
            x, x_train = values["output"], trains.get("output")
            rates.append(x)
            scores.append(s)
        return rates, scores, counts


def _simulated(neuron: ElasticIFNeuron, token_mask: Tensor) -> Fire:
    """Each population's neurons get their whole input at the first step and run T steps."""
    def fire(name: str, current: Tensor, theta: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        currents = torch.cat([current[None], current.new_zeros((steps - 1, *current.shape))])
        train = neuron.run(currents, theta, token_mask=token_mask)
        return train.sum(dim=0) * theta, train
    return fire


def _twin(token_mask: Tensor) -> Fire:
    def fire(name: str, current: Tensor, theta: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        count = twin_counts(current, theta, steps) * token_mask
        return count * theta, count[None]
    return fire


def _surrogate(token_mask: Tensor) -> Fire:
    def fire(name: str, current: Tensor, theta: Tensor, steps: int) -> tuple[Tensor, None]:
        return quantize_ste(current, theta, steps) * token_mask, None
    return fire
