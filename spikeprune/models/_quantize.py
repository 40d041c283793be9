"""Per-layer weight quantization: evaluated as dequantized float weights, stored packed.

Only the encoder Linear weights of a layer (query, key, value, attn_out, intermediate, output) are
quantized, at that layer's ``weight_bits``; biases, LayerNorm, embeddings, pooler and classifier
stay float. Every output channel (row of a Linear weight) gets its own float32 scale ``s`` and
integer codes, so one large row does not coarsen the grid of all the others:

====  ==========================================  ================================================
bits  levels (× s)                                scale of a channel
====  ==========================================  ================================================
1     {-1, +1} (sign; w = 0 counts as +)          mean |w| (the least-squares scale of sign(w))
1.58  {-1, 0, +1}; 0 where |w| <= 0.7·mean |w|    mean |w| of the non-zero weights (TWN)
2     {-2, -1, 0, +1} (two's complement)          least squared error, see below
4, 8  integers in [-n, n], n = 2^(b-1) - 1        least squared error, see below
32    float, untouched
====  ==========================================  ================================================

Scales by error: a channel's candidates are the clipping ranges r·max|w| (the outer level on
the side of the largest weight, r = 1, 63/64, ... 1/64, searched coarse to fine) and the scale the next narrower width
chose (2 bits: the ternary one; 4: the 2-bit one; 8: the 4-bit one); the one with the least
squared error wins (ties: the first, r = 1). Each grid holds the next narrower one's levels at
the same scale ({-1, 0, 1} ⊂ {-2..1} ⊂ {-7..7} ⊂ {-127..127}) and codes are the nearest level, so
every width's error is at most the next narrower one's, channel by channel. A grid set by max |w|
alone leaves bell-shaped weights with a few outliers mostly on the 0 and ±1 codes (4-bit was
worse than 2-bit that way); a 2-bit grid without a zero level (±1/2, ±3/2) was worse than ternary.

Every scale is rounded to 16 significant bits. Each level (an integer or half-integer of at most
127 in size, times s) is then exact in float32, and quantization is idempotent bit for bit:
quantize(quantize(w)) == quantize(w) (on grid weights r = 1 has zero error and every smaller r
clips the largest weight). That is what lets ``save_pretrained(packed=True)`` pack the weights of
an already quantized model and ``from_pretrained`` reload exactly them (_checkpoint.py).

Packed codes: unsigned, packed little-end first into bytes at 1 bit (1-bit), 2 bits
(1.58 and 2-bit: ternary uses 3 of the 4 values of a 2-bit field, matching ops.TERNARY_PACKED_BITS),
4 or 8 bits per weight; the scales are a float32 vector, one per output channel (dim 0; a 1-d
tensor is one channel). How they are laid out in a checkpoint is _checkpoint.py's business.
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
_LEVELS: dict[float, tuple[float, float]] = {1.0: (2.0, 1.0), 1.58: (1.0, 1.0), 2.0: (1.0, 2.0),
                                             4.0: (1.0, 7.0), 8.0: (1.0, 127.0)}
#: Packed field width in bits per weight.
_FIELD_BITS: dict[float, int] = {1.0: 1, 1.58: 2, 2.0: 2, 4.0: 4, 8.0: 8}
#: Clipping ranges a 2-, 4- or 8-bit channel scale is chosen from.
_CLIP_CANDIDATES = 64
#: Significant bits kept in a scale (levels up to 127·s stay exact in float32's 24 bits).
_SCALE_BITS = 16


def channels(shape: tuple[int, ...]) -> int:
    """Output channels (scales) of a weight of this shape: its rows, or 1 for a 1-d tensor."""
    return shape[0] if len(shape) >= 2 else 1


def _round_scale(value: Tensor) -> Tensor:
    """Round positive scales to _SCALE_BITS significant bits (exactly, in float64), as float32."""
    mantissa, exponent = torch.frexp(value.to(torch.float64))
    return torch.ldexp(torch.round(mantissa * 2**_SCALE_BITS) / 2**_SCALE_BITS, exponent).to(torch.float32)


def _dequantize(codes: Tensor, scale: Tensor, bits: float) -> Tensor:
    """Float levels of codes [C, K] with per-channel scales [C]."""
    gain, offset = _LEVELS[bits]
    return (codes.to(torch.float32) * gain - offset) * scale[:, None]


#: The integer levels (lowest, highest) of the widths whose scale is fitted by error.
_GRID: dict[float, tuple[int, int]] = {2.0: (-2, 1), 4.0: (-7, 7), 8.0: (-127, 127)}
#: The next narrower width, whose chosen scale is one more candidate.
_NARROWER: dict[float, float] = {2.0: 1.58, 4.0: 2.0, 8.0: 4.0}


def _grid_codes(w: Tensor, scale: Tensor, bits: float) -> Tensor:
    """Nearest codes of rows ``w`` [C, K] on the grid of per-channel ``scale`` [C] (2, 4, 8 bits).
    An all-zero channel (scale 0) maps anywhere: its divisor is 1."""
    lo, hi = _GRID[bits]
    step = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    return (torch.clamp(torch.round(w / step), lo, hi) - lo).to(torch.uint8)


def _fit_scale(w: Tensor, bits: float, narrower: Tensor) -> Tensor:
    """Per channel of ``w`` [C, K], the grid scale with the least squared error among the
    clipping ranges and ``narrower``, the next narrower width's scale (module docstring). The ranges are
    searched coarse to fine: r = k/64 for k = 64, 56, ... 8, then the 14 neighbours of the best."""
    lo, hi = _GRID[bits]
    reference = torch.maximum(-w.amin(dim=1) / -lo, w.amax(dim=1) / hi).clamp(min=0).to(torch.float64)
    best_scale = torch.zeros(w.shape[0], dtype=torch.float32)
    best_error = torch.full((w.shape[0],), math.inf, dtype=torch.float64)
    best_k = torch.full((w.shape[0],), _CLIP_CANDIDATES, dtype=torch.int64)

    def consider(scale: Tensor, k: Tensor | None) -> None:
        nonlocal best_scale, best_error, best_k
        step = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
        levels = torch.clamp(torch.round(w / step), lo, hi) * scale[:, None]   # = the dequantized codes
        error = (levels - w).square().sum(dim=1, dtype=torch.float64)
        better = error < best_error                            # ties keep the earlier candidate
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, scale, best_scale)
        if k is not None:
            best_k = torch.where(better, k, best_k)

    coarse = _CLIP_CANDIDATES // 8
    for k in range(_CLIP_CANDIDATES, 0, -coarse):               # r = 1 first
        consider(_round_scale(reference * k / _CLIP_CANDIDATES), torch.full_like(best_k, k))
    centre = best_k.clone()
    for offset in [sign * d for d in range(1, coarse) for sign in (1, -1)]:
        k = (centre + offset).clamp(1, _CLIP_CANDIDATES)
        consider(_round_scale(reference * k / _CLIP_CANDIDATES), k)
    consider(narrower, None)
    return best_scale


def _codes(w: Tensor, bits: float) -> tuple[Tensor, Tensor]:
    """Unsigned integer codes [C, K] and the float32 per-channel scales [C] of ``w`` at ``bits`` (< 32)."""
    w = w.detach().to(torch.float32).reshape(channels(tuple(w.shape)), -1)
    magnitude = w.abs().to(torch.float64)
    if bits == 1.0:
        return (w >= 0).to(torch.uint8), _round_scale(magnitude.mean(dim=1))
    if bits == 1.58:
        keep = magnitude > 0.7 * magnitude.mean(dim=1, keepdim=True)
        kept = keep.sum(dim=1)
        scale = _round_scale(torch.where(kept > 0, (magnitude * keep).sum(dim=1) / kept.clamp(min=1), 0.0))
        return (torch.sign(w) * keep + 1).to(torch.uint8), scale
    scale = _fit_scale(w, bits, _codes(w, _NARROWER[bits])[1])
    return _grid_codes(w, scale, bits), scale


def quantize(w: Tensor, bits: float) -> Tensor:
    """The dequantized (float) weights ``w`` takes at ``bits``; 32 returns ``w`` unchanged."""
    bits = check_bits(bits)
    if bits == FLOAT_BITS:
        return w
    codes, scale = _codes(w, bits)
    return _dequantize(codes, scale, bits).reshape(w.shape).to(w.dtype)


def quantize_with_scale(w: Tensor, scale: Tensor, bits: float) -> Tensor:
    """``w`` on the grid of given per-channel scales (2, 4 or 8 bits), with straight-through
    gradients: how training sees weights whose scales it fitted a few steps ago, since fitting
    them (``quantization_scale``) costs far more than a forward pass."""
    if bits not in _GRID:
        raise SpikepruneError(f"training quantizes weights to 2, 4 or 8 bits, not {bits:g}")
    lo, hi = _GRID[bits]
    rows = w.reshape(channels(tuple(w.shape)), -1)
    step = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    levels = torch.clamp(torch.round(rows.detach() / step), lo, hi) * scale[:, None]
    return (rows + (levels - rows).detach()).reshape(w.shape)


def grid_scales(w: Tensor) -> dict[float, Tensor]:
    """The per-channel scales ``quantize`` uses at 2, 4 and 8 bits, fitted in one pass down the
    chain of narrower widths (``quantization_scale`` at 8 bits fits 4 and 2 on its way too)."""
    rows = w.detach().to(torch.float32).reshape(channels(tuple(w.shape)), -1)
    scales, narrower = {}, _codes(rows, 1.58)[1]
    for bits in (2.0, 4.0, 8.0):
        scales[bits] = narrower = _fit_scale(rows, bits, narrower)
    return scales


def quantization_scale(w: Tensor, bits: float) -> Tensor:
    """The per-channel scales [C] ``quantize`` uses (for error bounds and reports)."""
    bits = check_bits(bits)
    if bits == FLOAT_BITS:
        raise SpikepruneError("32-bit weights are float and have no quantization scale; pick 1, 1.58, 2, 4 or 8")
    return _codes(w, bits)[1]


def pack(w: Tensor, bits: float) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Quantize ``w`` and pack its codes: (uint8 bytes, float32 per-channel scales [C], shape)."""
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
    rows = channels(tuple(shape))
    if scale.dim() != 1 or scale.numel() != rows:
        raise SpikepruneError(f"packed {bits:g}-bit weights of shape {tuple(shape)} need {rows} per-channel "
                              f"scales, got shape {tuple(scale.shape)}; re-export the model")
    shifts = torch.arange(per_byte, dtype=torch.int32) * field
    codes = (packed.to(torch.int32)[:, None] >> shifts) & ((1 << field) - 1)
    codes = codes.reshape(-1)[:numel].reshape(rows, -1)
    return _dequantize(codes, scale.to(torch.float32), bits).reshape(shape)


# ------------------------------------------------------------------------------------ models
def quantized_weights(config: SpikingBertConfig) -> Iterator[tuple[str, float]]:
    """(module name, bits) of every Linear the config quantizes, e.g. ("layers.0.query", 4.0)."""
    for l, bits in enumerate(config.weight_bits):
        if bits != FLOAT_BITS:
            for name in QUANTIZED_LINEARS:
                yield f"layers.{l}.{name}", bits
