"""The weights a training step sees at the widths the trained model will be evaluated at.

Elastic training and per-trial recovery both train float weights for a model that is then
quantized (``quantize_model``), so both run their forward pass on the quantized values, with
straight-through gradients to the float weights. Fitting a 2-, 4- or 8-bit scale by error costs
more than a forward pass, so those scales are refitted every ``refresh`` batches only; 1- and
1.58-bit scales are means, computed every time.
"""
from __future__ import annotations

from torch import Tensor, nn

from spikeprune.models._config import FLOAT_BITS
from spikeprune.models._quantize import QUANTIZED_LINEARS, grid_scales, quantize, quantize_with_scale


class GridWeights:
    """``weights(bits)``: the quantized Linear weights of a model whose layer l has ``bits[l]``,
    as a parameter dict for ``torch.func.functional_call`` (float layers are left out)."""

    def __init__(self, model: nn.Module, refresh: int) -> None:
        self.model = model
        self.refresh = refresh
        self.scales: dict[str, dict[float, Tensor]] = {}
        self.calls = 0

    def next_batch(self) -> None:
        """Refit the scales every ``refresh`` batches (and on the first)."""
        if self.calls % self.refresh == 0:
            self.scales.clear()
        self.calls += 1

    def weights(self, weight_bits: list[float]) -> dict[str, Tensor]:
        out = {}
        for l, bits in enumerate(weight_bits):
            if bits == FLOAT_BITS:
                continue
            for name in QUANTIZED_LINEARS:
                key = f"layers.{l}.{name}.weight"
                weight = self.model.get_parameter(key)
                if bits in (1.0, 1.58):
                    out[key] = weight + (quantize(weight.detach(), bits) - weight).detach()
                    continue
                if key not in self.scales:
                    self.scales[key] = grid_scales(weight)
                out[key] = quantize_with_scale(weight, self.scales[key][bits], bits)
        return out
