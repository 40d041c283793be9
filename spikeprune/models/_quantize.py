"""Per-layer weight quantization: evaluated as dequantized float weights, stored packed.

Only the encoder Linear weights of a layer (query, key, value, attn_out, intermediate, output) are
quantized, at that layer's ``weight_bits``; biases, LayerNorm, embeddings, pooler and classifier
stay float. Each tensor gets one float32 scale ``s`` and integer codes:

====  ==========================================  ================================================
bits  levels (× s)                                scale
====  ==========================================  ================================================
1     {-1, +1} (sign; w = 0 counts as +)          mean |w|
1.58  {-1, 0, +1}; 0 where |w| <= 0.7·mean |w|    mean |w| of the non-zero weights (TWN)
2     {-3/2, -1/2, +1/2, +3/2} (mid-rise)         least squared error over clipping ranges
4, 8  integers in [-n, n], n = 2^(b-1) - 1        max |w| / n
32    float, untouched
====  ==========================================  ================================================

Why 2 bits is mid-rise: a symmetric grid with a zero level has only {-1, 0, 1} at 2 bits, the
ternary levels again but with the poor scale max |w| (most weights round to 0). Four symmetric
levels use every code; with s = max|w|/1.5 the grid would be too coarse for bell-shaped weights
(worse than 1 bit), so s is the best of 128 clipping ranges (outer level 3s/2 = r·max|w| for
r = 1, 127/128, ... 1/128) by squared error. The largest weight always lands on ±3/2.

Every scale is rounded to 16 significant bits. Each level (an integer or half-integer of at most
127 in size, times s) is then exact in float32, and quantization is idempotent bit for bit:
quantize(quantize(w)) == quantize(w). That is what lets ``save_pretrained(packed=True)`` pack the weights of an
already quantized model and ``from_pretrained`` reload exactly them (_checkpoint.py).

Packed codes: unsigned, packed little-end first into bytes at 1 bit (1-bit), 2 bits
(1.58 and 2-bit: ternary uses 3 of the 4 values of a 2-bit field, matching ops.TERNARY_PACKED_BITS),
4 or 8 bits per weight. How they are laid out in a checkpoint is _checkpoint.py's business.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from spikeprune.errors import SpikepruneError

from spikeprune.models._config import FLOAT_BITS, SpikingBertConfig, check_bits


#: The Linear modules of an encoder layer whose weights are quantized.
QUANTIZED_LINEARS: tuple[str, ...] = ("query", "key", "value", "attn_out", "intermediate", "output")
#: level = (gain·code - offset)·scale for each width (see the table in the module docstring).
_LEVELS: dict[float, tuple[float, float]] = {1.0: (2.0, 1.0), 1.58: (1.0, 1.0), 2.0: (1.0, 1.5),
                                             4.0: (1.0, 7.0), 8.0: (1.0, 127.0)}
#: Packed field width in bits per weight.
_FIELD_BITS: dict[float, int] = {1.0: 1, 1.58: 2, 2.0: 2, 4.0: 4, 8.0: 8}
#: Clipping ranges the 2-bit scale is chosen from.
_CLIP_CANDIDATES = 128
#: Significant bits kept in a scale (levels up to 127·s stay exact in float32's 24 bits).
_SCALE_BITS = 16


def _round_scale(value: float) -> Tensor:
    """Round a positive scale to _SCALE_BITS significant bits (exactly, in float64)."""
    mantissa, exponent = math.frexp(value)
    return torch.tensor(math.ldexp(round(mantissa * 2**_SCALE_BITS) / 2**_SCALE_BITS, exponent),
                        dtype=torch.float32)


def _dequantize(codes: Tensor, scale: Tensor, bits: float) -> Tensor:
    gain, offset = _LEVELS[bits]
    return (codes.to(torch.float32) * gain - offset) * scale


def _step(scale: Tensor) -> Tensor:
    """The divisor that maps weights onto the grid; an all-zero tensor (scale 0) maps anywhere."""
    return scale if scale > 0 else torch.ones_like(scale)


def _mid_rise_codes(w: Tensor, scale: Tensor) -> Tensor:
    """Nearest of the four 2-bit levels (c - 3/2)·s, c = 0..3; bin edges at -s, 0, s."""
    return torch.clamp(torch.floor(w / _step(scale)) + 2, 0, 3).to(torch.uint8)


def _fit_mid_rise(magnitude: Tensor, largest: float) -> Tensor:
    """The 2-bit scale with the least squared error among the clipping ranges r·max|w|.

    Magnitudes below s go to s/2, the rest to 3s/2, so each candidate's error follows from the
    count, sum and sum of squares of the magnitudes below it: one bucketing pass for all of them.
    On weights already on a 2-bit grid, r = 1 gives that grid back with zero error while every
    smaller r clips the largest weight, which keeps quantization idempotent.
    """
    scales = torch.stack([_round_scale(largest * k / _CLIP_CANDIDATES / 1.5)
                          for k in range(1, _CLIP_CANDIDATES + 1)])          # ascending
    s = scales.to(torch.float64)
    a = magnitude.to(torch.float64)
    bucket = torch.bucketize(a, s, right=True)                                  # candidates <= |w|

    def below(weights: Tensor | None) -> Tensor:
        """Per candidate, the count (or weighted sum) of the magnitudes below it."""
        return torch.bincount(bucket, weights, minlength=_CLIP_CANDIDATES + 1).cumsum(0)[:-1].to(torch.float64)

    count, sum1, sum2 = below(None), below(a), below(a * a)
    n, total1, total2 = a.numel(), a.sum(), (a * a).sum()
    error = (sum2 - s * sum1 + 0.25 * s * s * count
             + (total2 - sum2) - 3 * s * (total1 - sum1) + 2.25 * s * s * (n - count))
    return scales[_CLIP_CANDIDATES - 1 - int(torch.argmin(error.flip(0)))]    # ties: the largest r


def _codes(w: Tensor, bits: float) -> tuple[Tensor, Tensor]:
    """Unsigned integer codes and the float32 scale of ``w`` at ``bits`` (< 32)."""
    w = w.detach().to(torch.float32)
    magnitude = w.abs().to(torch.float64)
    if bits == 1.0:
        return (w >= 0).to(torch.uint8), _round_scale(magnitude.mean().item())
    if bits == 1.58:
        keep = magnitude > 0.7 * magnitude.mean()
        scale = _round_scale(magnitude[keep].mean().item() if keep.any() else 0.0)
        return (torch.sign(w) * keep + 1).to(torch.uint8), scale
    largest = magnitude.max().item()
    if bits == 2.0:
        scale = _fit_mid_rise(w.abs().flatten(), largest)
        return _mid_rise_codes(w, scale), scale
    n = _LEVELS[bits][1]
    scale = _round_scale(largest / n)
    return (torch.clamp(torch.round(w / _step(scale)), -n, n) + n).to(torch.uint8), scale


def quantize(w: Tensor, bits: float) -> Tensor:
    """The dequantized (float) weights ``w`` takes at ``bits``; 32 returns ``w`` unchanged."""
    bits = check_bits(bits)
    if bits == FLOAT_BITS:
        return w
    codes, scale = _codes(w, bits)
    return _dequantize(codes, scale, bits).to(w.dtype)


def quantization_scale(w: Tensor, bits: float) -> Tensor:
    """The per-tensor scale ``quantize`` uses (for error bounds and reports)."""
    bits = check_bits(bits)
    if bits == FLOAT_BITS:
        raise SpikepruneError("32-bit weights are float and have no quantization scale; pick 1, 1.58, 2, 4 or 8")
    return _codes(w, bits)[1]


def pack(w: Tensor, bits: float) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Quantize ``w`` and pack its codes: (uint8 bytes, float32 scale, shape)."""
    bits = check_bits(bits)
    if bits == FLOAT_BITS:
        raise SpikepruneError("32-bit weights stay float and are not packed; pick 1, 1.58, 2, 4 or 8")
    codes, scale = _codes(w, bits)
    field = _FIELD_BITS[bits]
    per_byte = 8 // field
    flat = codes.reshape(-1).to(torch.int32)
    flat = F.pad(flat, (0, (-flat.numel()) % per_byte)).view(-1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int32) * field
    return (flat << shifts).sum(dim=1).to(torch.uint8), scale, tuple(w.shape)


def unpack(packed: Tensor, scale: Tensor, shape: tuple[int, ...], bits: float) -> Tensor:
    """Exact inverse of ``pack``: the dequantized float32 weights, equal to ``quantize(w, bits)``."""
    bits = check_bits(bits)
    if bits == FLOAT_BITS:
        raise SpikepruneError("32-bit weights are stored as float, not packed; nothing to unpack")
    field = _FIELD_BITS[bits]
    per_byte = 8 // field
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != -(-numel // per_byte):
        raise SpikepruneError(f"packed {bits:g}-bit weights of shape {tuple(shape)} need {-(-numel // per_byte)} "
                              f"uint8 bytes, got {packed.numel()} {packed.dtype}; the checkpoint's config and "
                              f"weights disagree, re-export it")
    shifts = torch.arange(per_byte, dtype=torch.int32) * field
    codes = (packed.to(torch.int32)[:, None] >> shifts) & ((1 << field) - 1)
    return _dequantize(codes.reshape(-1)[:numel].reshape(shape), scale.to(torch.float32), bits)


# ------------------------------------------------------------------------------------ models
def quantized_weights(config: SpikingBertConfig) -> Iterator[tuple[str, float]]:
    """(module name, bits) of every Linear the config quantizes, e.g. ("layers.0.query", 4.0)."""
    for l, bits in enumerate(config.weight_bits):
        if bits != FLOAT_BITS:
            for name in QUANTIZED_LINEARS:
                yield f"layers.{l}.{name}", bits
