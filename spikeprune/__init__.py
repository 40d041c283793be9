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
does not import torch, Ray or Optuna. The parts behind them are public subpackages, each with a
small surface of its own: ``spikeprune.models``, ``data``, ``costs``, ``training``, ``trial``,
``spaces``, ``samplers``, ``search`` and ``results``; the modules inside them (``_name.py``) are
private and may change between releases.
"""
from __future__ import annotations

import os

from spikeprune._lazy import lazy_names

# Idle OpenMP threads (torch's and numba's) spin by default; on a machine whose cores are busy
# with other work (Ray workers, a second job) every parallel region then waits for the scheduler,
# and training slows many times over (docs/DESIGN.md §8). PASSIVE must be set before torch loads its runtime;
# a value already in the environment wins. (Search trials with several CPUs of their own spin:
# ``search._worker.task_env``.)
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
    "SpikingBertConfig": "spikeprune.models", "CompressionConfig": "spikeprune.models",
    "SpikingBertForSequenceClassification": "spikeprune.models",
    "OpReport": "spikeprune.costs", "count_ops": "spikeprune.costs", "format_report": "spikeprune.costs",
    "AnnReference": "spikeprune.costs", "ann_reference": "spikeprune.costs", "format_ann": "spikeprune.costs",
    # prepare a base
    "prepare": "spikeprune.training", "PRESETS": "spikeprune.training",
    "Preset": "spikeprune.training", "override_preset": "spikeprune.training",
    # evaluate one config
    "BaseBundle": "spikeprune.trial", "run_trial": "spikeprune.trial",
    "TrialResult": "spikeprune.trial", "EarlyStop": "spikeprune.trial",
    # search
    "SearchSpace": "spikeprune.spaces", "SearchSettings": "spikeprune.search",
    "SAMPLERS": "spikeprune.spaces", "make_sampler": "spikeprune.search",
    "GuidedSampler": "spikeprune.samplers", "CostPredictor": "spikeprune.samplers",
    "SpikeStats": "spikeprune.samplers", "SensitivityProfile": "spikeprune.samplers",
    "compute_profile": "spikeprune.samplers",
    "run_search": "spikeprune.search", "open_storage": "spikeprune.search",
    "study_status": "spikeprune.search",
    # results
    "load_study": "spikeprune.results", "analyse_study": "spikeprune.results",
    "Analysis": "spikeprune.results", "find_baseline": "spikeprune.results",
    "hypervolume": "spikeprune.results",
    "write_report": "spikeprune.results",
    "trials_frame": "spikeprune.results", "write_trials": "spikeprune.results",
    "compare_fronts": "spikeprune.results",
    "select_trials": "spikeprune.results", "export_trial": "spikeprune.results",
    "ExportResult": "spikeprune.results",
}
__all__ = sorted(_API) + ["__version__"]


__getattr__, __dir__ = lazy_names(__name__, _API)
