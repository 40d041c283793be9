"""Results of a search: a study's analysis (its front, reference point and hypervolume history, by
the rules of ``spikeprune.pareto``), the HTML report and its plots, trial tables and export of
configs and checkpoints."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "analyse_study": "spikeprune.results._analysis",
    "Analysis": "spikeprune.results._analysis",
    "write_report": "spikeprune.results._report",
    "write_images": "spikeprune.results._report",
    "trials_frame": "spikeprune.results._tables",
    "write_trials": "spikeprune.results._tables",
    "read_trials": "spikeprune.results._tables",
    "compare_fronts": "spikeprune.results._compare",
    "cheapest_within": "spikeprune.results._compare",
    "Relative": "spikeprune.results._compare",
    "select_trials": "spikeprune.results._export",
    "export_trial": "spikeprune.results._export",
    "ExportResult": "spikeprune.results._export",
    "page": "spikeprune.results._plots",
    "figure_div": "spikeprune.results._plots",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
