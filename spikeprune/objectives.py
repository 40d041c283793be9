"""What a search optimises: the objective names, their directions, and Pareto dominance.

Defined once here and used by the space files (which objectives a study has), the trial kernel's
early stop (is a partial result clearly beaten?), the Pareto front and hypervolume, and the
benchmarks. Costs come from a trial's operation report (per example) and are minimised; "metric"
is the task's main GLUE metric and is maximised.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MINIMIZE = "minimize"
MAXIMIZE = "maximize"
#: The objective that is the task's main GLUE metric (its per-trial bootstrap interval is the noise level).
METRIC = "metric"
#: Objective name -> direction.
OBJECTIVES: dict[str, str] = {
    METRIC: MAXIMIZE, "sops": MINIMIZE, "energy_uj": MINIMIZE,
    "sum_t": MINIMIZE, "max_t": MINIMIZE, "size_mb": MINIMIZE,
}


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str

    @property
    def sign(self) -> float:
        """Multiply a value by this to turn the objective into one that is minimised."""
        return 1.0 if self.direction == MINIMIZE else -1.0


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
