"""The parts of a space file: one compression knob (fixed, a range or choices; shared or per
layer) and the early-stopping settings, each parsed and validated with errors naming the field."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from spikeprune.models._config import SUPPORTED_BITS, check_bits
from spikeprune.errors import SpikepruneError


def check_keys(where: str, data: dict, known: tuple[str, ...]) -> None:
    unknown = [k for k in data if k not in known]
    if unknown:
        raise SpikepruneError(f"{where}: unknown key {unknown[0]!r}; known keys are {', '.join(known)}")


def parse_number(where: str, value: Any, integer: bool = False) -> float | int:
    """A YAML number (also "1e8", which YAML 1.1 reads as a string); bools are not numbers."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SpikepruneError(f"{where}: {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpikepruneError(f"{where}: {value!r} is not a number")
    if integer:
        if value != int(value):
            raise SpikepruneError(f"{where}: {value} must be a whole number")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class Knob:
    """One compression knob: fixed (``fixed``), or searched over ``values()`` shared or per layer."""

    name: str
    fixed: int | float | tuple | None = None
    per_layer: bool = False
    low: int | None = None
    high: int | None = None
    step: int = 1
    choices: tuple | None = None

    @property
    def searched(self) -> bool:
        return self.choices is not None or self.low is not None

    def values(self) -> list:
        """Every value the knob may take, ascending (larger = less compressed)."""
        if self.choices is not None:
            return sorted(self.choices)
        if self.low is not None:
            return list(range(self.low, self.high + 1, self.step))
        fixed = self.fixed if isinstance(self.fixed, tuple) else (self.fixed,)
        return sorted(set(v for v in fixed if v is not None))

    def param_names(self, num_layers: int) -> list[str]:
        return [f"{self.name}_l{i}" for i in range(num_layers)] if self.per_layer else [self.name]

    def to_dict(self) -> Any:
        if not self.searched:
            return list(self.fixed) if isinstance(self.fixed, tuple) else self.fixed
        out: dict[str, Any] = {"per_layer": self.per_layer} if self.name != "recovery_steps" else {}
        if self.choices is not None:
            return {**out, "choices": list(self.choices)}
        return {**out, "min": self.low, "max": self.high, "step": self.step}

    @classmethod
    def parse(cls, name: str, raw: Any) -> "Knob":
        where = f"space.{name}"
        integer = name != "weight_bits"
        layered = name != "recovery_steps"

        def value(w: str, v: Any) -> int | float:
            v = parse_number(w, v, integer)
            if name == "weight_bits":
                check_bits(v, w)
            if name == "recovery_steps" and v < 0:
                raise SpikepruneError(f"{w}: {v} must be >= 0")
            if name != "recovery_steps" and v < 1:
                raise SpikepruneError(f"{w}: {v} must be >= 1")
            return v

        if raw is None:
            return cls(name)
        if isinstance(raw, list):
            if not layered:
                raise SpikepruneError(f"{where}: give one number or {{choices: [...]}}, not a list")
            if not raw:
                raise SpikepruneError(f"{where}: the per-layer list is empty")
            return cls(name, fixed=tuple(value(f"{where}[{i}]", v) for i, v in enumerate(raw)))
        if not isinstance(raw, dict):
            return cls(name, fixed=value(where, raw))
        known = ("per_layer", "min", "max", "step", "choices") if layered else ("choices",)
        check_keys(where, raw, known)
        per_layer = raw.get("per_layer", False)
        if not isinstance(per_layer, bool):
            raise SpikepruneError(f"{where}.per_layer: {per_layer!r} must be true or false")
        if "choices" in raw:
            extra = [k for k in ("min", "max", "step") if k in raw]
            if extra:
                raise SpikepruneError(f"{where}: give either choices or min/max/step, not both ({extra[0]} given with choices)")
            choices = raw["choices"]
            if not isinstance(choices, list) or not choices:
                raise SpikepruneError(f"{where}.choices: must be a non-empty list of numbers")
            parsed = [value(f"{where}.choices[{i}]", v) for i, v in enumerate(choices)]
            if len(set(parsed)) != len(parsed):
                raise SpikepruneError(f"{where}.choices: {choices} has duplicates")
            return cls(name, per_layer=per_layer, choices=tuple(parsed))
        if name == "weight_bits":
            raise SpikepruneError(f"{where}: bit widths are not a range; use choices: [...] from {', '.join(f'{b:g}' for b in SUPPORTED_BITS)}")
        for key in ("min", "max"):
            if key not in raw:
                raise SpikepruneError(f"{where}.{key}: missing; a range needs min and max (step optional)")
        low, high = value(f"{where}.min", raw["min"]), value(f"{where}.max", raw["max"])
        step = parse_number(f"{where}.step", raw.get("step", 1), integer=True)
        if step < 1:
            raise SpikepruneError(f"{where}.step: {step} must be >= 1")
        if high < low:
            raise SpikepruneError(f"{where}.max: {high} is below min {low}")
        if (high - low) % step:
            raise SpikepruneError(f"{where}.max: {high} is not min {low} plus a multiple of step {step}; "
                                  f"use max: {low + (high - low) // step * step}")
        return cls(name, per_layer=per_layer, low=low, high=high, step=step)


#: The samplers a search can use, by name (``--sampler``, or a space file's ``sampler``).
SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "nsga3", "gp", "random", "guided")
#: The sampler of a search whose command line and space name none.
DEFAULT_SAMPLER = "tpe"


def parse_sampler(raw: Any) -> str | None:
    """A space's ``sampler``: the one its searches use unless ``--sampler`` names another."""
    if raw is None or raw in SAMPLERS:
        return raw
    raise SpikepruneError(f"space.sampler: {raw!r} is unknown; use one of {', '.join(SAMPLERS)}")


def parse_importance(raw: Any) -> str:
    """A space's ``importance``: the score that ranks heads and FFN neurons for pruning, ``grad``
    (the default) or ``activity`` (mean firing rates); ``prepare`` computes both once per base."""
    if raw is None:
        return "grad"
    from spikeprune.models._compress import METHODS  # loads torch: only for a space that names one

    if raw in METHODS:
        return raw
    raise SpikepruneError(f"space.importance: {raw!r} is unknown; use one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class EarlyStopping:
    """First look at ``fraction`` of the dev set: stop if another trial's look beats it there by
    more than ``margin`` metric, if it cannot reach the metric floor, or if a fully evaluated
    trial costs no more and scores above its metric's upper bound. Looks at the ``later``
    fractions check the floor and the fully evaluated trials (they have no other trials' looks on
    the same examples)."""

    fraction: float = 0.25
    margin: float = 0.02
    later: tuple[float, ...] = ()

    @classmethod
    def parse(cls, raw: Any) -> "EarlyStopping | None":
        where = "space.early_stopping"
        if raw is None or raw is False:
            return None
        if raw is True:
            return cls()
        if not isinstance(raw, dict):
            raise SpikepruneError(f"{where}: give {{fraction: 0.25, margin: 0.02, later: [0.5]}}, true or false")
        check_keys(where, raw, ("fraction", "margin", "later"))
        fraction = parse_number(f"{where}.fraction", raw.get("fraction", cls.fraction))
        margin = parse_number(f"{where}.margin", raw.get("margin", cls.margin))
        later = raw.get("later", [])
        if not isinstance(later, list):
            raise SpikepruneError(f"{where}.later: give a list of fractions, e.g. [0.5]")
        later = tuple(parse_number(f"{where}.later[{i}]", v) for i, v in enumerate(later))
        if not 0 < fraction < 1:
            raise SpikepruneError(f"{where}.fraction: {fraction} must be between 0 and 1 (exclusive)")
        if margin < 0:
            raise SpikepruneError(f"{where}.margin: {margin} must be >= 0")
        if any(not fraction < f < 1 for f in later) or list(later) != sorted(set(later)):
            raise SpikepruneError(f"{where}.later: {list(later)} must rise strictly, each between fraction "
                                  f"({fraction}) and 1 (exclusive)")
        return cls(fraction, margin, later)
