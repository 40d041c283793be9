"""Spiking neurons: small modules with explicit, resettable state, single-step and multi-step.

``IFNeuron`` is the binary integrate-and-fire population of the SpikingBERT family (_spiking.py),
with a numba kernel for a whole train on the CPU; ``SignedIFNeuron`` the signed one of the
converted family (_converted.py).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor, nn


class IFNeuron(nn.Module):
    """Integrate-and-fire population with soft reset: u += I; s = [u >= θ]; u -= θ s; u *= λ.

    The membrane potential ``u`` is explicit state: ``reset()`` clears it, ``step`` advances one
    timestep, ``run`` advances a whole train (time on dim 0) from a fresh state.
    """

    def __init__(self, threshold: float = 1.0, leak: float = 1.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.leak = leak
        self.u: Tensor | None = None

    def reset(self) -> None:
        self.u = None

    def step(self, current: Tensor) -> Tensor:
        u = current if self.u is None else self.u + current
        spikes = (u >= self.threshold).to(current.dtype)
        u = u - self.threshold * spikes
        self.u = u * self.leak if self.leak != 1.0 else u
        return spikes

    def run(self, currents: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Spike train for currents [T, ..., D] from a fresh state; ``token_mask`` ([..., 1], 0 at
        padding) silences padded positions so they neither spike nor count."""
        self.reset()
        if currents.device.type == "cpu" and currents.dtype == torch.float32 and not currents.requires_grad:
            width = currents.shape[-1]
            flat = currents.detach().reshape(currents.shape[0], -1).numpy()
            rows = (np.ones(flat.shape[1] // width, dtype=np.bool_) if token_mask is None else
                    token_mask.expand(*currents.shape[1:-1], 1).reshape(-1).numpy().astype(np.bool_))
            spikes = _if_run_cpu(flat, rows, width, np.float32(self.threshold), np.float32(self.leak))
            return torch.from_numpy(spikes).view(currents.shape)
        out = torch.stack([self.step(c) for c in currents])
        self.reset()
        return out if token_mask is None else out * token_mask


#: Neurons per block of the IF kernel: a block's membrane potentials stay in cache while the
#: kernel walks the train in time order, reading each timestep's currents contiguously.
_IF_BLOCK = 4096


@numba.njit(parallel=True, cache=True)
def _if_run_cpu(currents: np.ndarray, rows: np.ndarray, width: int, threshold: np.float32,
                leak: np.float32) -> np.ndarray:
    """IFNeuron.step over a whole train [T, N] in one pass, blocks of neurons in parallel.

    The arithmetic is step()'s, operation for operation in float32, so the spikes are identical;
    it only removes the per-timestep tensor launches that made time-batching pointless on CPU.
    Neuron i belongs to row i // width; rows marked False (padding) stay silent.
    """
    steps, n = currents.shape
    out = np.zeros((steps, n), dtype=np.float32)
    for block in numba.prange((n + _IF_BLOCK - 1) // _IF_BLOCK):
        lo = block * _IF_BLOCK
        hi = min(n, lo + _IF_BLOCK)
        u = np.zeros(hi - lo, dtype=np.float32)
        for t in range(steps):
            for i in range(lo, hi):
                if not rows[i // width]:
                    continue
                v = currents[t, i] if t == 0 else u[i - lo] + currents[t, i]
                if v >= threshold:
                    out[t, i] = 1.0
                    v = v - threshold
                if leak != 1.0:
                    v = v * leak
                u[i - lo] = v
    return out


class SignedIFNeuron(nn.Module):
    """A population of signed integrate-and-fire neurons with threshold θ and levels [-L, L].

    State (explicit, cleared by ``reset``): the membrane ``u`` (starting at θ/2) and the running
    spike count. ``step`` advances one timestep; ``run`` a whole train from a fresh state.
    """

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.u: Tensor | None = None
        self.count: Tensor | None = None

    def reset(self) -> None:
        self.u = self.count = None

    def step(self, current: Tensor, theta: Tensor) -> Tensor:
        if self.u is None:
            self.u = torch.full_like(current, 0.5) * theta
            self.count = torch.zeros_like(current)
        u = self.u + current
        up = (u >= theta) & (self.count < self.levels)
        down = (u < 0) & (self.count > -self.levels)
        spikes = up.to(current.dtype) - down.to(current.dtype)
        self.u = u - spikes * theta
        self.count = self.count + spikes
        return spikes

    def advance(self, currents: Tensor, theta: Tensor) -> Tensor:
        """Spikes (-1, 0, +1) for currents [t, ...], continuing from the current state."""
        return torch.stack([self.step(c, theta) for c in currents])
