"""Making a prepared base: presets, teacher fine-tuning, conversion to the spiking student,
distillation, recovery, and the cached ``prepare`` pipeline."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "prepare": "spikeprune.training._prepare",
    "PRESETS": "spikeprune.training._presets",
    "Preset": "spikeprune.training._presets",
    "override_preset": "spikeprune.training._presets",
    "build_student": "spikeprune.training._convert",
    "relevel": "spikeprune.training._convert",
    "elastic_from_converted": "spikeprune.training._convert",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
