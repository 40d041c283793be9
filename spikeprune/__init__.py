"""spikeprune: search the spatio-temporal-quantization space of spiking BERT models."""
import os

# Idle OpenMP threads (torch's and numba's) spin by default; on a machine whose cores are busy
# with other work (Ray workers, a second job) that made one distillation step of the quick
# student take 48 s instead of 6 s here. PASSIVE must be set before torch loads its runtime;
# a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from spikeprune.models.config import CompressionConfig, SpikingBertConfig
from spikeprune.models.errors import SpikepruneError
from spikeprune.models.spiking import SpikingBertForSequenceClassification

__all__ = ["CompressionConfig", "SpikingBertConfig", "SpikepruneError", "SpikingBertForSequenceClassification"]
__version__ = "0.1.0"
