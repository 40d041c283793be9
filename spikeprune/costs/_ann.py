"""The ANNs a spiking trial is worth comparing with: exact operation counts and energy of the teacher
and of the trial's integer twin, on the same real tokens as the trial (docs/DESIGN.md §4).

A spiking network is worth deploying only where it costs less than the network it was converted
from, so every trial carries three reference points counted on the examples it was evaluated on:

- ``teacher``: the dense fp32 ANN (the base student's architecture, which is the teacher's: the
  student is converted from it layer for layer), every weight and activation a float;
- ``teacher_int8``: the same dense network with 8-bit weights and activations, the integer twin
  of the dense student;
- ``twin``: the trial's own structure (the heads and FFN neurons it keeps) as an integer network,
  8-bit activations and the trial's weight bits, a layer it keeps in float at 8 bits. The converted
  student computes an L-level quantized network exactly (levels fit in 8 bits), so the twin of a
  trial without float layers scores what the trial scores.

Counts are exact integers over the record, by kind. Multiply-accumulates (``PRODUCT_KINDS``):
every Linear of a token (Q, K, V, attention output, FFN in and out), the two attention products
(Q·Kᵀ and probabilities·V: head_dim MACs per head and query-key pair of an example), and the
pooler and classifier at [CLS]. Float operations (``FLOAT_KINDS``) use the spiking counter's
per-element constants (``costs/_ops.py``) evaluated once instead of every step: embedding,
LayerNorm, softmax, GELU, the pooler's tanh, bias adds and the residual adds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from spikeprune.errors import SpikepruneError
from spikeprune.models._config import FLOAT_BITS, SpikingBertConfig
from spikeprune.models._record import SimRecord
from spikeprune.costs._ops import (ANN_ACTIVATION_BITS, EMBEDDING_ADDS_PER_ELEMENT, GELU_OPS_PER_ELEMENT,
                                   LAYERNORM_OPS_PER_ELEMENT, PJ_PER_UJ, SOFTMAX_OPS_PER_ENTRY, TANH_OPS_PER_ELEMENT,
                                   EnergyModel, _layer_linears, resolve_energy)

#: Multiply-accumulates of an ANN, by kind.
PRODUCT_KINDS: tuple[str, ...] = ("projection", "attention", "pooler", "classifier")
#: Float operations of an ANN (MAC-equivalents, as the spiking counter's), by kind.
FLOAT_KINDS: tuple[str, ...] = ("embedding", "layernorm", "softmax", "gelu", "tanh", "bias", "residual")
ANN_KINDS: tuple[str, ...] = (*PRODUCT_KINDS, *FLOAT_KINDS)
#: Weight width the integer twin gives a layer the trial keeps in float (int8, the integer
#: network's usual width), so the twin is never a float network that would flatter the spiking one.
TWIN_FLOAT_LAYER_BITS = 8.0
#: The reference networks of an ``AnnReference``, by attribute, with the names people read.
ANN_NETWORKS: dict[str, str] = {"teacher": "fp32 teacher", "teacher_int8": "int8 teacher", "twin": "integer twin"}


def ann_ops(config: SpikingBertConfig, examples: int, tokens: int, token_pairs: int) -> dict[str, list[int]]:
    """Exact operations of ``config``'s architecture run as an ANN over ``examples`` examples of
    ``tokens`` real tokens in all (``token_pairs`` = Σ over examples of length²), by kind, each
    a list with one entry per encoder layer and a last entry for what runs outside the layers
    (embedding, pooler, classifier), so a per-layer weight width can price the projections."""
    h, layers = config.hidden_size, config.num_layers
    ops = {kind: [0] * (layers + 1) for kind in ANN_KINDS}
    for l in range(layers):
        linears = _layer_linears(config, l)
        inner, m = config.heads[l] * config.head_dim, config.intermediate_sizes[l]
        ops["projection"][l] = tokens * sum(i * o for i, o in linears)
        ops["attention"][l] = 2 * inner * token_pairs          # Q·Kᵀ and probabilities·V
        ops["softmax"][l] = config.heads[l] * token_pairs * SOFTMAX_OPS_PER_ENTRY
        ops["layernorm"][l] = 2 * tokens * h * LAYERNORM_OPS_PER_ELEMENT
        ops["gelu"][l] = tokens * m * GELU_OPS_PER_ELEMENT
        ops["bias"][l] = tokens * sum(o for _, o in linears)
        ops["residual"][l] = 2 * tokens * h
    ops["embedding"][layers] = tokens * h * (EMBEDDING_ADDS_PER_ELEMENT + LAYERNORM_OPS_PER_ELEMENT)
    ops["pooler"][layers] = examples * h * h
    ops["tanh"][layers] = examples * h * TANH_OPS_PER_ELEMENT
    ops["classifier"][layers] = examples * h * config.num_labels
    ops["bias"][layers] = examples * (h + config.num_labels)
    return ops


def ann_energy_pj(ops: Mapping[str, list[int]], model: EnergyModel, weight_bits: list[float] | None) -> dict[str, float]:
    """Energy (pJ) of ``ann_ops`` by kind. ``weight_bits`` None is the fp32 network (every MAC
    ``mac_pj``); a list is an integer network with 8-bit activations: layer l's projections cost
    ``int_mac_pj(weight_bits[l])`` and the attention products ``int_mac_pj(8)``. Pooler and
    classifier stay float (as in the student), float operations cost ``mac_pj`` and residual adds
    ``ac_pj`` on both, exactly as the spiking counter prices the same float work."""
    fp32 = weight_bits is None
    energy = {kind: sum(counts) * model.mac_pj for kind, counts in ops.items()}
    energy["residual"] = sum(ops["residual"]) * model.ac_pj
    if not fp32:
        energy["projection"] = sum(n * model.int_mac_pj(b) for n, b in zip(ops["projection"], weight_bits))
        energy["attention"] = sum(ops["attention"]) * model.int_mac_pj(ANN_ACTIVATION_BITS)
    return energy


@dataclass
class AnnNetwork:
    """One reference ANN, per example of the record it was counted on."""

    name: str
    weight_bits: list[float]
    activation_bits: float
    macs: float                          # multiply-accumulates (PRODUCT_KINDS)
    float_ops: float                     # float operations (FLOAT_KINDS)
    ops_by_kind: dict[str, float]
    energy_uj: float
    energy_by_kind: dict[str, float]     # µJ


def ann_network(name: str, config: SpikingBertConfig, record: SimRecord, model: EnergyModel,
                weight_bits: list[float] | None) -> AnnNetwork:
    """``config``'s architecture as an ANN on ``record``'s tokens: fp32 (``weight_bits`` None) or
    integer with 8-bit activations and ``weight_bits`` per layer."""
    ops = ann_ops(config, record.examples, record.tokens, record.token_pairs)
    energy = ann_energy_pj(ops, model, weight_bits)
    n = record.examples
    return AnnNetwork(
        name=name, weight_bits=[FLOAT_BITS] * config.num_layers if weight_bits is None else list(weight_bits),
        activation_bits=FLOAT_BITS if weight_bits is None else ANN_ACTIVATION_BITS,
        macs=sum(sum(ops[k]) for k in PRODUCT_KINDS) / n, float_ops=sum(sum(ops[k]) for k in FLOAT_KINDS) / n,
        ops_by_kind={k: sum(v) / n for k, v in ops.items()},
        energy_uj=sum(energy.values()) / PJ_PER_UJ / n, energy_by_kind={k: v / PJ_PER_UJ / n for k, v in energy.items()})


def twin_bits(config: SpikingBertConfig) -> list[float]:
    """Weight widths of a config's integer twin: its own, a float layer's at 8 bits."""
    return [b if b < FLOAT_BITS else TWIN_FLOAT_LAYER_BITS for b in config.weight_bits]


@dataclass
class AnnReference:
    """The ANN reference points of one evaluated model, on the examples and tokens it was evaluated on."""

    examples: int
    tokens_per_example: float
    energy_model: str
    teacher: AnnNetwork
    teacher_int8: AnnNetwork
    twin: AnnNetwork

    def ratios(self, energy_uj: float) -> dict[str, float]:
        """A spiking energy per example as a multiple of each reference's (above 1: the ANN costs less)."""
        return {key: energy_uj / getattr(self, key).energy_uj for key in ANN_NETWORKS}

    def headline(self) -> str:
        """One line: the ANN teacher's energy per example, fp32 and int8, and what it was counted on."""
        return (f"fp32 {self.teacher.energy_uj:.4g} µJ, int8 {self.teacher_int8.energy_uj:.4g} µJ per example "
                f"({self.examples} examples of {self.tokens_per_example:.1f} tokens, {self.energy_model})")

    def summary(self, energy_uj: float) -> dict[str, Any]:
        """The few numbers a reader wants (exported configs): each reference's energy per example
        and the spiking energy as a multiple of it."""
        return {"energy_model": self.energy_model, "examples": self.examples,
                "tokens_per_example": self.tokens_per_example, "spiking_energy_uj": energy_uj,
                "energy_uj": {key: getattr(self, key).energy_uj for key in ANN_NETWORKS},
                "spiking_x": self.ratios(energy_uj)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AnnReference":
        try:
            networks = {key: AnnNetwork(**data[key]) for key in ANN_NETWORKS}
            return cls(examples=int(data["examples"]), tokens_per_example=float(data["tokens_per_example"]),
                       energy_model=str(data["energy_model"]), **networks)
        except (KeyError, TypeError) as e:
            raise SpikepruneError(f"not an ANN reference ({e}); measure the trial again with this spikeprune") from None


def ann_reference(dense: SpikingBertConfig, config: SpikingBertConfig, record: SimRecord,
                  energy: EnergyModel | str | Mapping[str, Any] = "float45nm") -> AnnReference:
    """The fp32 teacher, the int8 teacher and the integer twin of ``config`` (a compression of the
    ``dense`` base) on the real tokens of ``record``, the spike record ``config``'s model produced."""
    if record.examples <= 0 or record.tokens <= 0:
        raise SpikepruneError("the spike record is empty; run the model with record=True on at least one batch")
    if (dense.num_layers, dense.hidden_size, dense.head_dim) != (config.num_layers, config.hidden_size, config.head_dim):
        raise SpikepruneError("the compressed config has another shape than the dense one; pass the base student's config")
    model = resolve_energy(energy)
    return AnnReference(
        examples=record.examples, tokens_per_example=record.tokens / record.examples, energy_model=model.name,
        teacher=ann_network(ANN_NETWORKS["teacher"], dense, record, model, None),
        teacher_int8=ann_network(ANN_NETWORKS["teacher_int8"], dense, record, model, [8.0] * dense.num_layers),
        twin=ann_network(ANN_NETWORKS["twin"], config, record, model, twin_bits(config)))


def format_ann(reference: AnnReference, energy_uj: float) -> str:
    """Terminal lines: each reference ANN's operations and energy, and the spiking energy's ratio to it."""
    ratios = reference.ratios(energy_uj)
    lines = [f"ANN references on the same {reference.tokens_per_example:.1f} real tokens per example "
             f"(energy model {reference.energy_model}):"]
    for key in ANN_NETWORKS:
        net = getattr(reference, key)
        widths = [f"{b:g}" for b in net.weight_bits]
        bits = widths[0] if len(set(widths)) == 1 else f"[{','.join(widths)}]"
        shape = f"W{bits}A{net.activation_bits:g}"
        lines.append(f"  {net.name:<13} {shape:<22}{net.macs:>14,.0f} MACs  "
                     f"{net.float_ops:>12,.0f} float ops  {net.energy_uj:>10.4g} µJ   spiking = {ratios[key]:.3g}x")
    return "\n".join(lines)
