"""One study read once for the report, tables and export: its Pareto split, reference point,
hypervolume history and baseline (the rules themselves are ``spikeprune.pareto``'s)."""
from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from spikeprune.objectives import Objective
from spikeprune.pareto import (NoiseRule, ParetoSplit, Reference, baseline_trial, hypervolume_history, reference_of,
                               split_trials, study_objectives)
from spikeprune.records import StudyRecord


@dataclass
class Analysis:
    """Everything the report, tables and export need from one study, computed once."""

    study_name: str
    record: StudyRecord
    objectives: list[Objective]
    trials: list[FrozenTrial]
    split: ParetoSplit
    reference: Reference | None
    history: list[tuple[int, float]]
    baseline: FrozenTrial | None

    @property
    def hypervolume(self) -> float | None:
        return self.history[-1][1] if self.reference is not None and self.history else None


def analyse_study(study: optuna.Study, *, margin: float = 0.1, metric_margin: float = 0.1,
                  noise: NoiseRule | None = NoiseRule()) -> Analysis:
    """Read a study once and compute its split, reference point and hypervolume history.

    Without a reference point (no value given, no baseline, no finished trial) ``reference`` is
    None and the history is empty.
    """
    objectives = study_objectives(study)
    trials = study.get_trials(deepcopy=False)
    reference = reference_of(study, trials, margin=margin, metric_margin=metric_margin)
    return Analysis(
        study_name=study.study_name, record=StudyRecord.read(study),
        objectives=objectives, trials=sorted(trials, key=lambda t: t.number),
        split=split_trials(trials, objectives, noise), reference=reference,
        history=hypervolume_history(trials, reference) if reference is not None else [],
        baseline=baseline_trial(trials))

