"""Samplers that know the model: the guided sampler, the cost predictor it uses (from the base's
spike statistics) and the sensitivity profile it learns from."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "GuidedSampler": "spikeprune.samplers._guided",
    "CostPredictor": "spikeprune.samplers._cost_model",
    "SpikeStats": "spikeprune.samplers._stats",
    "SensitivityProfile": "spikeprune.samplers._sensitivity",
    "compute_profile": "spikeprune.samplers._sensitivity",
    "dense_values": "spikeprune.samplers._sensitivity",
    "flip_rate": "spikeprune.samplers._sensitivity",
    "TIMESTEP_POWER": "spikeprune.samplers._sensitivity",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
