"""The spiking BERT for sequence classification, whatever its family: you can read it top to bottom.

BERT's embeddings (float, run once) feed the family's spiking encoder (the embedding enters it
as a current), whose last layer the float pooler and classifier read. What the spikes are and
how they are simulated is the family's (``config.family``): ``_spikingbert.py`` for SpikingBERT's
reference semantics, ``_converted.py`` for the conversion-faithful family, which the shipped
presets use. Both share the layer weights (``_layer.py``), so conversion, pruning, quantization
and the saved format act on either alike.

Modes: ``batched`` (default: layer by layer, whole trains per matmul), ``lockstep`` (the
reference: every layer one step at a time, the same spikes as ``batched``), ``surrogate``
(training: the family's differentiable stand-in) and ``twin`` (the time-elastic family's quantized
twin: the simulation's values and spike counts without stepping the neurons, ``_elastic.py``). The saved format is ``_checkpoint.py``'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikeprune.errors import SpikepruneError
from spikeprune.models import _checkpoint as checkpoint
from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._converted import ConvertedSimulation
from spikeprune.models._elastic import ElasticSimulation
from spikeprune.models._layer import LayerRun
from spikeprune.models._record import SimRecord
from spikeprune.models._spikingbert import SpikingBertSimulation

#: Each family's simulation, by ``config.family``.
SIMULATIONS = {sim.family.name: sim for sim in (SpikingBertSimulation(), ConvertedSimulation(), ElasticSimulation())}
MODES: tuple[str, ...] = ("batched", "lockstep", "surrogate", "twin")


@dataclass
class SpikingOutput:
    logits: Tensor
    loss: Tensor | None = None
    hidden_rates: list[Tensor] = field(default_factory=list)
    attention_scores: list[Tensor] = field(default_factory=list)
    record: SimRecord | None = None


class Embeddings(nn.Module):
    """BERT embeddings (word + position + token type, LayerNorm): float work, run once."""

    def __init__(self, cfg: SpikingBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        return self.LayerNorm(x + self.token_type_embeddings(token_type_ids))


class SpikingBertForSequenceClassification(nn.Module):
    """Spiking BERT with a float pooler and classifier on the last layer's spiking rate."""

    #: Largest spike train (bytes) one simulation slice may hold; see ``_run_in_slices``.
    slice_bytes: int = 24 * 2**20

    def __init__(self, config: SpikingBertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        #: The family's simulation; it builds the encoder neuron and the layers (and the
        #: converted family's encoder θ) as attributes of this module, so the saved keys are
        #: the same whatever the family.
        self.simulation = SIMULATIONS[config.family]
        self.simulation.build(self)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        #: Called as ``observer(layer, population, spikes [T, B, L, D])`` for every train of a
        #: batched simulation ("input" included): how the base's spike statistics are gathered
        #: (``spikeprune.samplers._stats``) without a second copy of the simulation.
        self.spike_observer: Callable[[int, str, Tensor], None] | None = None
        #: Populations (the converted family's names, and "encoder") its surrogate
        #: leaves unquantized: no hardware runs this, it shows where a base loses accuracy to
        #: quantization (``benchmarks/bench_fidelity.py --quantization-loss``).
        self.float_populations: frozenset[str] = frozenset()

    # ----------------------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None,
                mode: str = "batched", record: bool = False) -> SpikingOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask.to(torch.float32)
        token_mask = mask[..., None]                                  # [B, L, 1]
        key_mask = ((1.0 - mask) * torch.finfo(torch.float32).min)[:, None, None, :]  # [B,1,1,L]
        embedded = self.embeddings(input_ids, token_type_ids)

        if mode not in MODES:
            raise SpikepruneError(f"unknown simulation mode {mode!r}; use batched, lockstep, surrogate or twin")
        if mode == "twin" and not self.simulation.family.sequential:
            raise SpikepruneError(f"the {self.config.family} family has no exact quantized twin; use mode='batched'")
        if mode == "surrogate":
            rates, scores, layer_counts = self.simulation.run(self, mode, embedded, token_mask, key_mask, record)
        else:
            rates, scores, layer_counts = self._run_in_slices(mode, embedded, token_mask, key_mask, record)

        logits = self.classifier(torch.tanh(self.pooler(self._readout(rates[-1], token_mask))))
        loss = self.loss(logits, labels) if labels is not None else None
        sim = None
        if record:
            lengths = attention_mask.sum(dim=1).to(torch.int64)
            sim = SimRecord(examples=int(input_ids.shape[0]), tokens=int(lengths.sum()),
                            token_pairs=int((lengths * lengths).sum()), layers=layer_counts)
        return SpikingOutput(logits=logits, loss=loss, hidden_rates=rates, attention_scores=scores, record=sim)

    def _run_in_slices(self, mode: str, embedded: Tensor, token_mask: Tensor, key_mask: Tensor,
                       record: bool) -> LayerRun:
        """Simulate the batch in slices whose widest spike train stays under ``slice_bytes``.

        Examples are independent, so slicing changes no spike and no count. It is about speed: a
        tensor above glibc's 32 MiB mmap threshold is mapped fresh and page-faulted on every
        allocation, which made a batch of 64 at T = 16 spend as much time in the kernel as in the
        arithmetic (benchmarks/bench_slices.py measures it)."""
        cfg = self.config
        batch, length = embedded.shape[:2]
        width = max(cfg.hidden_size, *cfg.intermediate_sizes)
        per_example = max(cfg.timesteps) * length * width * embedded.element_size()
        size = max(1, self.slice_bytes // per_example)
        if size >= batch:
            return self.simulation.run(self, mode, embedded, token_mask, key_mask, record)
        parts = [self.simulation.run(self, mode, embedded[i:i + size], token_mask[i:i + size], key_mask[i:i + size], record)
                 for i in range(0, batch, size)]
        rates = [torch.cat(layer) for layer in zip(*(p[0] for p in parts))]
        scores = [torch.cat(layer) for layer in zip(*(p[1] for p in parts))]
        counts = [{key: sum(c[key] for c in layer) for key in layer[0]} for layer in zip(*(p[2] for p in parts))]
        return rates, scores, counts

    def _readout(self, rates: Tensor, token_mask: Tensor) -> Tensor:
        """The sentence representation the classifier sees: the mean over real tokens ("mean", for
        rates, since the rate at [CLS] alone barely depends on the input) or the value at [CLS]
        ("cls", for the converted family's accumulated values, as the teacher's pooler expects)."""
        if self.config.readout == "cls":
            return rates[:, 0]
        return (rates * token_mask).sum(dim=1) / token_mask.sum(dim=1)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.config.is_regression:
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    def observe(self, layer: int, x: Tensor, outputs: dict[str, Tensor]) -> None:
        """Hand a batched simulation's trains of one layer ("input" and every population) to
        ``spike_observer``, if one is set."""
        if self.spike_observer is not None:
            for name, spikes in {"input": x, **outputs}.items():
                self.spike_observer(layer, name, spikes)

    # ---------------------------------------------------------------------------- storage
    def save_pretrained(self, folder: str | Path, packed: bool = False) -> Path:
        """Write config.json and model.safetensors (checkpoint.py); ``packed`` stores quantized
        layers at their bit widths."""
        return checkpoint.save(self.config, self.state_dict(), folder, packed=packed)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "SpikingBertForSequenceClassification":
        """Load a folder written by ``save_pretrained`` (packed or not)."""
        config, state, source = checkpoint.load(folder)
        model = cls(config)
        model.load_state(state, source=source)
        return model.eval()

    def load_state(self, state: dict[str, Tensor], source: str) -> None:
        """Load weights, turning any shape or key mismatch into one clear line."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise SpikepruneError(f"{source} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for key, value in state.items():
            if value.shape != expected[key].shape:
                raise SpikepruneError(f"{source}: {key} has shape {tuple(value.shape)} but the config "
                                      f"implies {tuple(expected[key].shape)}; config and weights disagree")
        self.load_state_dict(state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

