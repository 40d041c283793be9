"""The official GLUE metrics, computed directly so scores match the leaderboard definitions.

Undefined cases return 0.0 rather than NaN (as sklearn does for MCC): a search must be able to
rank every trial, and a model whose predictions are all one class has no skill to report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

from spikeprune.errors import SpikepruneError
from spikeprune.data._glue import get_task

ArrayLike = Sequence[float] | np.ndarray


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the label."""
    p, y = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(p == y))


def f1(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 with class 1 as the positive class (MRPC, QQP): 2tp / (2tp + fp + fn)."""
    p, y = np.asarray(predictions) == 1, np.asarray(labels) == 1
    tp = int(np.sum(p & y))
    wrong = int(np.sum(p != y))  # fp + fn
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + wrong)


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation (CoLA), multi-class form as in sklearn; 0.0 when undefined."""
    _, codes = np.unique(np.concatenate([np.asarray(labels), np.asarray(predictions)]),
                         return_inverse=True)
    n = len(codes) // 2
    y, p = codes[:n], codes[n:]
    k = int(codes.max()) + 1
    t_sum = np.bincount(y, minlength=k).astype(np.float64)  # true count per class
    p_sum = np.bincount(p, minlength=k).astype(np.float64)  # predicted count per class
    correct = float(np.sum(y == p))
    cov_yp = correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_yy = n * n - t_sum @ t_sum
    if cov_pp == 0 or cov_yy == 0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_yy * cov_pp))


def pearson(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation (STS-B); 0.0 when either side is constant."""
    p = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    dp, dy = p - p.mean(), y - y.mean()
    denom = np.sqrt((dp @ dp) * (dy @ dy))
    return 0.0 if denom == 0 else float((dp @ dy) / denom)


def spearman(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Spearman correlation (STS-B): Pearson of the ranks, ties given their average rank."""
    return pearson(rankdata(predictions), rankdata(labels))


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def compute_metrics(task: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """All official metrics of ``task``: class ids in, or float scores for STS-B."""
    spec = get_task(task)
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1 or len(p) == 0:
        raise SpikepruneError(
            f"{spec.name} metrics need two equal-length non-empty 1-D sequences, got shapes "
            f"{p.shape} and {y.shape}"
        )
    if not spec.is_regression and not np.array_equal(p, np.round(p)):
        raise SpikepruneError(
            f"{spec.name} predictions must be class ids, got non-integers; take argmax of logits"
        )
    return {name: METRICS[name](p, y) for name in spec.metrics}


def main_metric(task: str) -> str:
    """The key of ``compute_metrics`` that a search maximises for ``task``."""
    return get_task(task).main_metric


def bootstrap_ci(task: str, predictions: ArrayLike, labels: ArrayLike, *, n: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``task``'s main metric, resampling dev examples.

    Dev sets of a few hundred examples make metric gaps of a point or two noise; the trial function
    stores this interval (trial user attr "metric_ci") so the results can tell a real domination
    from one within the noise. A fixed ``seed`` makes a trial's interval reproducible.
    """
    if n < 1 or not 0 < level < 1:
        raise SpikepruneError(f"bootstrap needs n >= 1 and 0 < level < 1, got n={n}, level={level}")
    compute_metrics(task, predictions, labels)  # validates shapes and class ids once
    p, y = np.asarray(predictions), np.asarray(labels)
    metric = METRICS[main_metric(task)]
    rng = np.random.default_rng(seed)
    scores = [metric(p[i], y[i]) for i in rng.integers(0, len(p), size=(n, len(p)))]
    lo, hi = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
