"""The sensitivity profile of a base: how much compressing one layer along one knob hurts.

For every searched knob of a space and every layer (or all layers at once for a shared knob), a
few of the knob's cheaper values are each applied alone to the dense base. Each probe records the
metric drop and the fraction of predictions that changed from the dense model's ("flips"; for
regression, the mean absolute change over the dense predictions' standard deviation). Flips are
paired with the dense model on the same examples, so they are far less noisy than the metric on a
few examples, and at small compressions they add up across layers: the sampler's additive model
(sampler.py) sums them.

What a probe costs is what makes the profile pay for itself. Heads, neurons and bit widths are
probed on the model's training surrogate (``mode="surrogate"``: the converted family's quantized
network, what its spikes converge to), which runs no timesteps and so costs about one T-th of a
simulation: those probes see ``SURROGATE_FACTOR`` times more examples for the same time.
Timesteps are not probed at all: the spike statistics (_stats.py) already simulate the whole model
at every uniform T of the space, and those runs' drops and flips (``steps``) give the timestep
term (``timestep_score``): the power mean, with exponent ``TIMESTEP_POWER``, over the layers of
the uniform curve at each layer's T. A uniform config scores exactly what was measured; one layer
cut alone scores L^(-1/p) of the uniform cut. Cuts of single layers are far from additive: on the
SST-2 base each one alone flipped about half as many predictions as cutting every layer
(docs/RESULTS.md, ``benchmarks/bench_timesteps.py``), which a mean with p = 2.5 reproduces
(L = 6: 0.49) and the additive 1/L share does not (0.17).

The profile is cached beside the base (``<prepared>/guide/``), written after every probe, so an
interrupted profile resumes where it stopped; its file name is a digest of the plan and budget.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from spikeprune.models._config import CompressionConfig, SpikingBertConfig
from spikeprune.models._evaluation import evaluate_model
from spikeprune.spaces._schema import SearchSpace
from spikeprune.trial._base import BaseBundle
from spikeprune.trial._run import build_compressed
from spikeprune.errors import SpikepruneError

from spikeprune.samplers._stats import SpikeStats

FORMAT = 3
#: Knobs a profile probes (on the surrogate), in this order; timesteps come from the uniform-T runs.
KNOBS: tuple[str, ...] = ("heads", "neurons", "weight_bits")
#: Surrogate probes see this many times the simulated examples.
SURROGATE_FACTOR = 4
#: Exponent of the power mean over layers of the timestep term (1: additive shares; large: the
#: worst layer alone). Measured on the SST-2 base: one of 6 layers cut costs 0.52-0.67 of all 6.
TIMESTEP_POWER = 2.5


@dataclass(frozen=True)
class Probe:
    knob: str
    layer: int | None          # None: every layer at once (a shared knob)
    value: float


@dataclass
class ProbeResult:
    probe: Probe
    metric: float
    drop: float                # the dense model's metric (same mode, same examples) minus ``metric``
    flips: float
    seconds: float


@dataclass
class SensitivityProfile:
    """Measured probes plus the dense base's metric on the same examples."""

    examples: int
    base_metric: float
    base_values: dict[str, list[float]]            # the dense model's value of every knob per layer
    results: list[ProbeResult] = field(default_factory=list)
    seconds: float = 0.0                           # evaluation time of the whole profile
    steps: dict[int, tuple[float, float]] = field(default_factory=dict)   # uniform T -> (drop, flips), simulated

    def curve(self, knob: str, layer: int | None) -> list[tuple[float, float, float]]:
        """(value, drop, flips) of the probes of one knob and layer, the dense value at (.., 0, 0)."""
        base = self.base_values[knob][layer or 0]
        points = [(r.probe.value, r.drop, r.flips) for r in self.results
                  if r.probe.knob == knob and r.probe.layer == layer]
        return sorted([(base, 0.0, 0.0), *points])

    def score(self, knob: str, layer: int | None, value: float) -> tuple[float, float]:
        """(drop, flips) at ``value``, linear between the probed values; 0 at or above the dense
        value, the cheapest probe's below it."""
        curve = self.curve(knob, layer)
        xs = [c[0] for c in curve]
        if value >= xs[-1]:
            return 0.0, 0.0
        return (float(np.interp(value, xs, [c[1] for c in curve])), float(np.interp(value, xs, [c[2] for c in curve])))

    def timestep_score(self, timesteps: Sequence[float]) -> tuple[float, float]:
        """(drop, flips) of per-layer ``timesteps``: the power mean over layers of the uniform-T
        curve at each layer's T (the module doc); the curve is linear between the measured T, 0 at
        the base T and above, the fewest measured steps' value below them."""
        if not self.steps:
            return 0.0, 0.0
        top = max(self.base_values["timesteps"])
        xs = [*sorted(self.steps), top]

        def mean(values: list[float]) -> float:
            curve = np.interp(timesteps, xs, [*values, 0.0]).clip(min=0.0)
            return float(np.mean(curve ** TIMESTEP_POWER) ** (1 / TIMESTEP_POWER))

        return (mean([self.steps[t][0] for t in sorted(self.steps)]), mean([self.steps[t][1] for t in sorted(self.steps)]))

    def to_dict(self) -> dict:
        return {"format": FORMAT, "examples": self.examples, "base_metric": self.base_metric,
                "base_values": self.base_values, "seconds": self.seconds,
                "steps": {str(t): list(v) for t, v in self.steps.items()},
                "results": [{**asdict(r.probe), "metric": r.metric, "drop": r.drop, "flips": r.flips,
                             "seconds": r.seconds} for r in self.results]}

    @classmethod
    def from_dict(cls, data: dict) -> "SensitivityProfile":
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')}, expected {FORMAT}")
        results = [ProbeResult(Probe(r["knob"], r["layer"], r["value"]), r["metric"], r["drop"], r["flips"], r["seconds"])
                   for r in data["results"]]
        steps = {int(t): (float(v[0]), float(v[1])) for t, v in data["steps"].items()}
        return cls(data["examples"], data["base_metric"], data["base_values"], results, data["seconds"], steps)


def dense_values(model: SpikingBertConfig) -> dict[str, list[float]]:
    return {"heads": list(model.heads), "neurons": list(model.intermediate_sizes),
            "timesteps": list(model.timesteps), "weight_bits": list(model.weight_bits)}


def plan(space: SearchSpace, model: SpikingBertConfig, levels: int = 2) -> list[Probe]:
    """Per searched knob and layer, ``levels`` of the knob's values below the dense one, spread
    evenly from the cheapest (included) towards the dense value."""
    space.check(model)
    dense = dense_values(model)
    probes = []
    for knob in KNOBS:
        spec = space.knobs.get(knob)
        if spec is None or not spec.searched:
            continue
        layers: list[int | None] = list(range(model.num_layers)) if spec.per_layer else [None]
        for layer in layers:
            below = [v for v in spec.values() if v < dense[knob][layer or 0]]
            if not below:
                continue
            picks = sorted({below[int(i * len(below) / levels)] for i in range(min(levels, len(below)))})
            probes += [Probe(knob, layer, float(v)) for v in picks]
    return probes


def _config(probe: Probe, model: SpikingBertConfig) -> CompressionConfig:
    values = dense_values(model)[probe.knob]
    if probe.layer is None:
        values = [probe.value] * len(values)
    else:
        values = [probe.value if l == probe.layer else v for l, v in enumerate(values)]
    return CompressionConfig(**{probe.knob: values})


def uniform_steps(space: SearchSpace, model: SpikingBertConfig) -> list[int]:
    """The uniform T the spike statistics are measured at: the space's timesteps below the base's."""
    knob = space.knobs.get("timesteps")
    values = knob.values() if knob is not None else []
    return [int(t) for t in values if t < max(model.timesteps)]


def stats_file(prepared: Path, examples: int, steps: list[int]) -> Path:
    suffix = "".join(f"-t{t}" for t in steps)
    return Path(prepared) / "guide" / f"spike-stats-{examples}{suffix}.safetensors"


def profile_path(prepared: Path, probes: list[Probe], examples: int) -> Path:
    digest = hashlib.sha256(json.dumps([FORMAT, [asdict(p) for p in probes], examples]).encode()).hexdigest()[:12]
    return Path(prepared) / "guide" / f"sensitivity-{digest}.json"


def flip_rate(task_regression: bool, dense: np.ndarray, other: np.ndarray) -> float:
    """How far ``other``'s predictions moved from ``dense``'s: the share changed, or for regression
    the mean absolute change over the dense predictions' standard deviation."""
    if task_regression:
        return float(np.mean(np.abs(other - dense)) / (np.std(dense) or 1.0))
    return float(np.mean(other != dense))


def compute_profile(base: BaseBundle, space: SearchSpace, *, examples: int = 64, levels: int = 2,
                    progress: Callable[[str], None] | None = None) -> tuple[SpikeStats, SensitivityProfile]:
    """The base's spike statistics and its profile for ``space``, each loaded from its cache beside
    the base, resumed, or measured; one dense evaluation serves both when anything is missing."""
    from spikeprune.data._glue import get_task

    model = base.student.config
    examples = min(examples, base.dev_size)
    probes = plan(space, model, levels)
    path = profile_path(base.prepared, probes, examples)
    steps = uniform_steps(space, model)
    stats_path = stats_file(base.prepared, examples, steps)
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    profile = None
    if path.exists():
        try:
            profile = SensitivityProfile.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise SpikepruneError(f"{path} is damaged ({e}); delete it and the profile is measured again") from None
    done = {r.probe for r in profile.results} if profile else set()
    todo = [p for p in probes if p not in done]
    if profile is not None and not todo and stats_path.exists():
        return SpikeStats.load(stats_path), profile
    t0 = time.perf_counter()
    stats, simulated, at_steps = SpikeStats.gather(base.student, base.dev_batches(examples), base.task, steps)
    stats.save(stats_path)
    regression = get_task(base.task).is_regression
    wide = min(examples * SURROGATE_FACTOR, base.dev_size)
    surrogate = None   # the dense surrogate's predictions, evaluated only if a probe runs
    if todo:
        surrogate = evaluate_model(base.student, base.dev_batches(wide), base.task, mode="surrogate")
    if profile is None:
        profile = SensitivityProfile(examples, stats.metric, dense_values(model), steps={
            t: (stats.metric - float(ev.metrics["metric"]), flip_rate(regression, simulated.predictions, ev.predictions))
            for t, ev in at_steps.items()})
    profile.seconds += time.perf_counter() - t0
    say(f"sensitivity profile: {len(todo)} of {len(probes)} probes to run ({wide} dev examples on the surrogate; "
        f"timesteps from {examples} simulated at T = {', '.join(map(str, steps)) or 'none'}) -> {path}")
    for i, probe in enumerate(todo, 1):
        t0 = time.perf_counter()
        compressed, _, _ = build_compressed(base, _config(probe, model))
        ev = evaluate_model(compressed, base.dev_batches(wide), base.task, mode="surrogate")
        seconds = time.perf_counter() - t0
        metric = float(ev.metrics["metric"])
        result = ProbeResult(probe, metric, float(surrogate.metrics["metric"]) - metric,
                             flip_rate(regression, surrogate.predictions, ev.predictions), seconds)
        profile.results.append(result)
        profile.seconds += seconds
        _write(path, profile)
        where = "all layers" if probe.layer is None else f"layer {probe.layer}"
        say(f"  [{len(done) + i}/{len(probes)}] {probe.knob}={probe.value:g} in {where}: metric "
            f"{result.metric:.4f} (drop {result.drop:+.4f}), flips {result.flips:.3f}, {seconds:.1f} s")
    _write(path, profile)
    return stats, profile


def _write(path: Path, profile: SensitivityProfile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    tmp.replace(path)
