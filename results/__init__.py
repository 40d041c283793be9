"""Results of a search: Pareto front, hypervolume, the HTML report, trial tables and export."""
from .export import ExportResult, export_trial, select_trials, trial_dir
from .pareto import (Analysis, NoiseRule, ParetoSplit, Reference, analyse_study, hypervolume,
                     hypervolume_history, load_study, reference_from_baseline, split_trials, study_objectives)
from .report import write_report
from .tables import compare_fronts, read_trials, trials_frame, write_trials

__all__ = [
    "Analysis", "ExportResult", "NoiseRule", "ParetoSplit", "Reference", "analyse_study", "compare_fronts",
    "export_trial", "hypervolume", "hypervolume_history", "load_study", "read_trials", "reference_from_baseline",
    "select_trials", "split_trials", "study_objectives", "trial_dir", "trials_frame", "write_report", "write_trials",
]
