"""Helpers several test modules share (fixtures live in conftest.py)."""
from __future__ import annotations

import socket
from typing import Any

import torch

from spikeprune.cli import main
from spikeprune.models import SpikingBertConfig, SpikingBertForSequenceClassification
from spikeprune.models._quantize import QUANTIZED_LINEARS


def run_cli(argv: list[str]) -> int:
    """The command's exit code, in this process (argparse's own errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed again, so free or briefly taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: ``tiny_model(**FIRING)``: the SpikingBERT family with 4 heads and FFN 32, weights × 3 so that every
#: population fires (pruning and quantization tests need spikes everywhere).
FIRING: dict[str, Any] = dict(family="spikingbert", heads=4, intermediate_sizes=32, gain=3.0)


def tiny_model(family: str = "converted", *, seed: int = 0, gain: float = 1.0,
               **changes: Any) -> SpikingBertForSequenceClassification:
    """A random spiking BERT small enough for hand-sized tests, in eval mode; the one factory of them.

    Two layers of width 16 (heads of 4), FFN 24, a vocabulary of 50; ``changes`` override any config
    field. The converted family runs T = 6 with 4 levels and reads [CLS]; its thresholds are drawn in
    [0.2, 0.6) per population (the encoder's is 0.5) and, with ``residual_thresholds="unit"``, its
    unit scales in [0.25, 1.75), so that units differ. The SpikingBERT family runs T = 4. ``gain``
    multiplies every encoder Linear's weights (3 makes every population of the SpikingBERT family fire).
    """
    torch.manual_seed(seed)
    settings: dict[str, Any] = dict(vocab_size=50, hidden_size=16, num_layers=2, head_dim=4, heads=2,
                                    intermediate_sizes=24, max_position_embeddings=16, family=family)
    settings |= dict(timesteps=6, levels=4, readout="cls") if family == "converted" else dict(timesteps=4)
    model = SpikingBertForSequenceClassification(SpikingBertConfig(**{**settings, **changes})).eval()
    with torch.no_grad():
        if family == "converted":
            model.encoder_threshold.fill_(0.5)
            for layer in model.layers:
                layer.thresholds.copy_(torch.rand(len(layer.thresholds)) * 0.4 + 0.2)
                if layer.unit_scales is not None:
                    layer.unit_scales.copy_(torch.rand(layer.unit_scales.shape) * 1.5 + 0.25)
            if model.encoder_scales is not None:
                model.encoder_scales.copy_(torch.rand(model.encoder_scales.shape) * 1.5 + 0.25)
        for layer in model.layers:
            for name in QUANTIZED_LINEARS:
                getattr(layer, name).weight.mul_(gain)
    return model
