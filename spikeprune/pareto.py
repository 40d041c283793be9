"""Pareto front, hypervolume and the reference point over a study's trials.

Beside the objectives, below everything that reads a study: the search's progress line and early
stop, the guided sampler and the results all rank trials by the same rules. Functions of
``FrozenTrial`` lists and objectives (plus ``reference_of`` and ``find_baseline``, which also read
the study's ``records.StudyRecord``), so they are tested on hand-made trials without storage.
Needs numpy and Optuna, never torch.

Which trials compete for the front: COMPLETE, feasible (every Optuna constraint <= 0), not
early-stopped (an early-stopped trial's values come from a partial evaluation, so they are not
comparable with fully evaluated ones) and not a duplicate (search re-tells a repeated config the
earlier trial's values).

Hypervolume is measured in a normalised space where every objective is minimised, 0 is the
ideal value and 1 the reference (worst counted) value, so a study's hypervolume is the fraction
of the box between the ideal point and the reference point that its front dominates (0..1).
The reference point comes from the user, else the dense baseline, else the trials (``study_reference``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from spikeprune.errors import SpikepruneError
from spikeprune.objectives import MAXIMIZE, METRIC, MINIMIZE, Objective, dominance
from spikeprune.records import StudyRecord, TrialRecord

#: Status of a trial in the analysis, in the order the report lists them.
STATUSES: tuple[str, ...] = ("front", "within_noise", "dominated", "infeasible", "early_stopped", "duplicate",
                             "incomplete")


def study_objectives(study: optuna.Study) -> list[Objective]:
    """The study's objectives from its record, checked against Optuna's directions."""
    objectives = StudyRecord.read(study).objective_list
    directions = [MINIMIZE if d == optuna.study.StudyDirection.MINIMIZE else MAXIMIZE for d in study.directions]
    if [o.direction for o in objectives] != directions:
        raise SpikepruneError(
            f"study {study.study_name!r} stores objectives {[(o.name, o.direction) for o in objectives]} "
            f"but Optuna directions {directions}; the study is inconsistent, re-create it")
    return objectives


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna's rule: feasible when every constraint value is <= 0 (no constraints = feasible)."""
    return all(v <= 0.0 for v in trial.constraints.values())


def is_early_stopped(trial: FrozenTrial) -> bool:
    return TrialRecord.of(trial).early_stopped


def is_duplicate(trial: FrozenTrial) -> bool:
    """Search tells a repeated config the earlier trial's values (its record's ``duplicate_of``)."""
    return not TrialRecord.of(trial).fresh


def is_candidate(trial: FrozenTrial) -> bool:
    """Whether the trial competes for the Pareto front (complete, feasible, fully evaluated, new)."""
    return (trial.state == TrialState.COMPLETE and is_feasible(trial) and not is_early_stopped(trial)
            and not is_duplicate(trial))


def minimised(trial: FrozenTrial, objectives: Sequence[Objective]) -> np.ndarray:
    """The trial's values with maximised objectives negated, so smaller is better everywhere."""
    if trial.values is None or len(trial.values) != len(objectives):
        raise SpikepruneError(
            f"trial {trial.number} has values {trial.values} but the study has {len(objectives)} objectives")
    return np.array([o.sign * v for o, v in zip(objectives, trial.values)], dtype=float)


@dataclass(frozen=True)
class NoiseRule:
    """When a domination is too small to trust.

    ``a`` dominates ``b`` only within the noise when their metric bootstrap intervals (user attr
    "metric_ci" = [lo, hi]) overlap and every other objective of ``b`` is within ``rel_tol`` of
    ``a``'s value (relative to ``a``). A dominated trial is "within noise" when every trial that
    dominates it does so only within the noise. Trials without an interval are never within noise.
    """

    rel_tol: float = 0.05
    metric: str = METRIC

    def near(self, a: FrozenTrial, b: FrozenTrial, objectives: Sequence[Objective]) -> bool:
        ci_a, ci_b = TrialRecord.of(a).metric_ci, TrialRecord.of(b).metric_ci
        if ci_a is None or ci_b is None or self.metric not in [o.name for o in objectives]:
            return False
        if ci_a[0] > ci_b[1] or ci_b[0] > ci_a[1]:
            return False
        for o, va, vb in zip(objectives, a.values, b.values):
            if o.name != self.metric and abs(vb - va) > self.rel_tol * abs(va):
                return False
        return True


@dataclass
class ParetoSplit:
    """Trials sorted into disjoint groups; each list is in trial-number order."""

    front: list[FrozenTrial] = field(default_factory=list)
    within_noise: list[FrozenTrial] = field(default_factory=list)
    dominated: list[FrozenTrial] = field(default_factory=list)
    infeasible: list[FrozenTrial] = field(default_factory=list)
    early_stopped: list[FrozenTrial] = field(default_factory=list)
    duplicate: list[FrozenTrial] = field(default_factory=list)
    incomplete: list[FrozenTrial] = field(default_factory=list)

    def status(self) -> dict[int, str]:
        """Trial number -> one of STATUSES."""
        return {t.number: name for name in STATUSES for t in getattr(self, name)}


def split_trials(trials: Sequence[FrozenTrial], objectives: Sequence[Objective],
                 noise: NoiseRule | None = NoiseRule()) -> ParetoSplit:
    """Sort trials into front / within-noise / dominated / infeasible / early-stopped / duplicate /
    incomplete (failed, running, ...). A duplicate repeats an earlier trial's config and values."""
    split = ParetoSplit()
    candidates = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE:
            split.incomplete.append(t)
        elif is_duplicate(t):
            split.duplicate.append(t)
        elif is_early_stopped(t):
            split.early_stopped.append(t)
        elif not is_feasible(t):
            split.infeasible.append(t)
        else:
            candidates.append(t)
    if not candidates:
        return split
    beats = dominance(np.stack([minimised(t, objectives) for t in candidates]))
    for i, t in enumerate(candidates):
        dominators = np.flatnonzero(beats[:, i])
        if dominators.size == 0:
            split.front.append(t)
        elif noise is not None and all(noise.near(candidates[j], t, objectives) for j in dominators):
            split.within_noise.append(t)
        else:
            split.dominated.append(t)
    return split


# ----------------------------------------------------------------------------- hypervolume

def _nondominated(points: np.ndarray) -> np.ndarray:
    """Rows of ``points`` (minimised) that no other row dominates; equal rows kept once."""
    if len(points) < 2:
        return points
    beaten = np.any(dominance(points), axis=0)
    equal = np.all(points[:, None, :] == points[None, :, :], axis=2)
    repeated = np.any(np.triu(equal, k=1), axis=0)                  # an earlier row equals j
    return points[~(beaten | repeated)]


def _hv2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume by a sweep over x: each point adds the strip below the lowest y so far."""
    pts = points[np.lexsort((points[:, 1], points[:, 0]))]
    lowest = np.minimum.accumulate(np.concatenate([[ref[1]], pts[:, 1]]))
    return float(np.sum((ref[0] - pts[:, 0]) * (lowest[:-1] - lowest[1:])))


def _hv3d(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact 3-D hypervolume by slicing along z: each slab is a 2-D sweep of the points below it."""
    pts = points[np.argsort(points[:, 2])]
    tops = np.append(pts[1:, 2], ref[2])
    return float(sum(_hv2d(pts[:i + 1, :2], ref[:2]) * (tops[i] - pts[i, 2])
                     for i in range(len(pts)) if tops[i] > pts[i, 2]))


def _wfg(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of nondominated points by WFG (While et al., IEEE TEC 2012).

    Sum over points of their exclusive contribution: the box to the reference point minus the
    hypervolume of the later points "limited" (clipped) to that box. Up to 3 objectives it uses
    direct sweeps instead.
    """
    if len(points) == 0:
        return 0.0
    if len(points) == 1:
        return float(np.prod(ref - points[0]))
    m = points.shape[1]
    if m == 1:
        return float(ref[0] - points[:, 0].min())
    if m == 2:
        return _hv2d(points, ref)
    if m == 3:
        return _hv3d(points, ref)
    # Sorting by the last objective, worst first, keeps the limited sets small.
    points = points[np.argsort(points[:, -1])[::-1]]
    total = 0.0
    for i, p in enumerate(points):
        total += float(np.prod(ref - p)) - _wfg(_nondominated(np.maximum(points[i + 1:], p)), ref)
    return total


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact volume dominated by minimised ``points`` and bounded above by ``reference``.

    Points not strictly better than the reference in every objective add nothing and are dropped.
    """
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref))
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    return _wfg(_nondominated(pts), ref)


@dataclass(frozen=True)
class Reference:
    """Where hypervolume is measured: per objective, the worst value counted and the ideal value.

    ``normalise`` maps the ideal to 0 and the worst value to 1 with every objective minimised.
    """

    objectives: tuple[Objective, ...]
    worst: tuple[float, ...]
    ideal: tuple[float, ...]

    def __post_init__(self) -> None:
        for o, w, i in zip(self.objectives, self.worst, self.ideal):
            if not o.sign * (w - i) > 0:
                raise SpikepruneError(
                    f"reference for {o.name!r} ({w}) is not worse than its ideal value ({i}); "
                    f"give a reference value on the worse side")

    def normalise(self, values: Sequence[float]) -> np.ndarray:
        v, w, i = (np.asarray(x, dtype=float) for x in (values, self.worst, self.ideal))
        return (v - i) / (w - i)


def _widened(o: Objective, value: float, margin: float, metric_margin: float) -> float:
    """A worst value a little worse than ``value``: a cost x (1 + margin); a metric x (1 -
    metric_margin) when positive, else ``metric_margin`` of its distance to the ideal further down
    (a Matthews correlation of 0 or a Pearson of -0.24 are legitimate baselines)."""
    if o.direction == MINIMIZE:
        return value * (1.0 + margin)
    return value * (1.0 - metric_margin) if value > 0 else value - metric_margin * (o.ideal - value)


def study_reference(objectives: Sequence[Objective], baseline: Mapping[str, float] | None,
                    trials: Sequence[FrozenTrial] = (), *, given: Mapping[str, float] | None = None,
                    margin: float = 0.1, metric_margin: float = 0.1) -> Reference | None:
    """The reference point, per objective: the value the user gave (``--reference``, a space's
    ``reference``), else derived from the dense baseline, else from the worst fully evaluated
    complete trial; None while none of these exists.

    From a value v: costs count up to v x (1 + margin) (ideal 0); the metric (ideal 1) down to
    v x (1 - metric_margin), so only models that keep 90% of a positive dense metric count and
    collapsed models (chance accuracy at near-zero cost) do not dominate the volume; for v <= 0,
    down to v - metric_margin x (1 - v).
    """
    given = dict(given or {})
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
            and len(t.values) == len(objectives) and not is_early_stopped(t)]
    worst_values = []
    for k, o in enumerate(objectives):
        if o.name in given:
            w = float(given[o.name])
        else:
            seen = [o.sign * t.values[k] for t in done]
            b = (baseline or {}).get(o.name)
            value = b if b is not None and (o.direction == MAXIMIZE or b > 0) else \
                (o.sign * max(seen) if seen else None)
            if value is None:
                return None
            w = _widened(o, float(value), margin, metric_margin)
        if not o.sign * (w - o.ideal) > 0:
            return None
        worst_values.append(w)
    return Reference(tuple(objectives), tuple(worst_values), tuple(o.ideal for o in objectives))


def front_hypervolume(trials: Sequence[FrozenTrial], reference: Reference) -> float:
    """Normalised hypervolume of the candidate trials among ``trials`` (see ``is_candidate``)."""
    points = [reference.normalise(t.values) for t in trials if is_candidate(t)]
    return hypervolume(points, np.ones(len(reference.objectives)))


def hypervolume_history(trials: Sequence[FrozenTrial], reference: Reference) -> list[tuple[int, float]]:
    """(trial number, hypervolume of all candidates up to and including it), one entry per trial.

    Adding a point p to a front F adds box(p) - HV({max(q, p) : q in F}) (its exclusive part),
    so the history costs one small hypervolume per front change instead of a full recompute.
    """
    ones = np.ones(len(reference.objectives))
    history: list[tuple[int, float]] = []
    front = np.empty((0, len(ones)))
    hv = 0.0
    for t in sorted(trials, key=lambda t: t.number):
        if is_candidate(t):
            p = reference.normalise(t.values)
            if np.all(p < 1.0) and not np.any(np.all(front <= p, axis=1)):
                hv += float(np.prod(ones - p)) - hypervolume(np.maximum(front, p), ones)
                front = np.vstack([front[~np.all(p <= front, axis=1)], p])
        history.append((t.number, hv))
    return history


# ----------------------------------------------------------------------------- studies

def baseline_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The dense baseline trial: the one marked "baseline", else the first completed seeded trial
    (search enqueues the baseline before the other seeds)."""
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and not is_early_stopped(t)),
                  key=lambda t: t.number)
    for key in ("baseline", "seeded"):
        for t in done:
            if getattr(TrialRecord.of(t), key):
                return t
    return None


def reference_of(study: optuna.Study, trials: Sequence[FrozenTrial], *, margin: float = 0.1,
                 metric_margin: float = 0.1) -> Reference | None:
    """The study's reference point (``study_reference`` with its record's given values)."""
    record = StudyRecord.find(study)
    return study_reference(study_objectives(study), find_baseline(study, trials), trials,
                           given=record.reference_given if record else None, margin=margin,
                           metric_margin=metric_margin)


def find_baseline(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> dict[str, float] | None:
    """The dense baseline's objective values: the study's "reference" attribute, else those of
    ``baseline_trial``; None when the study has neither."""
    record = StudyRecord.find(study)
    if record is not None and record.reference:
        return {k: float(v) for k, v in record.reference.items()}
    t = baseline_trial(study.get_trials(deepcopy=False) if trials is None else trials)
    if t is None:
        return None
    return {o.name: float(v) for o, v in zip(study_objectives(study), t.values)}
