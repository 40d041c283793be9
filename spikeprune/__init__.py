"""spikeprune: compress spiking BERT models by a multi-objective search over heads, FFN neurons,
timesteps and weight bit widths per layer.

The workflow, each step one call (the ``spikeprune`` command calls exactly these)::

    import spikeprune as sp

    base = sp.prepare("sst2", "../shared/glue", "runs", preset="quick")    # teacher + spiking student
    result = sp.run_trial(sp.BaseBundle.load(base), sp.CompressionConfig(heads=6, timesteps=2))
    study = sp.run_search(sp.SearchSettings(prepared=base, space="joint", study_name="s1", n_trials=40)).study
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

from spikeprune._lazy import lazy_names

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_API: dict[str, str] = {
    # errors, objectives and stored records
    "SpikepruneError": "spikeprune.errors",
    "Objective": "spikeprune.objectives", "OBJECTIVES": "spikeprune.objectives",
    "dominates": "spikeprune.objectives",
    "hypervolume": "spikeprune.pareto", "find_baseline": "spikeprune.pareto",
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
    "run_search": "spikeprune.search", "SearchResult": "spikeprune.search", "open_storage": "spikeprune.search",
    "load_study": "spikeprune.search",
    "study_status": "spikeprune.search",
    # results
    "analyse_study": "spikeprune.results", "Analysis": "spikeprune.results",
    "write_report": "spikeprune.results",
    "trials_frame": "spikeprune.results", "write_trials": "spikeprune.results",
    "compare_fronts": "spikeprune.results", "cheapest_within": "spikeprune.results",
    "select_trials": "spikeprune.results", "export_trial": "spikeprune.results",
    "ExportResult": "spikeprune.results",
}
__all__ = sorted(_API) + ["__version__"]


__getattr__, __dir__ = lazy_names(__name__, _API)
