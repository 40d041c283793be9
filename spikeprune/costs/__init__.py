"""What a network costs, counted exactly from its spikes: synaptic operations, float operations by
kind, energy under a named or user-supplied model, latency and size; and what its ANN teacher and
integer twin cost on the same tokens."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "OpReport": "spikeprune.costs._ops",
    "count_ops": "spikeprune.costs._ops",
    "format_report": "spikeprune.costs._ops",
    "EnergyModel": "spikeprune.costs._ops",
    "ENERGY_PRESETS": "spikeprune.costs._ops",
    "resolve_energy": "spikeprune.costs._ops",
    "size_bits": "spikeprune.costs._ops",
    "count_parameters": "spikeprune.costs._ops",
    "AnnReference": "spikeprune.costs._ann",
    "AnnNetwork": "spikeprune.costs._ann",
    "ANN_NETWORKS": "spikeprune.costs._ann",
    "ann_ops": "spikeprune.costs._ann",
    "ann_reference": "spikeprune.costs._ann",
    "format_ann": "spikeprune.costs._ann",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
