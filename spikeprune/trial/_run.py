"""The trial function: compress the base student by one config, evaluate it, count what it costs.

Every search trial, every `spikeprune evaluate` and every export re-measurement goes through
``run_trial`` so that a number means the same thing wherever it is printed.

Early stopping happens inside the trial function (``EarlyStop``): the model is compressed once, evaluated
on the first examples of the dev set, and either stops there (clearly beaten) or goes on with the
next examples only, up to the next look or the end, so a trial that survives its looks costs
exactly one full evaluation. At every look the trial races the front of the trials already fully
evaluated: it stops when one of them costs no more and scores above even the upper end of the
trial's bootstrap interval.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from spikeprune.models._compress import prune, select_units, set_timesteps
from spikeprune.models._config import CompressionConfig
from spikeprune.models._evaluation import Evaluation, evaluate_model, merge_evaluations
from spikeprune.data._metrics import bootstrap_ci
from spikeprune.costs._ann import AnnReference, ann_reference
from spikeprune.costs._ops import OpReport, count_ops
from spikeprune.models._compress import quantize_model
from spikeprune.models._record import SimRecord
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.training._recovery import recover
from spikeprune.objectives import METRIC, dominates

from spikeprune.trial._base import BaseBundle


def worker_name() -> str:
    """The process that evaluates, as ``host:pid`` (stored on each trial)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class EarlyStop:
    """The early looks of one trial. At the first ``examples`` dev examples and at each of the
    ``later`` example counts, its values (the ``objectives`` named, in order) are checked against
    the metric ``floor`` and raced against ``front``, the values of fully evaluated trials; at the
    first look they are also compared with ``others``, the looks of earlier trials on the same
    examples. ``stops`` ends the trial there. Plain data, sent with the task."""

    examples: int
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    metric: int
    margin: float
    floor: float | None = None
    others: tuple[tuple[float, ...], ...] = ()
    later: tuple[int, ...] = ()
    front: tuple[tuple[float, ...], ...] = ()

    def values(self, measured: dict[str, float]) -> list[float]:
        return [float(measured[name]) for name in self.objectives]

    def misses_floor(self, upper: float) -> bool:
        """The metric's upper confidence bound ``upper`` (bootstrap, on the examples seen so far)
        is below the floor: the whole dev set would very likely miss it too."""
        return self.floor is not None and upper < self.floor

    def outrun(self, values: list[float], upper: float) -> bool:
        """A fully evaluated trial costs no more and scores above ``upper``, the top of this
        trial's metric interval: the whole dev set would very likely leave this trial dominated."""
        optimistic = [upper if i == self.metric else v for i, v in enumerate(values)]
        return any(dominates(done, optimistic, self.directions, metric=self.metric) for done in self.front)

    def stops(self, measured: dict[str, float], upper: float, *, first: bool = True) -> bool:
        """Clearly beaten at a look: it misses the floor, or the front outruns it, or (at the
        ``first`` look) another trial's look on the same examples beats it by more than ``margin``."""
        values = self.values(measured)
        return self.misses_floor(upper) or self.outrun(values, upper) or first and any(
            dominates(other, values, self.directions, metric=self.metric, margin=self.margin) for other in self.others)


@dataclass
class TrialResult:
    """Everything one trial measured; ``to_dict`` is what storage and exports keep."""

    compression: CompressionConfig
    metrics: dict[str, float]
    metric_ci: tuple[float, float]
    report: OpReport
    ann: AnnReference                                      # the ANN teacher and twin on the same tokens
    timing: dict[str, float]
    examples: int
    worker: str
    record: SimRecord = field(repr=False, compare=False)   # the spike counts, to re-count under other energy models
    early_stopped: bool = False                            # ended after its early look (``EarlyStop``)
    partial: dict[str, Any] | None = None                  # the early look: examples, objectives, metrics

    @property
    def objectives(self) -> dict[str, float]:
        """The values a study can optimise, by the objective names of the space files."""
        return {METRIC: self.metrics[METRIC], **self.report.costs()}

    def to_dict(self) -> dict[str, Any]:
        return {"compression": self.compression.to_dict(), "metrics": self.metrics,
                "metric_ci": list(self.metric_ci), "report": self.report.to_dict(), "ann": self.ann.to_dict(),
                "timing": self.timing, "examples": self.examples, "worker": self.worker,
                "objectives": self.objectives, "early_stopped": self.early_stopped, "partial": self.partial}


def build_compressed(base: BaseBundle, compression: CompressionConfig, seed: int = 0, device: str = "cpu"
                     ) -> tuple[SpikingBertForSequenceClassification, CompressionConfig, dict[str, float]]:
    """Apply a compression config to the base student: prune, set timesteps, recover, quantize.

    Recovery (a short distillation from the teacher) trains the float pruned model through its
    quantized weights, which are then quantized for good, so the evaluated model is exactly what
    export stores. The model ends on ``device``, where ``measure`` then evaluates it.
    """
    torch.manual_seed(seed)
    resolved = compression.resolve(base.student.config)
    t0 = time.perf_counter()
    kept_heads, _ = select_units(base.student, resolved.heads, resolved.neurons, base.importance,
                                 method=base.importance_method)
    model = prune(base.student, resolved.heads, resolved.neurons, base.importance, method=base.importance_method)
    model = set_timesteps(model, resolved.timesteps).to(device)
    t1 = time.perf_counter()
    if resolved.recovery_steps:
        model = recover(model, base.recovery_source(), steps=resolved.recovery_steps, teacher_heads=kept_heads,
                        weight_bits=resolved.weight_bits, seed=seed, device=device)
    t2 = time.perf_counter()
    model = quantize_model(model, resolved.weight_bits).eval()
    t3 = time.perf_counter()
    return model, resolved, {"compress_s": (t1 - t0) + (t3 - t2), "recover_s": t2 - t1}


def measure(base: BaseBundle, model: SpikingBertForSequenceClassification, compression: CompressionConfig,
            timing: dict[str, float], *, max_examples: int | None = None, seed: int = 0,
            energy: Any = "float45nm", early_stop: EarlyStop | None = None, simulate: bool = False) -> TrialResult:
    """Evaluate a compressed model on (the first ``max_examples`` of) the dev set and count its
    operations; ``timing`` holds the compress/recover seconds already spent on it. With
    ``early_stop`` the first ``early_stop.examples`` are evaluated first, and the rest (in steps,
    at its ``later`` looks) only while the trial is not clearly beaten.

    A family with an exact quantized twin (the elastic one) is evaluated through the twin, whose
    metric and spike counts equal the simulation's bit for bit (``tests/test_elastic.py``);
    ``simulate`` steps the neurons anyway (what export does)."""
    full = base.dev_size if max_examples is None else min(max_examples, base.dev_size)
    mode = "twin" if model.simulation.family.sequential and not simulate else "batched"
    timing = {**timing, "eval_s": 0.0, "count_s": 0.0}

    def result(evaluation: Evaluation) -> TrialResult:
        t0 = time.perf_counter()
        report = count_ops(model.config, evaluation.record, energy)
        ann = ann_reference(base.student.config, model.config, evaluation.record, energy)
        timing["count_s"] += time.perf_counter() - t0
        ci = bootstrap_ci(base.task, evaluation.predictions, evaluation.labels, seed=seed)
        return TrialResult(compression=compression, metrics=evaluation.metrics, metric_ci=ci, report=report, ann=ann,
                           timing=dict(timing), examples=evaluation.record.examples,
                           worker=worker_name(), record=evaluation.record)

    def evaluate(start: int, stop: int) -> Evaluation:
        t0 = time.perf_counter()
        evaluation = evaluate_model(model, base.dev_batches(stop, start=start), base.task, mode=mode)
        timing["eval_s"] += time.perf_counter() - t0
        return evaluation

    if early_stop is None or early_stop.examples >= full:
        final = result(evaluate(0, full))
    else:
        looks = [early_stop.examples, *(n for n in early_stop.later if early_stop.examples < n < full)]
        seen = evaluate(0, looks[0])
        current = result(seen)
        partial = {"examples": current.examples, "objectives": current.objectives, "metrics": current.metrics}
        stopped = early_stop.stops(current.objectives, current.metric_ci[1])
        for start, stop in zip(looks, looks[1:]):
            if stopped:
                break
            seen = merge_evaluations(seen, evaluate(start, stop), base.task)
            current = result(seen)
            stopped = early_stop.stops(current.objectives, current.metric_ci[1], first=False)
        if stopped:
            final = dataclasses.replace(current, early_stopped=True)
        else:
            final = result(merge_evaluations(seen, evaluate(looks[-1], full), base.task))
        final.partial = partial
    final.timing["total_s"] = sum(v for k, v in final.timing.items() if k != "total_s")
    return final


def run_trial(base: BaseBundle, compression: CompressionConfig, *, max_examples: int | None = None,
              seed: int = 0, energy: Any = "float45nm", device: str = "cpu",
              early_stop: EarlyStop | None = None) -> TrialResult:
    """Compress the base student by ``compression``, then ``measure`` it (on ``device``): one search trial."""
    model, resolved, timing = build_compressed(base, compression, seed=seed, device=device)
    return measure(base, model, resolved, timing, max_examples=max_examples, seed=seed, energy=energy,
                   early_stop=early_stop)
