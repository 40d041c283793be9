"""What a running search shows, and what `spikeprune status` prints about a stored study.

Both read only the study (trial states and user attrs), so status works from any process while
a driver writes. Pareto front and hypervolume come from ``spikeprune.pareto``: the front
of complete, feasible, fully evaluated trials; hypervolume normalised with the reference point
given, else from the dense baseline or the trials (0..1; "-" before any trial finished).
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

import optuna
from optuna.trial import TrialState

from spikeprune.errors import SpikepruneError
from spikeprune.records import StudyRecord, TrialRecord
from spikeprune.pareto import baseline_trial, front_hypervolume, reference_of, split_trials, study_objectives

from spikeprune.search._resume import Resume
from spikeprune.search._settings import check_study_name
from spikeprune.search._storage import open_storage


def front_and_hypervolume(study: optuna.Study, trials: list) -> tuple[int, float | None]:
    """Size of the Pareto front and its normalised hypervolume (None without a reference point)."""
    split = split_trials(trials, study_objectives(study), noise=None)
    reference = reference_of(study, trials)
    return len(split.front), None if reference is None else front_hypervolume(trials, reference)


def counts_line(study: optuna.Study, trials: list, running: int | None = None) -> str:
    """"12 complete (3 stopped early) · 2 running · 1 failed · 2 queued · front 5 · HV 0.41"."""
    states = Counter(t.state for t in trials)
    stopped = sum(1 for t in trials if t.state == TrialState.COMPLETE and TrialRecord.of(t).early_stopped)
    size, hv = front_and_hypervolume(study, trials)
    parts = [f"{states[TrialState.COMPLETE]} complete ({stopped} stopped early)",
             f"{states[TrialState.RUNNING] if running is None else running} running",
             f"{states[TrialState.FAIL]} failed"]
    if states[TrialState.WAITING]:
        parts.append(f"{states[TrialState.WAITING]} queued")
    parts += [f"front {size}", f"HV {'-' if hv is None else f'{hv:.4f}'}"]
    return " · ".join(parts)


class Progress:
    """A live status line: rewritten in place on a terminal, one line per event otherwise."""

    def __init__(self, study: optuna.Study, n_trials: int, enabled: bool = True, out: TextIO | None = None) -> None:
        self.study, self.n_trials, self.enabled = study, n_trials, enabled
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.start = time.monotonic()
        self.width = 0

    def update(self, running: int, last: str | None = None) -> None:
        if not self.enabled:
            return
        trials = self.study.get_trials(deepcopy=False)
        done = sum(1 for t in trials if t.state == TrialState.COMPLETE)
        line = (f"[{self.study.study_name}] {done}/{self.n_trials} · {counts_line(self.study, trials, running)}"
                f" · {time.monotonic() - self.start:.0f}s")
        if last:
            line += f" · last {last}"
        if self.tty:
            self.out.write("\r" + line.ljust(self.width))
            self.width = len(line)
        elif last:  # a log file gets one line per finished trial, not per submission
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.width:
            self.out.write("\n")
            self.out.flush()


def front_lines(study: optuna.Study, trials: list) -> list[str]:
    """The Pareto front as a small table: objective values and the per-layer config of each point."""
    objectives = study_objectives(study)
    front = split_trials(trials, objectives, noise=None).front
    if not front:
        return []
    # The energy as a multiple of the fp32 ANN teacher's and of the trial's integer twin's.
    lines = ["Pareto front:", "  trial  " + "  ".join(f"{o.shown:>10s}" for o in objectives)
             + f"  {'x fp32 ANN':>10s}  {'x int twin':>10s}  config"]
    for t in sorted(front, key=lambda t: t.values[0]):
        record = TrialRecord.of(t)
        config = record.compression or {}
        shown = " ".join(f"{k}={config[k]}" for k in ("heads", "neurons", "timesteps", "weight_bits") if k in config)
        ratios = record.ann_ratios or {}
        x = "  ".join(f"{ratios[k]:10.3g}" if k in ratios else f"{'-':>10s}" for k in ("teacher", "twin"))
        lines.append(f"  #{t.number:<5d} " + "  ".join(f"{v:10.4g}" for v in t.values) + f"  {x}  {shown}")
    return lines


def ann_line(trials: list) -> str | None:
    """The ANN teacher's energy per example, fp32 and int8, on the dense baseline's examples."""
    baseline = baseline_trial(trials)
    ann = TrialRecord.of(baseline).ann_reference if baseline is not None else None
    if ann is None:
        return None
    return f"ANN teacher on the baseline's examples: {ann.headline()}"


def study_status(storage: str, study_name: str | None = None) -> str:
    """A few lines about a study (or the list of studies when ``study_name`` is None)."""
    store = open_storage(storage)
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    if study_name is None:
        if not summaries:
            return f"no studies in {storage}"
        return "\n".join(f"{s.study_name}: {s.n_trials} trials" for s in summaries)
    check_study_name(study_name)
    if study_name not in {s.study_name for s in summaries}:
        names = ", ".join(s.study_name for s in summaries) or "none"
        raise SpikepruneError(f"no study {study_name!r} in {storage}; studies there: {names}")
    study = optuna.load_study(study_name=study_name, storage=store)
    trials = study.get_trials(deepcopy=False)
    record = StudyRecord.read(study)
    objectives = ", ".join(f"{o.shown} ({o.direction[:3]})" for o in record.objective_list)
    lines = [f"study {study_name}: task {record.task}, space {record.space.get('name')}, objectives {objectives}",
             counts_line(study, trials)]
    full = min(record.max_examples or record.dev_examples, record.dev_examples) if record.dev_examples else None
    fresh = [t for t in trials if t.state == TrialState.COMPLETE and TrialRecord.of(t).fresh]
    if fresh and full:
        evaluated = sum(TrialRecord.of(t).examples or 0 for t in fresh)
        lines.append(f"dev examples evaluated: {evaluated} of {full * len(fresh)} for full evaluations")
    if (line := ann_line(trials)) is not None:
        lines.append(line)
    lines.extend(front_lines(study, trials))
    for t in trials:
        if t.state == TrialState.RUNNING:
            lines.append(f"  #{t.number} running (driver {Resume.who(TrialRecord.of(t).driver)})")
    return "\n".join(lines)
