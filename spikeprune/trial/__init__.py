"""One trial: the prepared base as trials see it, and ``run_trial``, which compresses,
evaluates and counts one compression config."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "BaseBundle": "spikeprune.trial._base",
    "run_trial": "spikeprune.trial._run",
    "TrialResult": "spikeprune.trial._run",
    "EarlyStop": "spikeprune.trial._run",
    "build_compressed": "spikeprune.trial._run",
    "measure": "spikeprune.trial._run",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
