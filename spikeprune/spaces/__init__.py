"""Search spaces: the YAML schema of the knobs, objectives and constraints, and the shipped presets."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "SearchSpace": "spikeprune.spaces._schema",
    "preset_names": "spikeprune.spaces._schema",
    "SAMPLERS": "spikeprune.spaces._knobs",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
