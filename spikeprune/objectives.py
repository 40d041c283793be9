"""What a search optimises: the objective names, their directions, and Pareto dominance.

Defined once here and used by the space files (which objectives a study has), the trial function's
early stop (is a partial result clearly beaten?), the Pareto front and hypervolume, and the
benchmarks. Costs come from a trial's operation report (per example) and are minimised; "metric"
is the task's main GLUE metric and is maximised.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spikeprune.errors import SpikepruneError

MINIMIZE = "minimize"
MAXIMIZE = "maximize"
#: The objective that is the task's main GLUE metric (its per-trial bootstrap interval is the noise level).
METRIC = "metric"
#: Objective name -> direction.
OBJECTIVES: dict[str, str] = {
    METRIC: MAXIMIZE, "sops": MINIMIZE, "energy_uj": MINIMIZE,
    "sum_t": MINIMIZE, "max_t": MINIMIZE, "size_mb": MINIMIZE,
}


#: How people call each GLUE metric ("metric" is shown as the task's own).
METRIC_NAMES: dict[str, str] = {"accuracy": "accuracy", "f1": "F1", "mcc": "Matthews correlation",
                                "pearson": "Pearson", "spearman": "Spearman"}


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str
    #: What reports and status lines call it: the task's metric (accuracy, F1, ...) for "metric".
    label: str = field(default="", compare=False)

    @property
    def shown(self) -> str:
        return self.label or self.name

    @property
    def sign(self) -> float:
        """Multiply a value by this to turn the objective into one that is minimised."""
        return 1.0 if self.direction == MINIMIZE else -1.0

    @property
    def ideal(self) -> float:
        """The best value it can take: 0 for a cost, 1 for a GLUE metric (every one is at most 1)."""
        return 0.0 if self.direction == MINIMIZE else 1.0


def parse_reference(raw: Any, objectives: Sequence[Objective], where: str) -> dict[str, float]:
    """User-given reference values (the worst value hypervolume counts) by objective name: a mapping
    (a space's ``reference``) or ``NAME=VALUE`` strings (``--reference``), each a finite number on
    the worse side of the objective's ideal value."""
    if raw is None:
        return {}
    if isinstance(raw, (list, tuple)):
        pairs = {}
        for item in raw:
            name, sep, value = str(item).partition("=")
            if not sep:
                raise SpikepruneError(f"{where} {item!r} is not NAME=VALUE, e.g. metric=-0.5")
            pairs[name.strip()] = value.strip()
        raw = pairs
    if not isinstance(raw, dict):
        raise SpikepruneError(f"{where} must map objective names to values, e.g. {{metric: -0.5}}")
    known = {o.name: o for o in objectives}
    out: dict[str, float] = {}
    for name, value in raw.items():
        if name not in known:
            raise SpikepruneError(f"{where}: {name!r} is not an objective of this search; use one of {', '.join(known)}")
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        o = known[name]
        if not math.isfinite(number) or not o.sign * (number - o.ideal) > 0:
            side = "above 0" if o.direction == MINIMIZE else "below 1"
            raise SpikepruneError(f"{where}: {name}={value!r} must be a number {side} (the worst value counted)")
        out[name] = number
    return out


def signs(directions: Sequence[str]) -> np.ndarray:
    return np.array([1.0 if d == MINIMIZE else -1.0 for d in directions])


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str], *,
              metric: int | None = None, margin: float = 0.0) -> bool:
    """Whether ``a`` Pareto-dominates ``b``: no worse in every objective and strictly better in one.

    With ``metric`` (an index) the strict gain must be in that objective and larger than
    ``margin``: "clearly better", the rule of the early stop, where partial results are noisy.
    """
    s = signs(directions)
    x, y = s * np.asarray(a, dtype=float), s * np.asarray(b, dtype=float)
    if not np.all(x <= y):
        return False
    return bool(np.any(x < y)) if metric is None else bool(x[metric] < y[metric] - margin)


def dominance(points: np.ndarray) -> np.ndarray:
    """``d[i, j]``: row i dominates row j, for minimised ``points`` (the vector form of ``dominates``)."""
    le = np.all(points[:, None, :] <= points[None, :, :], axis=2)
    lt = np.any(points[:, None, :] < points[None, :, :], axis=2)
    return le & lt
