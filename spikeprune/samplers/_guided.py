"""``GuidedSampler``: an Optuna sampler that proposes configs on the *predicted* Pareto front.

Every objective but the metric is predicted from the base's spike statistics (_cost_model.py); the
metric drop is predicted from a score over the sensitivity profile (_sensitivity.py): S(c) = Σ over
layers and knobs of the profile's flips at c's value (timesteps through the profile's timestep
term). S ranks configs well but overcounts (the same borderline examples flip under every small
cut), and the metric does not fall with it in a line: it holds, then drops off a cliff to about
chance. So drop(c) = b + d·σ((S(c) - s0)/w), a ``DropCurve`` refitted after every finished trial
(``fit_curve``; the profile's own uniform-T points are its prior), and the residuals of evaluated
trials correct nearby candidates (a kernel average over the index distance: the interactions the
score misses).

Each ask builds candidates: a greedy path from the dense config that always takes the step with
the best predicted cost saved per drop added (a knapsack over layers, for a random weighting of
the cost objectives), random neighbours of the points on that path and of the evaluated front,
and uniform random configs. It proposes the candidate whose predicted point adds the most
hypervolume to the evaluated front plus the predicted points of running trials (so parallel
workers get different configs).

A fraction ``explore`` of the trials is not taken from the model, so that its blind spots get
measured: a share ``local`` of them mutates an evaluated Pareto point (one to three parameters one
step, the point drawn in proportion to the hypervolume only it holds), the rest are uniform random
configs. At a few hundred dev examples uniform configs of the joint space nearly all collapse
below the reference point, while the neighbours of the point that holds most of the volume are
where the model is most wrong and the gains are biggest.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from spikeprune.models._config import CompressionConfig
from spikeprune.spaces._schema import SearchSpace
from spikeprune.trial._base import BaseBundle
from spikeprune.objectives import METRIC, Objective
from spikeprune.pareto import hypervolume, is_candidate, study_reference

from spikeprune.samplers._cost_model import CostPredictor
from spikeprune.samplers._sensitivity import SensitivityProfile, compute_profile

#: Weight (in trials) of the profile's own points (the dense model, the uniform-T runs) in the fit.
PRIOR_TRIALS = 2.0
#: Steepness grid of the curve fit, as fractions of the largest score seen.
WIDTHS = (0.02, 0.05, 0.1, 0.2, 0.5)
#: Bandwidth of the residual correction, in mean normalised index distance.
BANDWIDTH = 0.15


@dataclass(frozen=True)
class DropCurve:
    """Metric drop against the profile score S: b + d·σ((S - s0)/w)."""

    b: float
    d: float
    s0: float
    w: float

    def __call__(self, s: float | np.ndarray) -> float | np.ndarray:
        return self.b + self.d / (1.0 + np.exp(-(np.asarray(s, dtype=float) - self.s0) / self.w))


def fit_curve(scores: np.ndarray, drops: np.ndarray, weights: np.ndarray) -> DropCurve:
    """The weighted least-squares ``DropCurve`` through (S, drop) points: (s0, w) on a grid over
    the scores seen, (b, d) in closed form for each (d >= 0: a bigger cut never predicts a gain)."""
    top = max(float(np.max(scores)) if len(scores) else 0.0, 1e-3) * 1.5
    s0 = np.linspace(0.0, top, 61)[:, None, None]
    w = (np.asarray(WIDTHS) * top)[None, :, None]
    x = 1.0 / (1.0 + np.exp(-(scores[None, None, :] - s0) / w))            # (s0, w, points)
    total, sx, sxx = np.sum(weights), np.sum(weights * x, -1), np.sum(weights * x * x, -1)
    sy, sxy = np.sum(weights * drops), np.sum(weights * x * drops, -1)
    det = total * sxx - sx * sx
    d = np.where(det > 1e-12, (total * sxy - sx * sy) / np.where(det > 1e-12, det, 1.0), 0.0).clip(min=0.0)
    b = (sy - d * sx) / total
    err = np.sum(weights * (drops - b[..., None] - d[..., None] * x) ** 2, -1)
    i, j = np.unravel_index(int(np.argmin(err)), err.shape)
    return DropCurve(float(b[i, j]), float(d[i, j]), float(s0[i, 0, 0]), float(w[0, j, 0]))


class GuidedSampler(BaseSampler):
    """Cost-aware, sensitivity-guided multi-objective sampler (see the module doc).

    Usable from plain Optuna: ``optuna.create_study(directions=space.directions, sampler=s)`` with
    an objective that calls ``space.suggest(trial)`` and returns ``space.objective_values(...)``.
    """

    def __init__(self, space: SearchSpace, predictor: CostPredictor, profile: SensitivityProfile, *,
                 energy: Any = "float45nm", explore: float = 0.3, local: float = 2 / 3,
                 candidates: int = 600, seed: int | None = None) -> None:
        self.space = space.check(predictor.base)
        self.predictor, self.profile, self.energy = predictor, profile, energy
        self.explore, self.local, self.n_candidates = explore, local, candidates
        self.objectives: list[Objective] = list(space.objectives)
        names = [o.name for o in self.objectives]
        self._metric_index = names.index(METRIC) if METRIC in names else None
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self._params: list[tuple[str, str, int | None, list]] = []   # (param, knob, layer, values)
        for knob_name, knob in self.space.knobs.items():
            if not knob.searched:
                continue
            names = knob.param_names(self.space.num_layers or 1)
            for i, name in enumerate(names):
                self._params.append((name, knob_name, i if knob.per_layer else None, knob.values()))
        self._sizes = [len(values) for *_, values in self._params]   # values per parameter
        self._cache: dict[tuple[int, ...], dict[str, float]] = {}
        self._dense = self._dense_index()
        self._reference = study_reference(self.objectives, self._predict_costs(self._dense)
                                          | {METRIC: profile.base_metric})

    @classmethod
    def for_base(cls, base: BaseBundle, space: SearchSpace, *, energy: Any = "float45nm", seed: int | None = None,
                 examples: int = 64, levels: int = 2, **options: Any) -> "GuidedSampler":
        """The sampler of a prepared base: its spike statistics and sensitivity profile are loaded
        from the base's cache, or measured once (``examples`` dev examples per probe) and cached."""
        stats, profile = compute_profile(base, space.check(base.student.config), examples=examples, levels=levels)
        predictor = CostPredictor(base.student, base.importance, stats, base.importance_method)
        return cls(space, predictor, profile, energy=energy, seed=seed, **options)

    # ------------------------------------------------------------------ Optuna interface
    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {name: (CategoricalDistribution(values) if self.space.knobs[knob].choices is not None
                       else IntDistribution(min(values), max(values), step=self.space.knobs[knob].step))
                for name, knob, _, values in self._params}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        if self._rng.random() < self.explore:
            index = self._mutate_front(study) if self._rng.random() < self.local else None
            if index is None:
                return {}   # every parameter from the random sampler
        else:
            index = self._propose(study, trial)
        return {name: values[i] for (name, _, _, values), i in zip(self._params, index)}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    # --------------------------------------------------------------------- the model
    def config(self, index: Sequence[int]) -> CompressionConfig:
        return self.space.suggest(FixedTrial({name: values[i] for (name, _, _, values), i in zip(self._params, index)}))

    def _has_params(self, trial: FrozenTrial) -> bool:
        """Whether ``trial`` has drawn every parameter this sampler proposes."""
        return all(name in trial.params for name, *_ in self._params)

    def _index_of(self, params: dict[str, Any]) -> tuple[int, ...]:
        """Value indices of a trial's params (a value outside the space counts as the cheapest)."""
        return tuple(values.index(params[name]) if params[name] in values else 0 for name, _, _, values in self._params)

    def _dense_index(self) -> tuple[int, ...]:
        dense = self.profile.base_values
        return tuple(min(range(len(values)), key=lambda i: (abs(values[i] - dense[knob][layer or 0]), -values[i]))
                     for _, knob, layer, values in self._params)

    def flips(self, index: Sequence[int]) -> float:
        """S(c): the profile's flips summed over every searched parameter but timesteps, plus the
        profile's timestep term of the config's per-layer timesteps."""
        probed = sum(self.profile.score(knob, layer, values[i])[1]
                     for (_, knob, layer, values), i in zip(self._params, index) if knob != "timesteps")
        steps = {layer: values[i] for (_, knob, layer, values), i in zip(self._params, index) if knob == "timesteps"}
        if not steps:
            return probed
        dense = self.profile.base_values["timesteps"]
        per_layer = [steps[None] if None in steps else steps.get(l, t) for l, t in enumerate(dense)]
        return probed + self.profile.timestep_score(per_layer)[1]

    def _predict_costs(self, index: tuple[int, ...]) -> Mapping[str, float]:
        """The predicted costs of a config, cached (read-only: the greedy path asks for thousands)."""
        if index not in self._cache:
            self._cache[index] = self.predictor.objectives(self.config(index), self.energy)
        return self._cache[index]

    def predicted_metrics(self, trials: Sequence[FrozenTrial], params: Sequence[dict[str, Any]]) -> np.ndarray:
        """The metric this sampler predicts for each of ``params`` from the finished ``trials``:
        the drop curve fitted on them plus the residual correction of nearby ones. Public so that a
        benchmark can score the model against what trials then measured."""
        indices, drops, _ = self._observations(trials)
        curve, residuals = self._fit(indices, drops)
        return self._metrics([self._index_of(p) for p in params], curve, indices, residuals)

    def _metrics(self, candidates: list[tuple[int, ...]], curve: DropCurve, indices: list[tuple[int, ...]],
                 residuals: np.ndarray) -> np.ndarray:
        metric = self.profile.base_metric - np.asarray([float(curve(self.flips(c))) for c in candidates])
        if indices and candidates:   # the residual correction of nearby evaluated trials
            weights = np.exp(-0.5 * (self._distance(np.asarray(candidates), np.asarray(indices)) / BANDWIDTH) ** 2)
            metric -= (weights @ residuals) / (weights.sum(axis=1) + 1.0)
        return metric

    def _observations(self, trials: Sequence[FrozenTrial]) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
        """Finished trials among ``trials``: their indices, metric drops and objective vectors. An
        early-stopped trial counts with the metric of its look: noisy, but it says where the cliff is,
        and without it the sampler would keep proposing the configs that early stopping cuts short."""
        indices, drops, values = [], [], []
        k = self._metric_index
        for t in trials:
            if t.state != TrialState.COMPLETE or t.values is None or not self._has_params(t):
                continue
            indices.append(self._index_of(t.params))
            drops.append(self.profile.base_metric - t.values[k] if k is not None else 0.0)
            values.append(list(t.values))
        return indices, np.asarray(drops), np.asarray(values, dtype=float).reshape(-1, len(self.objectives))

    def _fit(self, indices: list[tuple[int, ...]], drops: np.ndarray) -> tuple[DropCurve, np.ndarray]:
        """The drop curve through the evaluated trials and the profile's own points (the dense model
        at 0, each uniform T at its flips and drop; ``PRIOR_TRIALS`` trials' weight in all), and the
        residuals of the trials."""
        s = np.asarray([self.flips(i) for i in indices], dtype=float)
        own = [(0.0, 0.0), *((flips, drop) for drop, flips in self.profile.steps.values())]
        scores = np.concatenate([s, [p[0] for p in own]])
        targets = np.concatenate([drops, [p[1] for p in own]])
        weights = np.concatenate([np.ones(len(s)), np.full(len(own), PRIOR_TRIALS / len(own))])
        curve = fit_curve(scores, targets, weights)
        return curve, drops - curve(s)

    def _distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        span = np.maximum(np.asarray(self._sizes, dtype=float) - 1, 1)
        return np.mean(np.abs(x[:, None, :] - y[None, :, :]) / span, axis=-1)

    def _propose(self, study: Study, trial: FrozenTrial) -> tuple[int, ...]:
        trials = study.get_trials(deepcopy=False)
        indices, drops, observed = self._observations(trials)
        curve, residuals = self._fit(indices, drops)
        running = [self._index_of(t.params) for t in trials if t.state == TrialState.RUNNING
                   and t.number != trial.number and self._has_params(t)]
        candidates = self._candidates(indices)

        def predicted(configs: list[tuple[int, ...]]) -> np.ndarray:
            costs = [self._predict_costs(c) | {METRIC: 0.0} for c in configs]   # the metric is filled in below
            points = np.asarray([[p[o.name] for o in self.objectives] for p in costs],
                                dtype=float).reshape(-1, len(self.objectives))
            if self._metric_index is not None:
                points[:, self._metric_index] = self._metrics(configs, curve, indices, residuals)
            return points

        points = predicted(candidates)
        front = [self._reference.normalise(v) for v in [*observed, *predicted(running)]]
        seen = set(indices)
        ones = np.ones(len(self.objectives))
        base_hv = hypervolume(front, ones) if front else 0.0
        normalised = np.asarray([self._reference.normalise(p) for p in points])
        order = np.argsort(normalised.sum(axis=1))
        best, best_gain = None, 0.0
        for i in order:
            if candidates[i] in seen or not np.all(normalised[i] < 1):
                continue
            gain = hypervolume([*front, normalised[i]], ones) - base_hv
            if gain > best_gain:
                best, best_gain = candidates[i], gain
        if best is None:
            unseen = [c for c in candidates if c not in seen]
            best = unseen[int(self._rng.integers(len(unseen)))] if unseen else candidates[0]
        return best

    def _mutate_front(self, study: Study) -> tuple[int, ...] | None:
        """A new neighbour of an evaluated Pareto point drawn in proportion to its exclusive
        hypervolume; None when no evaluated point lies inside the reference."""
        every = [t for t in study.get_trials(deepcopy=False) if self._has_params(t)]
        trials = [t for t in every if is_candidate(t)]
        points = [self._reference.normalise(t.values) for t in trials]
        ones = np.ones(len(self.objectives))
        total = hypervolume(points, ones)   # points outside the reference add nothing and hold nothing
        held = np.maximum([total - hypervolume(points[:i] + points[i + 1:], ones) for i in range(len(points))], 0.0)
        if held.sum() <= 0:
            return None
        anchor = self._index_of(trials[int(self._rng.choice(len(trials), p=held / held.sum()))].params)
        seen = {self._index_of(t.params) for t in every}
        sizes = self._sizes
        for _ in range(32):   # bounded: every neighbour may have been tried
            index = list(anchor)
            for j in self._rng.choice(len(sizes), size=min(int(self._rng.integers(1, 4)), len(sizes)), replace=False):
                index[j] = int(np.clip(index[j] + self._rng.choice([-1, 1]), 0, sizes[j] - 1))
            if tuple(index) not in seen:
                return tuple(index)
        return None

    # ------------------------------------------------------------------ candidates
    def _candidates(self, indices: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        sizes = self._sizes
        path = self._greedy_path()
        out: set[tuple[int, ...]] = set(path)
        anchors = path + list(indices)
        n_random = self.n_candidates // 3
        for _ in range(4 * self.n_candidates):   # bounded: a small space has fewer configs than asked for
            if len(out) >= self.n_candidates - n_random or not anchors:
                break
            anchor = np.array(anchors[int(self._rng.integers(len(anchors)))])
            for _ in range(int(self._rng.integers(1, 4))):
                j = int(self._rng.integers(len(sizes)))
                anchor[j] = int(np.clip(anchor[j] + self._rng.choice([-1, 1]), 0, sizes[j] - 1))
            out.add(tuple(int(v) for v in anchor))
        for _ in range(n_random):
            out.add(tuple(int(self._rng.integers(n)) for n in sizes))
        return sorted(out)

    def _greedy_path(self) -> list[tuple[int, ...]]:
        """From the dense config, repeatedly take the one-step move down one parameter with the most
        (weighted, normalised) predicted cost saved per profile score added."""
        costs = [o for o in self.objectives if o.name != METRIC]
        if not costs:
            return [self._dense]
        weights = self._rng.dirichlet(np.ones(len(costs)))
        dense_point = self._predict_costs(self._dense)
        scale = [max(abs(dense_point[o.name]), 1e-12) for o in costs]

        def cost(index: tuple[int, ...]) -> float:
            p = self._predict_costs(index)
            return float(sum(w * p[o.name] / s for w, o, s in zip(weights, costs, scale)))

        current = self._dense
        path = [current]
        current_cost, current_flips = cost(current), self.flips(current)
        while True:
            best, best_ratio = None, -math.inf
            for j in range(len(current)):
                if current[j] == 0:
                    continue
                step = current[:j] + (current[j] - 1,) + current[j + 1:]
                saved = current_cost - cost(step)
                added = max(self.flips(step) - current_flips, 0.0) + 1e-4
                if saved > 0 and saved / added > best_ratio:
                    best, best_ratio = step, saved / added
            if best is None:
                return path
            current, current_cost, current_flips = best, cost(best), self.flips(best)
            path.append(current)
