"""The distributed search: settings, Optuna storage (journal or database), the Ray connection,
the driver loop and its workers, progress and storage checks."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "SearchSettings": "spikeprune.search._settings",
    "make_sampler": "spikeprune.search._settings",
    "run_search": "spikeprune.search._run",
    "SearchResult": "spikeprune.search._run",
    "RunStats": "spikeprune.search._driver",
    "open_storage": "spikeprune.search._storage",
    "load_study": "spikeprune.search._study",
    "default_storage": "spikeprune.search._storage",
    "study_status": "spikeprune.search._progress",
    "check_storage": "spikeprune.search._check",
    "FlockLock": "spikeprune.search._storage",
    "ray_session": "spikeprune.search._cluster",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
