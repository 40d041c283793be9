"""spikeprune: search the spatio-temporal-quantization space of spiking BERT models."""
from spikeprune.models.config import CompressionConfig, SpikingBertConfig
from spikeprune.models.errors import SpikepruneError
from spikeprune.models.spiking import SpikingBertForSequenceClassification

__all__ = ["CompressionConfig", "SpikingBertConfig", "SpikepruneError", "SpikingBertForSequenceClassification"]
__version__ = "0.1.0"
