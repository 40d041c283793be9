"""Results of a search: the Pareto front and hypervolume, the HTML report and its plots, trial
tables and export of configs and checkpoints."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "load_study": "spikeprune.results._pareto",
    "analyse_study": "spikeprune.results._pareto",
    "Analysis": "spikeprune.results._pareto",
    "find_baseline": "spikeprune.results._pareto",
    "hypervolume": "spikeprune.results._pareto",
    "baseline_trial": "spikeprune.results._pareto",
    "front_hypervolume": "spikeprune.results._pareto",
    "is_candidate": "spikeprune.results._pareto",
    "is_duplicate": "spikeprune.results._pareto",
    "write_report": "spikeprune.results._report",
    "write_images": "spikeprune.results._report",
    "trials_frame": "spikeprune.results._tables",
    "write_trials": "spikeprune.results._tables",
    "compare_fronts": "spikeprune.results._tables",
    "select_trials": "spikeprune.results._export",
    "export_trial": "spikeprune.results._export",
    "ExportResult": "spikeprune.results._export",
    "page": "spikeprune.results._plots",
    "figure_div": "spikeprune.results._plots",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
