"""The model families as counting, costs, prepare and export see them: plain data, no torch.

A family is a way to run BERT's weights as spikes. Its simulation lives in its own module
(``_spikingbert.py``, ``_converted.py``); what the rest of spikeprune needs to know about it is
declared here, once, so that operation counting stays importable without torch and nothing else
compares family names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from spikeprune.errors import SpikepruneError

if TYPE_CHECKING:
    from spikeprune.models._config import SpikingBertConfig


@dataclass(frozen=True)
class Family:
    """What one family's spikes mean for counting, conversion and storage."""

    name: str
    #: The spiking populations of one encoder layer, in the order they fire (the layer's input
    #: train, counted as "input", aside).
    populations: tuple[str, ...]
    #: Populations whose every spike meets each position of its example in attention (Q·Kᵀ, P·V):
    #: the record keeps ``<name>_x_len`` for them.
    products: tuple[str, ...]
    #: Populations whose every spike also adds its θ into a running sum (one accumulate).
    running_sums: tuple[str, ...]
    #: Hidden-width populations that may carry one θ per unit (``residual_thresholds="unit"``).
    residual: tuple[str, ...]
    #: Spikes are signed (a -1 costs an accumulate like a +1).
    signed: bool
    #: Linear layers add their bias at every step (else once, at the first step).
    bias_every_step: bool
    #: Operators work on accumulated input and emit f(X_t) - f(X_{t-1}): each costs a subtraction
    #: per step, and the change of the attention probabilities multiplies the accumulated V.
    incremental: bool
    #: The readout a student of this family is built with at conversion.
    readout: str
    #: Its thresholds are trainable parameters, calibrated from the teacher's activations at prepare.
    calibrated: bool
    #: A layer integrates its whole input before its populations fire (one population after the
    #: other): LayerNorm, softmax and GELU run once per token, not once per step, and the context
    #: is one float product of the probabilities and the accumulated V.
    sequential: bool = False
    #: Thresholds kept per population: one, or one per timestep count 1..rows (a θ table).
    threshold_rows: int = 1
    #: The family ``prepare`` converts the teacher to first, when a student of this one is made
    #: from another's (the elastic one: from a trained converted student), else None.
    made_from: str | None = None

    def threshold_parameters(self, config: SpikingBertConfig) -> int:
        """Float parameters that are thresholds: the encoder's θ and every population's, with the
        per-unit scales of the residual populations."""
        if not self.calibrated:
            return 0
        scales = config.hidden_size if config.residual_thresholds == "unit" else 0
        populations = 1 + config.num_layers * len(self.populations)
        return self.threshold_rows * populations + scales * (1 + config.num_layers * len(self.residual))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    # SpikingBERT's reference semantics: binary IF neurons, softmax and LayerNorm on each step's spikes.
    Family("spikingbert", populations=("key", "value", "context", "attn_out", "intermediate", "output"),
           products=("key", "value"), running_sums=(), residual=(), signed=False, bias_every_step=True,
           incremental=False, readout="mean", calibrated=False),
    # Conversion-faithful: signed IF neurons whose counts equal a quantized BERT's activations.
    Family("converted", populations=("query", "key", "value", "context", "attn_out", "intermediate", "output"),
           products=("query", "key", "value"), running_sums=("query", "key", "value"),
           residual=("attn_out", "output"), signed=True, bias_every_step=False, incremental=True,
           readout="cls", calibrated=True),
    # Time-elastic: the spike value follows the layer's steps (θ(T)/T-style table), so any
    # per-layer T is a (2T+1)-level quantized network; layers run one after the other.
    Family("elastic", populations=("query", "key", "value", "context", "attn_out", "intermediate", "output"),
           products=("query",), running_sums=("key", "value"), residual=("attn_out", "output"), signed=True,
           bias_every_step=False, incremental=False, readout="cls", calibrated=True, sequential=True,
           threshold_rows=16, made_from="converted"),
)}


def family_of(name: str) -> Family:
    """The family called ``name``, or one clear line naming the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise SpikepruneError(f"model family {name!r} is unknown; use one of {tuple(FAMILIES)}") from None
