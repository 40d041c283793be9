"""Configuration objects: the model's architecture and a point in the compression space.

Both serialise to plain dicts (JSON/YAML) so runs, exports and search trials store them as text.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spikeprune.errors import SpikepruneError

#: Weight bit widths the quantizer supports; 1.58 is ternary {-1, 0, 1}, 32 means float.
SUPPORTED_BITS: tuple[float, ...] = (1, 1.58, 2, 4, 8, 32)
#: Bits of a float (unquantized) weight or parameter.
FLOAT_BITS = 32.0
#: How a layer with T_l steps reads an input spike train of a different length (see _spiking.py).
BOUNDARY_RULES: tuple[str, ...] = ("repeat", "rate")
#: Model families: "spikingbert" (binary IF, softmax and LayerNorm on each step's spikes, as the
#: SpikingBERT reference does; _spiking.py) and "converted" (signed IF, operators on accumulated
#: input, equivalent to an L-level quantized BERT; _converted.py).
FAMILIES: tuple[str, ...] = ("spikingbert", "converted")
#: What the classifier reads: the spiking rate of the last layer averaged over the real tokens
#: ("mean") or at [CLS] alone ("cls").
READOUTS: tuple[str, ...] = ("mean", "cls")
#: Thresholds of the converted family's residual-stream populations (the embedding encoder and
#: every layer's attn_out and output, all hidden-width): one θ per population, or one per unit
#: (the population's θ times a per-unit scale). BERT's LayerNorm outputs have a few outlier
#: dimensions, so one θ per population leaves most units only a level or two (docs/DESIGN.md §3).
RESIDUAL_THRESHOLDS: tuple[str, ...] = ("population", "unit")


def check_bits(bits: Any, where: str | None = None) -> float:
    """A supported weight bit width as a float; ``where`` (a field name) starts the error."""
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or float(bits) not in SUPPORTED_BITS:
        shown = f"{bits:g}" if isinstance(bits, (int, float)) and not isinstance(bits, bool) else repr(bits)
        what = f"weight bit width {shown}" if where is None else f"{where}: {shown} bits"
        raise SpikepruneError(f"{what} is not supported; use one of {', '.join(f'{b:g}' for b in SUPPORTED_BITS)}")
    return float(bits)


def _from_known(cls: type, data: dict[str, Any], what: str) -> Any:
    """``cls(**data)``, refusing keys that are not fields of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpikepruneError(f"unknown {what} keys {unknown}; known keys are {sorted(known)}")
    return cls(**data)


def _per_layer(name: str, value: Any, num_layers: int) -> list:
    """Broadcast a scalar to every layer, or check a per-layer list has one value per layer."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise SpikepruneError(
                f"{name} has {len(value)} values but the model has {num_layers} layers; "
                f"give one value per layer or a single value for all")
        return list(value)
    return [value] * num_layers


def _count(name: str, value: Any) -> int:
    """A whole number of heads, neurons, steps: ``1.5``, ``true`` or ``two`` are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise SpikepruneError(f"{name}={value!r} is not a whole number; give an integer such as 2")
    return int(value)


@dataclass
class SpikingBertConfig:
    """Architecture of a spiking BERT; per-layer lists let pruned models keep their own shapes."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    head_dim: int = 32
    # Per-layer values; a single number is broadcast to every layer.
    heads: int | list[int] = 12
    intermediate_sizes: int | list[int] = 1536
    timesteps: int | list[int] = 4
    weight_bits: float | list[float] = 32.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    threshold: float = 1.0
    leak: float = 1.0
    num_labels: int = 2
    boundary: str = "repeat"
    readout: str = "mean"
    task: str | None = None
    family: str = "spikingbert"
    #: Quantization levels on each side of zero of the converted family's neurons (counts in [-L, L]).
    levels: int = 8
    #: One of RESIDUAL_THRESHOLDS (converted family only).
    residual_thresholds: str = "population"

    def __post_init__(self) -> None:
        n = self.num_layers
        self.heads = [int(h) for h in _per_layer("heads", self.heads, n)]
        self.intermediate_sizes = [int(i) for i in _per_layer("intermediate_sizes", self.intermediate_sizes, n)]
        self.timesteps = [int(t) for t in _per_layer("timesteps", self.timesteps, n)]
        self.weight_bits = [check_bits(b) for b in _per_layer("weight_bits", self.weight_bits, n)]
        if any(h < 1 for h in self.heads):
            raise SpikepruneError(f"heads must be >= 1 in every layer, got {self.heads}")
        if any(i < 1 for i in self.intermediate_sizes):
            raise SpikepruneError(f"intermediate_sizes must be >= 1, got {self.intermediate_sizes}")
        if any(t < 1 for t in self.timesteps):
            raise SpikepruneError(f"timesteps must be >= 1 in every layer, got {self.timesteps}")
        if self.boundary not in BOUNDARY_RULES:
            raise SpikepruneError(f"boundary rule {self.boundary!r} is unknown; use one of {BOUNDARY_RULES}")
        if self.family not in FAMILIES:
            raise SpikepruneError(f"model family {self.family!r} is unknown; use one of {FAMILIES}")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise SpikepruneError(f"levels must be an integer >= 1, got {self.levels!r}")
        if self.residual_thresholds not in RESIDUAL_THRESHOLDS:
            raise SpikepruneError(f"residual_thresholds {self.residual_thresholds!r} is unknown; use one of "
                                  f"{RESIDUAL_THRESHOLDS}")
        if self.residual_thresholds == "unit" and self.family != "converted":
            raise SpikepruneError("residual_thresholds='unit' is a threshold of the converted family's neurons; "
                                  "use family='converted' or residual_thresholds='population'")
        if self.readout not in READOUTS:
            raise SpikepruneError(f"readout {self.readout!r} is unknown; use one of {READOUTS}")
        if self.threshold <= 0:
            raise SpikepruneError(f"threshold must be > 0, got {self.threshold}")
        if not 0 < self.leak <= 1:
            raise SpikepruneError(f"leak must be in (0, 1] (1 = IF, <1 = LIF), got {self.leak}")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpikingBertConfig":
        return _from_known(cls, data, "model config")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SpikingBertConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpikepruneError(f"{path} not found; point to a folder made by save_pretrained") from None
        except json.JSONDecodeError as e:
            raise SpikepruneError(f"{path} is not valid JSON (line {e.lineno}): re-export the model") from None
        if not isinstance(data, dict):
            raise SpikepruneError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


@dataclass
class CompressionConfig:
    """One point of the search space: what each layer keeps, how long it runs, how wide its weights.

    ``None`` means "as in the base model". Values are per layer once resolved against a model.
    """

    heads: int | list[int] | None = None
    neurons: int | list[int] | None = None
    timesteps: int | list[int] | None = None
    weight_bits: float | list[float] | None = None
    recovery_steps: int = 0

    def resolve(self, base: SpikingBertConfig) -> "CompressionConfig":
        """Return a copy with every field a per-layer list, checked against ``base``."""
        n = base.num_layers
        heads = _per_layer("heads", base.heads if self.heads is None else self.heads, n)
        neurons = _per_layer("neurons", base.intermediate_sizes if self.neurons is None else self.neurons, n)
        steps = _per_layer("timesteps", base.timesteps if self.timesteps is None else self.timesteps, n)
        bits = _per_layer("weight_bits", base.weight_bits if self.weight_bits is None else self.weight_bits, n)
        heads = [_count(f"heads[{l}]", h) for l, h in enumerate(heads)]
        neurons = [_count(f"neurons[{l}]", m) for l, m in enumerate(neurons)]
        steps = [_count(f"timesteps[{l}]", t) for l, t in enumerate(steps)]
        _count("recovery_steps", self.recovery_steps)
        for l, (h, hb) in enumerate(zip(heads, base.heads)):
            if not 1 <= int(h) <= hb:
                raise SpikepruneError(f"heads[{l}]={h} but the model's layer {l} has {hb} heads; keep 1..{hb}")
        for l, (m, mb) in enumerate(zip(neurons, base.intermediate_sizes)):
            if not 1 <= int(m) <= mb:
                raise SpikepruneError(f"neurons[{l}]={m} but the model's layer {l} has {mb} FFN neurons; keep 1..{mb}")
        for l, t in enumerate(steps):
            if int(t) < 1:
                raise SpikepruneError(f"timesteps[{l}]={t}; every layer needs at least 1 timestep")
        if int(self.recovery_steps) < 0:
            raise SpikepruneError(f"recovery_steps must be >= 0, got {self.recovery_steps}")
        return CompressionConfig(
            heads=[int(h) for h in heads], neurons=[int(m) for m in neurons],
            timesteps=[int(t) for t in steps], weight_bits=[check_bits(b) for b in bits],
            recovery_steps=int(self.recovery_steps))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompressionConfig":
        return _from_known(cls, data, "compression config")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "CompressionConfig":
        """Read a YAML compression config (safe_load: plain data only)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SpikepruneError(f"compression config {path} not found; check the path") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SpikepruneError(f"cannot read compression config {path} ({getattr(e, 'strerror', None) or e}); "
                                  f"give a YAML file") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise SpikepruneError(f"{path}{where} is not valid YAML; fix the syntax") from None
        if isinstance(data, dict) and isinstance(data.get("compression"), dict):
            data = data["compression"]  # an export's config.yaml: its compression part
        if not isinstance(data, dict):
            raise SpikepruneError(f"{path} must be a YAML mapping with keys heads, neurons, timesteps, weight_bits, recovery_steps")
        return cls.from_dict(data)


