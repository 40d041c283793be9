"""spikeprune: compress spiking BERT models by a multi-objective search over heads, FFN neurons,
timesteps and weight bit widths per layer.

The workflow, each step one call (the ``spikeprune`` command calls exactly these)::

    import spikeprune as sp

    base = sp.prepare("sst2", "../shared/glue", "runs", preset="quick")    # teacher + spiking student
    result = sp.run_trial(sp.BaseBundle.load(base), sp.CompressionConfig(heads=6, timesteps=2))
    study = sp.run_search(sp.SearchSettings(prepared=base, space="joint", study_name="s1", n_trials=40))
    analysis = sp.analyse_study(study)                                     # front, hypervolume
    sp.write_report(study, "runs/s1/report.html")
    sp.export_trial(study, analysis.split.front[0], "runs/s1/export", base, None)

Every name below is loaded on first use, so ``import spikeprune`` (and ``spikeprune --help``)
does not import torch, Ray or Optuna. The modules behind them (``spikeprune._model``,
``_training``, ``_trial``, ``_spaces``, ``_search``, ``_results``) are private: their contents
may change between releases; these names are the interface.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

# Idle OpenMP threads (torch's and numba's) spin by default; on a machine whose cores are busy
# with other work (Ray workers, a second job) that made one distillation step of the quick
# student take 48 s instead of 6 s here. PASSIVE must be set before torch loads its runtime;
# a value already in the environment wins. (Search trials with several CPUs of their own spin:
# ``_search.worker.task_env``.)
_OMP_POLICY_FROM_USER = "OMP_WAIT_POLICY" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_API: dict[str, str] = {
    # errors, objectives and stored records
    "SpikepruneError": "spikeprune.errors",
    "Objective": "spikeprune.objectives", "OBJECTIVES": "spikeprune.objectives",
    "dominates": "spikeprune.objectives",
    "PreparedRecord": "spikeprune.records", "StudyRecord": "spikeprune.records", "TrialRecord": "spikeprune.records",
    # the model
    "SpikingBertConfig": "spikeprune._model.config", "CompressionConfig": "spikeprune._model.config",
    "SpikingBertForSequenceClassification": "spikeprune._model.spiking",
    "OpReport": "spikeprune._model.ops", "count_ops": "spikeprune._model.ops", "format_report": "spikeprune._model.ops",
    # prepare a base
    "prepare": "spikeprune._training.prepare", "PRESETS": "spikeprune._training.presets",
    "Preset": "spikeprune._training.presets", "override_preset": "spikeprune._training.presets",
    # evaluate one config
    "BaseBundle": "spikeprune._trial.base", "run_trial": "spikeprune._trial.kernel",
    "TrialResult": "spikeprune._trial.kernel", "EarlyStop": "spikeprune._trial.kernel",
    # search
    "SearchSpace": "spikeprune._spaces.schema", "SearchSettings": "spikeprune._search.settings",
    "SAMPLERS": "spikeprune._search.settings", "make_sampler": "spikeprune._search.settings",
    "GuidedSampler": "spikeprune._guide.sampler", "CostPredictor": "spikeprune._guide.costs",
    "SpikeStats": "spikeprune._guide.stats", "SensitivityProfile": "spikeprune._guide.sensitivity",
    "compute_profile": "spikeprune._guide.sensitivity",
    "run_search": "spikeprune._search.run", "open_storage": "spikeprune._search.storage",
    "study_status": "spikeprune._search.progress",
    # results
    "load_study": "spikeprune._results.pareto", "analyse_study": "spikeprune._results.pareto",
    "Analysis": "spikeprune._results.pareto", "find_baseline": "spikeprune._results.pareto",
    "hypervolume": "spikeprune._results.pareto",
    "write_report": "spikeprune._results.report",
    "trials_frame": "spikeprune._results.tables", "write_trials": "spikeprune._results.tables",
    "compare_fronts": "spikeprune._results.tables",
    "select_trials": "spikeprune._results.export", "export_trial": "spikeprune._results.export",
    "ExportResult": "spikeprune._results.export",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'spikeprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
