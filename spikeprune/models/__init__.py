"""The spiking BERT: its config and the compression config, the model in two families,
the saved format, compression operators (pruning, timesteps, quantization) and evaluation."""
from spikeprune._lazy import lazy_names

#: Public name -> the private module that defines it.
_API: dict[str, str] = {
    "SpikingBertConfig": "spikeprune.models._config",
    "CompressionConfig": "spikeprune.models._config",
    "BOUNDARY_RULES": "spikeprune.models._config",
    "SUPPORTED_BITS": "spikeprune.models._config",
    "SpikingBertForSequenceClassification": "spikeprune.models._model",
    "SpikingOutput": "spikeprune.models._model",
    "SimRecord": "spikeprune.models._record",
    "FAMILIES": "spikeprune.models._families",
    "Family": "spikeprune.models._families",
    "prune": "spikeprune.models._compress",
    "set_timesteps": "spikeprune.models._compress",
    "importance_shapes": "spikeprune.models._compress",
    "quantize_model": "spikeprune.models._compress",
    "evaluate_model": "spikeprune.models._evaluation",
    "Evaluation": "spikeprune.models._evaluation",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
