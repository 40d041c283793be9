"""Exact operation, energy, latency and size accounting from recorded spike counts (docs/DESIGN.md §4).

``count_ops`` is pure arithmetic on a ``SimRecord`` (the model counts spikes while it runs) and the
model's config (which gives every fan-out after pruning), so it costs nothing next to a forward pass.

What is counted, per real (non-padding) token:

- Synaptic operations (SOPs, accumulates): every spike entering a Linear costs one add per output
  neuron it reaches. A layer's input spikes drive Q, K and V (fan-out heads·head_dim each; Q is a
  real-valued projection of *spikes*, so it is accumulates too), context spikes drive attn_out
  (fan-out hidden), attn_out spikes drive intermediate (fan-out intermediate_size), intermediate
  spikes drive output (fan-out hidden). With binary K and V, Q·Kᵀ and probs·V are accumulates as
  well: each K (V) spike adds one Q value (probability) per query position it meets, which the
  model records as ``key_x_len`` (``value_x_len``). The two residual connections add a spike into
  the float pre-LayerNorm sum: one add per spike, counted as an accumulate ("residual" bucket).
- Float operations (MACs): everything dense and real-valued, by kind. Every float operation counts
  as one MAC-equivalent (energy E_MAC), which is conservative for the adds among them. Bias adds
  are counted here: a bias is a dense float current added to every output neuron at every timestep.
- Not counted: IF neuron updates (integrate, compare, reset, leak). They are reported separately as
  ``neuron_updates`` so nothing is hidden, but they are state updates, not synaptic operations.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from spikeprune.errors import SpikepruneError

from spikeprune.models._config import FLOAT_BITS, SpikingBertConfig
from spikeprune.models._families import Family, family_of
from spikeprune.models._record import SimRecord

# ------------------------------------------------------------------------------ float-op costs
#: Embedding: word + position + token type is two vector adds of hidden_size per token (run once,
#: the result is injected as a constant current every timestep), followed by a LayerNorm.
EMBEDDING_ADDS_PER_ELEMENT = 2
#: LayerNorm per element: accumulate the mean, subtract it, multiply-accumulate the variance,
#: scale by 1/σ, affine γ·x + β (one MAC). The per-row 1/√(var + ε) is O(1) per row and ignored.
LAYERNORM_OPS_PER_ELEMENT = 5
#: Softmax per score entry: scale by 1/√head_dim, exp, accumulate the row sum, divide by it.
#: (Subtracting the row max is a numerical-stability detail of float hardware and not counted.)
SOFTMAX_OPS_PER_ENTRY = 4
#: GELU per element, 0.5·x·(1 + erf(x/√2)): scale, erf (one special-function op), add, two multiplies.
GELU_OPS_PER_ELEMENT = 5
#: Pooler tanh per element: one special-function op.
TANH_OPS_PER_ELEMENT = 1
#: Readout per hidden unit: ASR = spike count / (T·tokens), one divide (counting the spikes is
#: free); the "mean" readout also adds every real token's count: one add per token and unit.
READOUT_OPS_PER_ELEMENT = 1

#: Names of the MAC kinds, in report order. The converted family adds, per step, "increment" (the
#: subtractions f(X_t) - f(X_{t-1}) of its accumulated operators) and "attention" (the change of
#: the attention probabilities times the accumulated V, float by float).
MAC_KINDS: tuple[str, ...] = ("embedding", "layernorm", "softmax", "gelu", "bias", "classifier")
INCREMENTAL_MAC_KINDS: tuple[str, ...] = ("increment", "attention")
#: Names of the SOP buckets of one layer, in the order the work happens.
SOP_BUCKETS: tuple[str, ...] = ("query", "key", "value", "attention", "attn_out", "intermediate",
                                "output", "residual")
#: Buckets whose accumulates add a *weight* of the layer (so their width is the layer's weight_bits);
#: "attention" adds float Q values / probabilities and "residual" adds into a float sum.
WEIGHT_BUCKETS: frozenset[str] = frozenset({"query", "key", "value", "attn_out", "intermediate", "output"})

# ----------------------------------------------------------------------------- size accounting
#: Bits of the float scale every output channel of a quantized weight tensor carries.
SCALE_BITS = 32
#: Information content of a ternary weight {-1, 0, 1}: log2(3) ≈ 1.58496 bits.
TERNARY_BITS = math.log2(3)
#: Packed storage of a ternary weight (what export writes): 2 bits.
TERNARY_PACKED_BITS = 2
#: Decimal megabyte: size_mb = size_bits / 8 / 10**6.
BYTES_PER_MB = 10**6

# ------------------------------------------------------------------------------- energy figures
# M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm, 0.9 V:
#   add:  8-bit int 0.03 pJ, 32-bit int 0.1 pJ, 16-bit float 0.4 pJ, 32-bit float 0.9 pJ
#   mult: 8-bit int 0.2 pJ,  32-bit int 3.1 pJ, 16-bit float 1.1 pJ, 32-bit float 3.7 pJ
# The SNN literature's E_AC = 0.9 pJ and E_MAC = 4.6 pJ are the fp32 add and fp32 mult + add.
FP32_ADD_PJ = 0.9
FP32_MAC_PJ = 4.6   # fp32 mult 3.7 + fp32 add 0.9
INT8_ADD_PJ = 0.03
INT32_ADD_PJ = 0.1
INT8_MULT_PJ = 0.2
#: Activation width of the integer ANN twin (costs/_ann.py): the weights multiply 8-bit activations.
ANN_ACTIVATION_BITS = 8.0
PJ_PER_UJ = 1e6


def _interpolate(points: Mapping[float, float], bits: float) -> float:
    """Piecewise-linear in ``bits`` through ``points`` (width -> pJ), extrapolated linearly beyond
    the end points (adder and, at a fixed activation width, multiplier energy grow linearly with
    the weight width)."""
    ordered = sorted(points.items())
    # The segment containing ``bits``, or the first/last one to extrapolate from.
    i = next((k for k in range(1, len(ordered) - 1) if bits < ordered[k][0]), len(ordered) - 1)
    (b0, e0), (b1, e1) = ordered[i - 1], ordered[i]
    return e0 + (bits - b0) * (e1 - e0) / (b1 - b0)


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in pJ. ``int_add_pj`` maps integer operand widths to add energy; when
    set, an accumulate of a b-bit weight (b < 32) costs the piecewise-linear interpolation of those
    points in b (extrapolated linearly beyond the end points), while 32-bit (float) weights and
    float adds (attention, residual) cost ``ac_pj``. Empty ``int_add_pj`` makes every accumulate
    cost ``ac_pj`` whatever the bit width. MACs of the spiking network always cost ``mac_pj``
    (activations stay float). ``int_mult_pj`` maps weight widths to the energy of multiplying an
    8-bit activation by a weight of that width; it prices the integer ANN twin's multiply-
    accumulates (``costs/_ann.py``), and when empty an integer MAC costs ``mac_pj`` like a float one."""

    name: str
    ac_pj: float
    mac_pj: float
    int_add_pj: dict[float, float] = field(default_factory=dict)
    int_mult_pj: dict[float, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tables = {"int_add_pj": self.int_add_pj, "int_mult_pj": self.int_mult_pj}
        if self.ac_pj < 0 or self.mac_pj < 0 or any(v < 0 for t in tables.values() for v in t.values()):
            raise SpikepruneError(f"energy model {self.name!r} has a negative energy; give pJ values >= 0")
        for key, table in tables.items():
            if len(table) == 1:
                raise SpikepruneError(f"energy model {self.name!r}: {key} needs at least two widths to interpolate, or none")

    def weight_ac_pj(self, bits: float) -> float:
        """Energy of accumulating one weight of ``bits`` width."""
        if bits >= FLOAT_BITS or not self.int_add_pj:
            return self.ac_pj
        return _interpolate(self.int_add_pj, bits)

    def int_mac_pj(self, bits: float) -> float:
        """Energy of one integer multiply-accumulate of an 8-bit activation by a ``bits``-wide weight:
        the multiply, plus an add as wide as the wider operand (an 8-bit MAC is an 8-bit multiply
        and an 8-bit add, as the spiking side's accumulate is an add as wide as its weight; neither
        side models the accumulator's growth). Float weights, or a model without ``int_mult_pj``,
        cost ``mac_pj``."""
        if bits >= FLOAT_BITS or not self.int_mult_pj:
            return self.mac_pj
        return _interpolate(self.int_mult_pj, bits) + self.weight_ac_pj(max(bits, ANN_ACTIVATION_BITS))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ac_pj": self.ac_pj, "mac_pj": self.mac_pj,
                "int_add_pj": {str(b): e for b, e in sorted(self.int_add_pj.items())},
                "int_mult_pj": {str(b): e for b, e in sorted(self.int_mult_pj.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EnergyModel":
        """Build from a dict such as ``{"name": "mychip", "ac_pj": 0.5, "mac_pj": 2.0,
        "int_add_pj": {"4": 0.01, "8": 0.02}, "int_mult_pj": {"4": 0.1, "8": 0.2}}`` (JSON object
        keys may be strings)."""
        known = {"name", "ac_pj", "mac_pj", "int_add_pj", "int_mult_pj"}
        if not isinstance(data, Mapping) or not {"ac_pj", "mac_pj"} <= set(data) or set(data) - known:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise SpikepruneError(f"an energy model needs keys ac_pj and mac_pj (optional: name, int_add_pj, "
                                  f"int_mult_pj), got {got}")
        try:
            ac, mac = float(data["ac_pj"]), float(data["mac_pj"])
            int_add, int_mult = ({float(b): float(e) for b, e in dict(data.get(key) or {}).items()}
                                 for key in ("int_add_pj", "int_mult_pj"))
        except (TypeError, ValueError) as e:
            raise SpikepruneError(f"energy model values must be numbers in pJ ({e})") from None
        return cls(name=str(data.get("name", "custom")), ac_pj=ac, mac_pj=mac, int_add_pj=int_add, int_mult_pj=int_mult)


#: Named energy presets; pass a name, an ``EnergyModel``, a dict or a JSON file path to ``count_ops``.
ENERGY_PRESETS: dict[str, EnergyModel] = {
    # Bit-width blind: every accumulate is an fp32 add, every MAC an fp32 mult + add.
    "float45nm": EnergyModel("float45nm", ac_pj=FP32_ADD_PJ, mac_pj=FP32_MAC_PJ),
    # Bit-width aware: a b-bit weight accumulate costs an integer add of width b, linear in b through
    # Horowitz's 8-bit (0.03 pJ) and 32-bit (0.1 pJ) points: 0.03 + (b - 8)·0.07/24 pJ, e.g.
    # 1 bit 0.0096, 1.58 bits 0.0113, 2 bits 0.0125, 4 bits 0.0183, 8 bits 0.03 pJ. The
    # accumulator's own width is not modelled. Float (32-bit) layers and float adds cost 0.9 pJ.
    # The integer ANN twin multiplies an 8-bit activation by a b-bit weight; an array multiplier's
    # energy grows with the product of its operand widths (Horowitz: 8x8 0.2 pJ, 32x32 3.1 pJ,
    # about 16x), so an 8 x b multiply costs b/8 of the 8x8 one: the line through 8 bits 0.2 pJ
    # and 32 bits 0.8 pJ, e.g. 4 bits 0.1, 2 bits 0.05, 1 bit 0.025 pJ.
    "int45nm": EnergyModel("int45nm", ac_pj=FP32_ADD_PJ, mac_pj=FP32_MAC_PJ,
                           int_add_pj={8.0: INT8_ADD_PJ, 32.0: INT32_ADD_PJ},
                           int_mult_pj={8.0: INT8_MULT_PJ, 32.0: INT8_MULT_PJ * 4}),
}


def resolve_energy(energy: EnergyModel | str | Mapping[str, Any]) -> EnergyModel:
    """A preset name, a path to a JSON file holding an energy-model object, a dict, or a model."""
    if isinstance(energy, EnergyModel):
        return energy
    if isinstance(energy, Mapping):
        return EnergyModel.from_dict(energy)
    if energy in ENERGY_PRESETS:
        return ENERGY_PRESETS[energy]
    path = Path(energy)
    if path.suffix == ".json" and path.is_file():
        try:
            return EnergyModel.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise SpikepruneError(f"{path} is not valid JSON (line {e.lineno}); fix the energy model file") from None
    raise SpikepruneError(f"unknown energy model {energy!r}; use one of {sorted(ENERGY_PRESETS)} or a .json file with ac_pj and mac_pj")


# ------------------------------------------------------------------------------------ sizes
def bits_per_weight(bits: float, packed: bool = False) -> float:
    """Storage of one encoder weight at ``bits`` width (information content, or packed storage)."""
    if bits == 1.58:
        return TERNARY_PACKED_BITS if packed else TERNARY_BITS
    return float(bits)


def _layer_linears(config: SpikingBertConfig, l: int) -> list[tuple[int, int]]:
    """(in, out) features of layer l's Linears: query, key, value, attn_out, intermediate, output."""
    h, inner, m = config.hidden_size, config.heads[l] * config.head_dim, config.intermediate_sizes[l]
    return [(h, inner), (h, inner), (h, inner), (inner, h), (h, m), (m, h)]


def _float_parameters(config: SpikingBertConfig) -> int:
    """Parameters always stored as float: embeddings, LayerNorms, all biases, pooler, classifier,
    and the converted family's thresholds (one per population, and per residual unit with
    ``residual_thresholds="unit"``)."""
    h = config.hidden_size
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    layers = sum(sum(out for _, out in _layer_linears(config, l)) + 2 * 2 * h for l in range(config.num_layers))
    heads = h * h + h + h * config.num_labels + config.num_labels
    return embeddings + layers + heads + family_of(config.family).threshold_parameters(config)


def count_parameters(config: SpikingBertConfig) -> int:
    """Number of parameters of a model with this config (equals ``model.num_parameters()``)."""
    weights = sum(i * o for l in range(config.num_layers) for i, o in _layer_linears(config, l))
    return weights + _float_parameters(config)


def size_bits(config: SpikingBertConfig, packed: bool = False) -> float:
    """Model size in bits: encoder Linear weights at their layer's width plus a 32-bit scale per
    output channel of a quantized tensor; everything else (biases, LayerNorm, embeddings, pooler,
    classifier) float."""
    total = float(_float_parameters(config) * FLOAT_BITS)
    for l, bits in enumerate(config.weight_bits):
        linears = _layer_linears(config, l)
        total += sum(i * o for i, o in linears) * bits_per_weight(bits, packed)
        if bits < FLOAT_BITS:
            total += sum(o for _, o in linears) * SCALE_BITS
    return total


# ----------------------------------------------------------------------------------- report
@dataclass
class OpReport:
    """Per-example operation counts, energy, latency and size of one evaluated model.

    Everything is per example (totals over the record divided by ``examples``) unless it sits in
    ``totals``. Lists are indexed by layer. JSON-able through ``to_dict``/``from_dict``.
    """

    examples: int
    tokens_per_example: float
    sops: float                                # synaptic accumulates
    macs: float                                # float operations (MAC-equivalents)
    macs_by_kind: dict[str, float]             # MAC_KINDS -> MACs
    energy_uj: float                           # E_AC·SOPs + E_MAC·MACs
    energy_by_kind: dict[str, float]           # {"ac": µJ, "mac": µJ}
    sum_t: int                                 # Σ_l T_l: latency on layer-sequential hardware
    max_t: int                                 # max_l T_l: latency on pipelined hardware
    timesteps: list[int]
    size_bits: float                           # information content (ternary = log2 3 bits)
    size_bits_packed: float                    # ternary stored in 2 bits
    size_mb: float                             # size_bits / 8 / 10**6
    parameters: int
    neurons: int                               # IF neurons per token (encoder + every sublayer)
    neuron_updates: float                      # neuron-timesteps; not synaptic ops, not in energy
    sops_per_layer: list[dict[str, float]]     # [layer][SOP_BUCKETS]
    firing_rates: list[dict[str, float]]       # [layer]["input" and each population]: spikes/(neurons·T·tokens)
    totals: dict[str, float]                   # sops, macs (exact integers), energy_uj, tokens
    energy_model: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def costs(self) -> dict[str, float]:
        """The cost objectives a search can minimise, by the names of the space files."""
        return {"sops": self.sops, "energy_uj": self.energy_uj, "sum_t": float(self.sum_t),
                "max_t": float(self.max_t), "size_mb": self.size_mb}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OpReport":
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise SpikepruneError(f"not an op report: missing {sorted(names - set(data))}, unknown {sorted(set(data) - names)}")
        return cls(**data)


def _check(config: SpikingBertConfig, record: SimRecord) -> None:
    if record.examples <= 0 or record.tokens <= 0:
        raise SpikepruneError("the spike record is empty; run the model with record=True on at least one batch")
    if len(record.layers) != config.num_layers:
        raise SpikepruneError(f"the spike record has {len(record.layers)} layers but the config {config.num_layers}; "
                              f"count with the config of the model that made the record")
    family = family_of(config.family)
    needed = {"input", *family.populations, *(f"{name}_x_len" for name in family.products)}
    for l, counts in enumerate(record.layers):
        if not needed <= set(counts):
            raise SpikepruneError(f"spike record layer {l} lacks {sorted(needed - set(counts))}; record it with the model's forward(record=True)")


def mac_kinds(family: Family) -> tuple[str, ...]:
    """The MAC kinds a model of ``family`` reports, in report order."""
    if family.incremental:
        return (*MAC_KINDS, *INCREMENTAL_MAC_KINDS)
    return (*MAC_KINDS, "attention") if family.sequential else MAC_KINDS


def layer_sops(config: SpikingBertConfig, l: int, counts: Mapping[str, int]) -> dict[str, int]:
    """Exact accumulates of layer ``l`` by bucket, from its spike counts and its pruned fan-outs.

    A signed spike costs one accumulate, like a binary one. In attention, every K and V spike adds
    one value per query position it meets; in the converted family every Q spike also adds one
    accumulated K value per key position (Q·Kᵀ grows by Q_t·ΔKᵀ + ΔQ·K_{t-1}ᵀ), and each Q, K or V
    spike adds θ into its population's running sum. In the elastic family only Q spikes meet the
    (accumulated) K, and K and V spikes are summed into their values; P·V is float (float_macs).
    """
    family = family_of(config.family)
    h, inner, m = config.hidden_size, config.heads[l] * config.head_dim, config.intermediate_sizes[l]
    attention = sum(counts[f"{name}_x_len"] for name in family.products)
    attention += sum(counts[name] for name in family.running_sums)
    return {
        "query": counts["input"] * inner,
        "key": counts["input"] * inner,
        "value": counts["input"] * inner,
        "attention": attention,
        "attn_out": counts["context"] * h,
        "intermediate": counts["attn_out"] * m,
        "output": counts["intermediate"] * h,
        "residual": counts["input"] + counts["attn_out"],
    }


def float_macs(config: SpikingBertConfig, record: SimRecord) -> dict[str, int]:
    """Exact float operations of the whole record by kind (real tokens only).

    Both families evaluate LayerNorm, softmax and GELU at every step (the converted family on the
    accumulated input). SpikingBERT's Linear layers add their bias at every step, the converted
    family's once; the converted family also subtracts each accumulated operator's previous output
    at every step ("increment") and multiplies the change of the attention probabilities by the
    accumulated V ("attention"). The elastic family runs its operators once per token (a layer
    integrates its whole input before firing) and forms the context as one float product of the
    probabilities and the accumulated V ("attention"); its Q spikes meet the accumulated K
    (accumulates, ``layer_sops``), so no product is charged twice.
    """
    h, tokens = config.hidden_size, record.tokens
    family = family_of(config.family)
    macs = dict.fromkeys(mac_kinds(family), 0)
    macs["embedding"] = tokens * h * (EMBEDDING_ADDS_PER_ELEMENT + LAYERNORM_OPS_PER_ELEMENT)
    for l, steps in enumerate(config.timesteps):
        inner, m = config.heads[l] * config.head_dim, config.intermediate_sizes[l]
        token_steps = tokens * steps
        runs = 1 if family.sequential else steps        # operator evaluations per token
        macs["layernorm"] += 2 * tokens * runs * h * LAYERNORM_OPS_PER_ELEMENT
        macs["softmax"] += config.heads[l] * record.token_pairs * runs * SOFTMAX_OPS_PER_ENTRY
        macs["gelu"] += tokens * runs * m * GELU_OPS_PER_ELEMENT
        macs["bias"] += (token_steps if family.bias_every_step else tokens) * sum(out for _, out in _layer_linears(config, l))
        if family.incremental:
            macs["increment"] += token_steps * (inner + 2 * h + m) + config.heads[l] * record.token_pairs * steps
            macs["attention"] += record.token_pairs * inner * steps
        elif family.sequential:
            macs["attention"] += record.token_pairs * inner
    per_example = (h * READOUT_OPS_PER_ELEMENT + h * h + h + h * TANH_OPS_PER_ELEMENT
                   + h * config.num_labels + config.num_labels)   # readout, pooler, tanh, classifier
    macs["classifier"] = record.examples * per_example + (tokens * h if config.readout == "mean" else 0)
    return macs


def count_ops(config: SpikingBertConfig, record: SimRecord,
              energy: EnergyModel | str | Mapping[str, Any] = "float45nm") -> OpReport:
    """Operations, energy, latency and size of the model ``config`` on the spikes in ``record``."""
    _check(config, record)
    model = resolve_energy(energy)
    n, h = record.examples, config.hidden_size
    sops = [layer_sops(config, l, counts) for l, counts in enumerate(record.layers)]
    macs = float_macs(config, record)
    total_sops = sum(sum(layer.values()) for layer in sops)
    total_macs = sum(macs.values())

    ac_pj = sum(ops * (model.weight_ac_pj(bits) if bucket in WEIGHT_BUCKETS else model.ac_pj)
                for layer, bits in zip(sops, config.weight_bits) for bucket, ops in layer.items())
    mac_pj = total_macs * model.mac_pj
    energy_uj = (ac_pj + mac_pj) / PJ_PER_UJ

    family = family_of(config.family)
    rates, neurons, updates = [], h, h * config.timesteps[0]   # the embedding's IF encoder runs T_0 steps
    for l, (counts, steps) in enumerate(zip(record.layers, config.timesteps)):
        inner, m = config.heads[l] * config.head_dim, config.intermediate_sizes[l]
        sizes = {"input": h, "query": inner, "key": inner, "value": inner, "context": inner, "attn_out": h,
                 "intermediate": m, "output": h}
        rates.append({name: counts[name] / (sizes[name] * steps * record.tokens)
                      for name in ("input", *family.populations)})
        layer_neurons = sum(sizes[name] for name in family.populations)
        neurons += layer_neurons
        updates += layer_neurons * steps
    size = size_bits(config)
    return OpReport(
        examples=n, tokens_per_example=record.tokens / n,
        sops=total_sops / n, macs=total_macs / n, macs_by_kind={k: v / n for k, v in macs.items()},
        energy_uj=energy_uj / n, energy_by_kind={"ac": ac_pj / PJ_PER_UJ / n, "mac": mac_pj / PJ_PER_UJ / n},
        sum_t=sum(config.timesteps), max_t=max(config.timesteps), timesteps=list(config.timesteps),
        size_bits=size, size_bits_packed=size_bits(config, packed=True), size_mb=size / 8 / BYTES_PER_MB,
        parameters=count_parameters(config), neurons=neurons, neuron_updates=updates * record.tokens / n,
        sops_per_layer=[{k: v / n for k, v in layer.items()} for layer in sops], firing_rates=rates,
        totals={"sops": total_sops, "macs": total_macs, "energy_uj": energy_uj, "tokens": record.tokens},
        energy_model=model.to_dict())


def format_report(report: OpReport) -> str:
    """A terminal table of one report (per example)."""
    lines = [
        f"per example over {report.examples} examples ({report.tokens_per_example:.1f} tokens each), "
        f"energy model {report.energy_model['name']}",
        f"  SOPs {report.sops:,.0f}   MACs {report.macs:,.0f}   energy {report.energy_uj:.4g} µJ "
        f"(AC {report.energy_by_kind['ac']:.4g}, MAC {report.energy_by_kind['mac']:.4g})",
        f"  latency sum_t {report.sum_t}  max_t {report.max_t}  timesteps {report.timesteps}",
        f"  size {report.size_mb:.4g} MB ({report.size_bits:,.0f} bits, packed {report.size_bits_packed:,.0f}), "
        f"{report.parameters:,} parameters, {report.neurons:,} neurons/token",
        "  MACs by kind: " + ", ".join(f"{k} {v:,.0f}" for k, v in report.macs_by_kind.items()),
        "",
        "SOPs per layer",
        _table(["layer", "T", *SOP_BUCKETS, "total"],
               [[str(l), str(t), *(f"{layer[b]:,.0f}" for b in SOP_BUCKETS), f"{sum(layer.values()):,.0f}"]
                for l, (layer, t) in enumerate(zip(report.sops_per_layer, report.timesteps))]),
        "",
        "firing rates (spikes / neuron / timestep)",
        _table(["layer", *report.firing_rates[0]],
               [[str(l), *(f"{rate:.4f}" for rate in rates.values())] for l, rates in enumerate(report.firing_rates)]),
    ]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows])
