"""Export trials as self-contained folders: config, packed checkpoint and re-measured metrics.

Layout of one export, ``<out_dir>/trial-<number, 5 digits>/``::

    config.yaml    study, task, trial number, the resolved compression config (``spikeprune evaluate
                   --config`` reads this file as it is), search-time values, and ``ann``: the
                   re-measured energy per example of the fp32 teacher, the int8 teacher and the
                   integer twin (costs/_ann.py) and the spiking energy as a multiple of each
    model/         the compressed model, weights packed at their bit widths (models/_checkpoint.py), and
                   its tokenizer: ``from_pretrained`` and ``AutoTokenizer`` on this folder
    metrics.json   search-time and re-measured objective values, metrics, op report, tolerance, verdict

The model is rebuilt from the trial's stored compression config, not copied from the search, and
measured again on the same examples; a gap beyond the tolerance marks the export as failed.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from spikeprune.models._config import CompressionConfig
from spikeprune.errors import SpikepruneError
from spikeprune.objectives import METRIC
from spikeprune.pareto import is_candidate, study_objectives
from spikeprune.records import StudyRecord, TrialRecord
from spikeprune.spaces._schema import SearchSpace

from spikeprune.results._analysis import analyse_study

#: Allowed gap between search-time and re-measured values. The rebuild is deterministic, so only
#: float reduction order (thread counts) can flip a spike at threshold: the metric may move by a
#: few examples (absolute 0.005 = 4 of SST-2's 872), costs by 1% relative.
TOLERANCE: dict[str, float] = {"metric_abs": 0.005, "cost_rel": 0.01}


def trial_value(trial: FrozenTrial, name: str, objectives: list | None = None) -> float | None:
    """A trial's "metric" or cost: its objective value if searched, else from the stored metrics / op report."""
    for k, o in enumerate(objectives or []):
        if o.name == name and trial.values is not None:
            return float(trial.values[k])
    record = TrialRecord.of(trial)
    source = (record.metrics if name == METRIC else record.report) or {}
    value = source.get(name)
    return None if value is None else float(value)


def _fidelity(trial: FrozenTrial) -> float:
    fidelity = TrialRecord.of(trial).fidelity
    return 1.0 if fidelity is None else float(fidelity)


def select_trials(study: optuna.Study, trial: int | None = None, pareto: bool = False,
                  max_sops: float | None = None, min_metric: float | None = None) -> list[FrozenTrial]:
    """The trials to export: one by number, the Pareto front, or the best under a budget.

    Budget: among feasible, complete, fully evaluated trials at the study's highest fidelity,
    ``max_sops`` picks the best metric with SOPs <= max_sops; ``min_metric`` picks the fewest SOPs
    with metric >= min_metric; both together pick the best metric meeting both. Ties go to fewer
    SOPs, then the lower trial number.
    """
    budget = max_sops is not None or min_metric is not None
    if (trial is not None) + bool(pareto) + budget != 1:
        raise SpikepruneError("choose exactly one of: a trial number, the Pareto front, or a budget "
                              "(max_sops and/or min_metric)")
    trials = study.get_trials(deepcopy=False)
    if trial is not None:
        found = [t for t in trials if t.number == trial]
        if not found:
            raise SpikepruneError(
                f"study {study.study_name!r} has no trial {trial}; it has trials 0..{len(trials) - 1}")
        if found[0].state != TrialState.COMPLETE or not TrialRecord.of(found[0]).compression:
            raise SpikepruneError(f"trial {trial} is {found[0].state.name} without a result; pick a complete trial")
        return found
    if pareto:
        front = analyse_study(study).split.front
        if not front:
            raise SpikepruneError(f"study {study.study_name!r} has no feasible complete trials, so no Pareto front")
        return front
    objectives = study_objectives(study)
    pool = [t for t in trials if is_candidate(t)]
    if not pool:
        raise SpikepruneError(f"study {study.study_name!r} has no feasible, complete, fully evaluated trials")
    top = max(_fidelity(t) for t in pool)
    scored = [(t, trial_value(t, METRIC, objectives), trial_value(t, "sops", objectives))
              for t in pool if _fidelity(t) == top]
    scored = [(t, m, s) for t, m, s in scored if m is not None and s is not None]
    ok = [(t, m, s) for t, m, s in scored
          if (max_sops is None or s <= max_sops) and (min_metric is None or m >= min_metric)]
    if not ok:
        best_sops = min((s for _, _, s in scored), default=None)
        best_metric = max((m for _, m, _ in scored), default=None)
        raise SpikepruneError(
            f"no trial meets the budget (max_sops={max_sops}, min_metric={min_metric}); the fewest SOPs "
            f"is {best_sops} and the best metric {best_metric}: loosen the budget")
    if max_sops is not None:
        chosen = min(ok, key=lambda x: (-x[1], x[2], x[0].number))
    else:
        chosen = min(ok, key=lambda x: (x[2], -x[1], x[0].number))
    return [chosen[0]]


def trial_dir(out_dir: str | Path, trial: FrozenTrial) -> Path:
    """``<out_dir>/trial-NNNNN``, refusing any path (e.g. through a symlink) that leaves ``out_dir``."""
    root = Path(out_dir).resolve()
    folder = (root / f"trial-{trial.number:05d}").resolve()
    if not folder.is_relative_to(root) or folder == root:
        raise SpikepruneError(
            f"export folder {folder} is outside {root}; remove the symlink or pick another output folder")
    return folder


@dataclass
class ExportResult:
    """What an export wrote and whether the re-measured values matched the search."""

    trial: int
    folder: Path
    search: dict[str, float]
    measured: dict[str, float]
    problems: list[str] = field(default_factory=list)
    #: ``AnnReference.summary`` of the re-measured model: the ANN references and the ratios to them.
    ann: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def ann_text(self) -> str:
        """The re-measured energy against the ANN, for one line of output."""
        x = self.ann["spiking_x"]
        return (f"energy {self.ann['spiking_energy_uj']:.4g} µJ = {x['teacher']:.3g}x the fp32 ANN teacher, "
                f"{x['twin']:.3g}x its integer twin")


def compare_values(search: Mapping[str, float], measured: Mapping[str, float],
                   tolerance: Mapping[str, float] = TOLERANCE) -> list[str]:
    """One line per objective whose re-measured value is off by more than the tolerance."""
    problems = []
    for name, before in search.items():
        after = measured[name]
        if name == METRIC:
            if abs(after - before) > tolerance["metric_abs"]:
                problems.append(f"{name}: search {before:.6g}, re-measured {after:.6g} "
                                f"(allowed +-{tolerance['metric_abs']:g})")
        elif abs(after - before) > tolerance["cost_rel"] * abs(before):
            problems.append(f"{name}: search {before:.6g}, re-measured {after:.6g} "
                            f"(allowed +-{tolerance['cost_rel']:.0%})")
    return problems


def _prepare_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise SpikepruneError(
                f"{folder} already holds an export; pass overwrite to replace it or pick another folder")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def export_trial(study: optuna.Study, trial: FrozenTrial, out_dir: str | Path, prepared_dir: str | Path,
                 glue_dir: str | Path | None, *, tolerance: Mapping[str, float] = TOLERANCE,
                 overwrite: bool = False) -> ExportResult:
    """Rebuild ``trial``'s compressed model from its stored config, save it packed, load it back
    and re-measure it on the examples the search used, with the study's seed and energy model;
    compare with the search-time values (see TOLERANCE). ``ExportResult.problems`` lists every
    value beyond the tolerance."""
    from transformers import AutoTokenizer

    from spikeprune.models._model import SpikingBertForSequenceClassification
    from spikeprune.trial._base import BaseBundle
    from spikeprune.trial._run import build_compressed, measure

    study_record, objectives = StudyRecord.read(study), study_objectives(study)
    record = TrialRecord.of(trial)
    if trial.state != TrialState.COMPLETE or not record.compression:
        raise SpikepruneError(f"trial {trial.number} is {trial.state.name} without a result; export a complete trial")
    folder = trial_dir(out_dir, trial)
    compression = CompressionConfig.from_dict(record.compression)
    search = {o.name: float(v) for o, v in zip(objectives, trial.values)}
    # The trial ran with the study's seed (recovery data and order, bootstrap); a format-0 study
    # did not record it, and its searches all ran with the default seed 0.
    seed, energy = study_record.seed or 0, study_record.energy

    # Pruned by the importance score the search used; loaded before the folder exists, so a bad base
    # leaves nothing.
    importance = SearchSpace.from_dict(study_record.space).importance
    base = BaseBundle.load(prepared_dir, glue_dir, importance_method=importance)
    _prepare_folder(folder, overwrite)
    # A partial evaluation (early stop, or a capped dev set) used the first `examples` dev examples.
    examples = base.dev_size if record.examples is None else record.examples
    max_examples = examples if examples < base.dev_size else None
    model, resolved, timing = build_compressed(base, compression, seed=seed)
    model.save_pretrained(folder / "model", packed=True)
    # The tokenizer beside the weights: from_pretrained plus this folder is all a user needs.
    AutoTokenizer.from_pretrained(Path(prepared_dir) / "student").save_pretrained(folder / "model")
    # Measure what was written, not the in-memory model: the export is checked as users load it.
    exported = SpikingBertForSequenceClassification.from_pretrained(folder / "model")
    result = measure(base, exported, resolved, timing, max_examples=max_examples, seed=seed, energy=energy,
                     simulate=True)   # the full simulation, even where trials used the exact twin
    measured = {o.name: float(result.objectives[o.name]) for o in objectives}
    problems = compare_values(search, measured, tolerance)

    ann = result.ann.summary(result.report.energy_uj)
    config = {
        "study": study.study_name, "task": study_record.task, "trial": trial.number,
        "compression": resolved.to_dict(),
        "objectives": [{"name": o.name, "direction": o.direction} for o in objectives],
        "search_values": search, "fidelity": _fidelity(trial), "examples": examples, "seed": seed,
        "energy": energy, "prepared": str(prepared_dir), "params": dict(trial.params),
        "ann": ann,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    metrics: dict[str, Any] = {"search": search, "measured": measured, **result.to_dict(),
                               "tolerance": dict(tolerance), "ok": not problems, "problems": problems}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return ExportResult(trial.number, folder, search, measured, problems, ann)
