"""GLUE data and metrics: the nine tasks read from the classic folder layout (or the hub), their
tokenised batches, and the official metrics."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "TASKS": "spikeprune.data._glue",
    "TaskSpec": "spikeprune.data._glue",
    "GlueSplit": "spikeprune.data._glue",
    "get_task": "spikeprune.data._glue",
    "load_glue": "spikeprune.data._glue",
    "encode": "spikeprune.data._glue",
    "batches": "spikeprune.data._glue",
    "compute_metrics": "spikeprune.data._metrics",
    "main_metric": "spikeprune.data._metrics",
    "bootstrap_ci": "spikeprune.data._metrics",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
