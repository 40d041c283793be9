"""A SpikingBERT-style encoder you can read top to bottom.

Each encoder layer is six spiking sublayers, each ending in a population of integrate-and-fire
neurons (docs/DESIGN.md §3): K, V, attention context, attention output (+residual, LayerNorm),
intermediate (GELU), output (+residual, LayerNorm). The BERT embedding drives an IF encoder as a
constant current; the classifier reads the average spiking rate (ASR) of the last layer,
averaged over the real tokens (``readout="mean"``, the default) or at [CLS] (``readout="cls"``).

Three ways to run the same weights:

- ``mode="batched"`` (default): layer by layer, each sublayer's Linear on the whole spike train
  in one matmul, then the IF recurrence over time. Layers may run different numbers of steps.
- ``mode="lockstep"``: the reference, every layer advanced one timestep at a time. It needs equal
  timesteps in every layer and gives exactly the spikes of ``batched``.
- ``mode="surrogate"``: for training. Values are the simulated rates; gradients flow through the
  equilibrium map ``a_out = clamp(f(a_in) / θ, 0, 1)`` (a straight-through estimator), so the
  backward pass costs one non-spiking forward whatever T is.

That is the ``spikingbert`` family. A config with ``family="converted"`` builds the same weights
into the conversion-faithful family of _converted.py (signed neurons, operators on accumulated
input); this class then runs its simulation (``_simulate_converted``) and, as its surrogate, the
quantized network the spikes converge to (``_quantized``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikeprune.errors import SpikepruneError

from spikeprune.models import _checkpoint as checkpoint
from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._converted import Accumulator, ConvertedLayer, quantize_ste, retime
from spikeprune.models._layer import EncoderLayerWeights
from spikeprune.models._neurons import IFNeuron, SignedIFNeuron

#: The spiking populations of one layer, in the order they fire.
SUBLAYERS: tuple[str, ...] = ("key", "value", "context", "attn_out", "intermediate", "output")


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


@dataclass
class SimRecord:
    """Spike counts of one or more batches, the raw material for operation counting.

    Counts are exact integers over real (non-padding) tokens. ``layers[l]`` maps each sublayer of
    ``SUBLAYERS`` (and ``"input"``, the train entering the layer) to its spike count, plus
    ``key_x_len``/``value_x_len``: Σ over examples of that example's K or V spikes times its
    length, i.e. the adds Q·Kᵀ and probs·V perform on binary K and V.
    """

    examples: int = 0
    tokens: int = 0
    token_pairs: int = 0
    layers: list[dict[str, int]] = field(default_factory=list)

    def merge(self, other: "SimRecord") -> "SimRecord":
        if not self.layers:
            self.layers = [dict.fromkeys(layer, 0) for layer in other.layers]
        self.examples += other.examples
        self.tokens += other.tokens
        self.token_pairs += other.token_pairs
        for mine, theirs in zip(self.layers, other.layers):
            for key, value in theirs.items():
                mine[key] += value
        return self


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


# A "fire" function turns a sublayer's input current into spikes. Batched simulation runs the
# neuron over the whole train, lockstep steps it once, the surrogate returns rates with an STE.
Fire = Callable[[str, Tensor], Tensor]


class SpikingLayer(EncoderLayerWeights):
    """One encoder layer; its math is written once and shared by all three modes."""

    def __init__(self, cfg: SpikingBertConfig, index: int) -> None:
        super().__init__(cfg, index)
        self.neurons = nn.ModuleDict({name: IFNeuron(cfg.threshold, cfg.leak) for name in SUBLAYERS})

    def forward(self, x: Tensor, key_mask: Tensor, fire: Fire) -> tuple[dict[str, Tensor], Tensor]:
        """Run the six sublayers on input ``x`` ([..., B, L, H]); return every sublayer's output
        and the attention scores (pre-softmax)."""
        k = fire("key", self.key(x))
        v = fire("value", self.value(x))
        q = self.query(x)
        scores = self._heads(q) @ self._heads(k).transpose(-1, -2) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + key_mask, dim=-1)
        context = (probs @ self._heads(v)).transpose(-2, -3).flatten(-2)
        c = fire("context", context)
        a = fire("attn_out", self.attn_norm(self.attn_out(c) + x))
        m = fire("intermediate", F.gelu(self.intermediate(a)))
        y = fire("output", self.out_norm(self.output(m) + a))
        return {"key": k, "value": v, "context": c, "attn_out": a, "intermediate": m, "output": y}, scores


class SpikingBertForSequenceClassification(nn.Module):
    """Spiking BERT with a float pooler and classifier on the last layer's spiking rate."""

    #: Largest spike train (bytes) one simulation slice may hold; see ``_run_in_slices``.
    slice_bytes: int = 24 * 2**20

    def __init__(self, config: SpikingBertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        if config.family == "converted":
            self.encoder_neuron = SignedIFNeuron(config.levels)
            self.encoder_threshold = nn.Parameter(torch.ones(()))
            #: per-unit scales of the encoder's θ (residual_thresholds="unit"; see _converted.py)
            self.encoder_scales = (nn.Parameter(torch.ones(config.hidden_size))
                                   if config.residual_thresholds == "unit" else None)
            self.layers = nn.ModuleList(ConvertedLayer(config, i) for i in range(config.num_layers))
        else:
            self.encoder_neuron = IFNeuron(config.threshold, config.leak)
            self.layers = nn.ModuleList(SpikingLayer(config, i) for i in range(config.num_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        #: Called as ``observer(layer, population, spikes [T, B, L, D])`` for every train of a
        #: batched simulation ("input" included): how the base's spike statistics are gathered
        #: (``spikeprune.samplers._stats``) without a second copy of the simulation.
        self.spike_observer: Callable[[int, str, Tensor], None] | None = None
        #: Populations (``spikeprune.models.POPULATIONS`` names, and "encoder") the converted family's surrogate
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

        if mode not in ("batched", "lockstep", "surrogate"):
            raise SpikepruneError(f"unknown simulation mode {mode!r}; use batched, lockstep or surrogate")
        if mode == "surrogate":
            rates, scores, layer_counts = self._run(mode, embedded, token_mask, key_mask, record)
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

    def _run(self, mode: str, embedded: Tensor, token_mask: Tensor, key_mask: Tensor,
             record: bool) -> tuple[list[Tensor], list[Tensor], list[dict[str, int]]]:
        """One simulation (or the surrogate) of the whole batch, by family and mode."""
        if self.config.family == "converted":
            if mode == "surrogate":
                if record:
                    raise SpikepruneError("the converted family's surrogate mode runs no spikes to record; "
                                          "use mode='batched' to count operations")
                return self._quantized(embedded, token_mask, key_mask)
            return self._simulate_converted(embedded, token_mask, key_mask, record, lockstep=mode == "lockstep")
        if mode == "batched":
            return self._simulate_batched(embedded, token_mask, key_mask, record)[:3]
        if mode == "lockstep":
            return self._simulate_lockstep(embedded, token_mask, key_mask, record)
        return self._surrogate(embedded, token_mask, key_mask, record)

    def _run_in_slices(self, mode: str, embedded: Tensor, token_mask: Tensor, key_mask: Tensor,
                       record: bool) -> tuple[list[Tensor], list[Tensor], list[dict[str, int]]]:
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
            return self._run(mode, embedded, token_mask, key_mask, record)
        parts = [self._run(mode, embedded[i:i + size], token_mask[i:i + size], key_mask[i:i + size], record)
                 for i in range(0, batch, size)]
        rates = [torch.cat(layer) for layer in zip(*(p[0] for p in parts))]
        scores = [torch.cat(layer) for layer in zip(*(p[1] for p in parts))]
        counts = [{key: sum(c[key] for c in layer) for key in layer[0]} for layer in zip(*(p[2] for p in parts))]
        return rates, scores, counts

    def _readout(self, rates: Tensor, token_mask: Tensor) -> Tensor:
        """The sentence representation the classifier sees. Averaging over real tokens is the
        SpikingBERT family's default because the binary rate at [CLS] barely depends on the input
        (``benchmarks/probe_readout.py`` compares the two); the converted family reads [CLS],
        whose accumulated value is the quantized teacher's."""
        if self.config.readout == "cls":
            return rates[:, 0]
        return (rates * token_mask).sum(dim=1) / token_mask.sum(dim=1)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.config.is_regression:
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    # ------------------------------------------------------------------------- simulation
    def _encode(self, embedded: Tensor, steps: int, token_mask: Tensor) -> Tensor:
        """Constant-current IF encoding of the embedding into a spike train [T, B, L, H]."""
        return self.encoder_neuron.run(embedded.expand(steps, *embedded.shape), token_mask)

    def _simulate_batched(self, embedded: Tensor, token_mask: Tensor, key_mask: Tensor, record: bool,
                          keep_sublayers: bool = False) -> tuple[list[Tensor], list[Tensor], list[dict[str, int]], list[dict[str, Tensor]]]:
        """Layer by layer, whole trains at once. Returns each layer's output rate and mean attention
        scores, spike counts when ``record``, and every sublayer's rate when ``keep_sublayers``."""
        cfg = self.config
        x = self._encode(embedded, cfg.timesteps[0], token_mask)
        rates, scores, counts, sublayers = [], [], [], []
        for layer, steps in zip(self.layers, cfg.timesteps):
            x = align_train(x, steps, cfg.boundary, cfg.threshold)
            outputs, s = layer(x, key_mask, lambda name, c, layer=layer: layer.neurons[name].run(c, token_mask))
            self._observe(len(rates), x, outputs)
            if record:
                counts.append(_count_layer(x, outputs, token_mask))
            if keep_sublayers:
                sublayers.append({"input": x.mean(dim=0), **{n: t.mean(dim=0) for n, t in outputs.items()}})
            x = outputs["output"]
            rates.append(x.mean(dim=0))
            scores.append(s.mean(dim=0))
        return rates, scores, counts, sublayers

    def _observe(self, layer: int, x: Tensor, outputs: dict[str, Tensor]) -> None:
        if self.spike_observer is not None:
            for name, spikes in {"input": x, **outputs}.items():
                self.spike_observer(layer, name, spikes)

    def _simulate_lockstep(self, embedded: Tensor, token_mask: Tensor, key_mask: Tensor,
                           record: bool) -> tuple[list[Tensor], list[Tensor], list[dict[str, int]]]:
        cfg = self.config
        steps = cfg.timesteps[0]
        if any(t != steps for t in cfg.timesteps):
            raise SpikepruneError("lockstep simulation needs the same timesteps in every layer; use mode='batched'")
        neurons = [self.encoder_neuron, *(n for layer in self.layers for n in layer.neurons.values())]
        for n in neurons:
            n.reset()
        n_layers = len(self.layers)
        spike_sums = [torch.zeros_like(embedded) for _ in range(n_layers)]
        score_sums: list[Tensor | float] = [0.0] * n_layers
        counts = [None] * n_layers
        for _ in range(steps):
            x = self.encoder_neuron.step(embedded) * token_mask
            for i, layer in enumerate(self.layers):
                def fire(name: str, current: Tensor, layer: SpikingLayer = layer) -> Tensor:
                    return layer.neurons[name].step(current) * token_mask
                outputs, s = layer(x, key_mask, fire)
                if record:
                    step_counts = _count_layer(x[None], {k: v[None] for k, v in outputs.items()}, token_mask)
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

    def _surrogate(self, embedded: Tensor, token_mask: Tensor, key_mask: Tensor,
                   record: bool) -> tuple[list[Tensor], list[Tensor], list[dict[str, int]]]:
        """Rates with straight-through gradients: value = simulated ASR, gradient = d clamp(f/θ)."""
        with torch.no_grad():
            _, _, counts, simulated = self._simulate_batched(embedded, token_mask, key_mask, record, keep_sublayers=True)
        theta = self.config.threshold

        def straight_through(approx: Tensor, target: Tensor) -> Tensor:
            # target + 0 keeps the simulated value bit-exact; approx + (target - approx) can be 1 ulp off.
            return target + (approx - approx.detach())

        x = straight_through(torch.clamp(embedded / theta, 0.0, 1.0) * token_mask, simulated[0]["input"])
        rates, scores = [], []
        for layer, target in zip(self.layers, simulated):
            def fire(name: str, current: Tensor, target: dict[str, Tensor] = target) -> Tensor:
                return straight_through(torch.clamp(current / theta, 0.0, 1.0) * token_mask, target[name])
            outputs, s = layer(x, key_mask, fire)
            x = outputs["output"]
            rates.append(x)
            scores.append(s)
        return rates, scores, counts

    # ------------------------------------------------------------- the converted family
    def _simulate_converted(self, embedded: Tensor, token_mask: Tensor, key_mask: Tensor, record: bool,
                            lockstep: bool) -> tuple[list[Tensor], list[Tensor], list[dict[str, int]]]:
        """Signed spikes through operators on accumulated input (_converted.py). Batched runs each
        layer over its whole train; lockstep advances every layer one step at a time through the
        same code, so both give the same spikes. Returns each layer's accumulated output value,
        its accumulated attention scores at the last step, and spike counts when ``record``."""
        cfg = self.config
        steps = cfg.timesteps[0]
        if lockstep and any(t != steps for t in cfg.timesteps):
            raise SpikepruneError("lockstep simulation needs the same timesteps in every layer; use mode='batched'")
        neurons = [self.encoder_neuron, *(n for layer in self.layers for n in layer.neurons.values())]
        for n in neurons:
            n.reset()
        # The embedding is the encoder's accumulated input from the first step on.
        currents = torch.cat([embedded[None], embedded.new_zeros((steps - 1, *embedded.shape))])
        states = [Accumulator() for _ in self.layers]
        # Only what is returned is kept across layers and chunks (whole trains of every layer
        # would cost gigabytes at T = 16): output spikes summed over time, counts, last scores.
        totals: list[Tensor | float] = [0.0] * len(self.layers)
        counts: list[dict[str, int]] = [{} for _ in self.layers]
        last_scores: list[Tensor] = [embedded.new_zeros(())] * len(self.layers)
        for start in (range(steps) if lockstep else (0,)):
            chunk = currents[start:start + 1] if lockstep else currents
            theta_in = self.encoder_theta()
            x = self.encoder_neuron.advance(chunk, theta_in) * token_mask
            for i, (layer, t) in enumerate(zip(self.layers, cfg.timesteps)):
                if not lockstep:
                    x = retime(x, t)

                def fire(name: str, current: Tensor, layer: ConvertedLayer = layer) -> Tensor:
                    return layer.neurons[name].advance(current, layer.theta(name)) * token_mask

                outputs, s = layer(x, theta_in, key_mask, states[i], start == 0, fire)
                if not lockstep:
                    self._observe(i, x, outputs)
                if record:  # counts add up over chunks: every count is a sum over time
                    chunk_counts = _count_layer(x, outputs, token_mask, products=("query", "key", "value"),
                                                signed=True)
                    counts[i] = {k: counts[i].get(k, 0) + v for k, v in chunk_counts.items()}
                totals[i] = totals[i] + outputs["output"].sum(dim=0)
                last_scores[i] = s[-1].clone()
                x, theta_in = outputs["output"], layer.theta("output")
        for n in neurons:
            n.reset()
        rates = [total * layer.theta("output") for total, layer in zip(totals, self.layers)]
        return rates, last_scores, counts if record else []

    def encoder_theta(self) -> Tensor:
        """θ of the converted family's embedding encoder: a scalar, or [hidden] with unit scales."""
        if self.encoder_scales is None:
            return self.encoder_threshold
        return self.encoder_threshold * self.encoder_scales

    def _quantized(self, embedded: Tensor, token_mask: Tensor,
                   key_mask: Tensor) -> tuple[list[Tensor], list[Tensor], list[dict[str, int]]]:
        """The converted family's surrogate: the L-level quantized network its spikes converge to,
        with straight-through gradients (QCFS-style training of weights and thresholds)."""
        keep_float = self.float_populations
        x = embedded if "encoder" in keep_float else quantize_ste(embedded, self.encoder_theta(), self.config.levels)
        x = x * token_mask
        rates, scores = [], []
        for layer in self.layers:
            outputs, s = layer.quantized(x, key_mask, keep_float=keep_float)
            x = outputs["output"] * token_mask
            rates.append(x)
            scores.append(s)
        return rates, scores, []

    # ---------------------------------------------------------------------------- storage
    def save_pretrained(self, folder: str | Path, packed: bool = False) -> Path:
        """Write config.json and model.safetensors (_checkpoint.py); ``packed`` stores quantized
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


def _count_layer(x: Tensor, outputs: dict[str, Tensor], token_mask: Tensor,
                 products: tuple[str, ...] = ("key", "value"), signed: bool = False) -> dict[str, int]:
    """Exact spike counts of one layer's trains (each [T, B, L, D], padding already zeroed). With
    ``signed`` (the converted family) a -1 spike counts once and a merged step of k spikes k times;
    binary trains are summed as they are. ``products`` are the populations whose spikes meet every
    position of their example in attention (``<name>_x_len``).

    Counts are summed per example in float32, exact while one example has < 2^24 spikes per
    sublayer (T·L·D = 16·512·1536 is 1.3e7), then totalled in int64: cheap next to the run."""
    lengths = token_mask[..., 0].sum(dim=-1).to(torch.int64)    # [B]
    per_example = {name: (spikes.abs() if signed else spikes).sum(dim=(0, 2, 3)).to(torch.int64)
                   for name, spikes in {"input": x, **outputs}.items()}
    counts = {name: int(n.sum()) for name, n in per_example.items()}
    for name in products:
        counts[f"{name}_x_len"] = int((per_example[name] * lengths).sum())
    return counts
