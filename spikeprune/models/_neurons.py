"""Spiking neurons: small modules with explicit, resettable state, single-step and multi-step.

Every population is a ``Neuron``: ``step`` advances one timestep, ``advance`` a chunk of steps
from the current state, ``run`` a whole train from a fresh state. ``IFNeuron`` is the binary
integrate-and-fire population of the SpikingBERT family (``_spikingbert.py``), with a numba loop
for a whole train on the CPU; ``SignedIFNeuron`` the signed one of the converted family
(``_converted.py``).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor, nn


Threshold = Tensor | float


class Neuron(nn.Module):
    """A population of spiking neurons with explicit state, cleared by ``reset``.

    Time is dim 0 of a train. ``theta`` is the firing threshold: a population whose θ is trained
    (the converted family's) gets it at every call; one with a fixed θ may keep its own.
    """

    def reset(self) -> None:
        raise NotImplementedError

    def step(self, current: Tensor, theta: Threshold | None = None) -> Tensor:
        """Spikes of one timestep for ``current`` [..., D], updating the state."""
        raise NotImplementedError

    def advance(self, currents: Tensor, theta: Threshold | None = None) -> Tensor:
        """Spikes for a chunk of steps [t, ..., D], continuing from the current state."""
        return torch.stack([self.step(c, theta) for c in currents])

    def run(self, currents: Tensor, theta: Threshold | None = None, *, token_mask: Tensor | None = None) -> Tensor:
        """A whole train [T, ..., D] from a fresh state; ``token_mask`` ([..., 1], 0 at padding)
        silences padded positions so they neither spike nor count."""
        self.reset()
        out = self.advance(currents, theta)
        self.reset()
        return out if token_mask is None else out * token_mask


class IFNeuron(Neuron):
    """Integrate-and-fire population with soft reset: u += I; s = [u >= θ]; u -= θ s; u *= λ."""

    def __init__(self, threshold: float = 1.0, leak: float = 1.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.leak = leak
        self.u: Tensor | None = None

    def reset(self) -> None:
        self.u = None

    def step(self, current: Tensor, theta: Threshold | None = None) -> Tensor:
        theta = self.threshold if theta is None else theta
        u = current if self.u is None else self.u + current
        spikes = (u >= theta).to(current.dtype)
        u = u - theta * spikes
        self.u = u * self.leak if self.leak != 1.0 else u
        return spikes

    def run(self, currents: Tensor, theta: Threshold | None = None, *, token_mask: Tensor | None = None) -> Tensor:
        """As ``Neuron.run``; a float32 train on the CPU goes through one numba loop instead of a
        tensor launch per step (same arithmetic, identical spikes)."""
        if currents.device.type == "cpu" and currents.dtype == torch.float32 and not currents.requires_grad:
            width = currents.shape[-1]
            flat = currents.detach().reshape(currents.shape[0], -1).numpy()
            rows = (np.ones(flat.shape[1] // width, dtype=np.bool_) if token_mask is None else
                    token_mask.expand(*currents.shape[1:-1], 1).reshape(-1).numpy().astype(np.bool_))
            threshold = np.float32(self.threshold if theta is None else theta)
            spikes = _if_run_cpu(flat, rows, width, threshold, np.float32(self.leak))
            self.reset()
            return torch.from_numpy(spikes).view(currents.shape)
        return super().run(currents, theta, token_mask=token_mask)


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


class SignedIFNeuron(Neuron):
    """A population of signed integrate-and-fire neurons with threshold θ and levels [-L, L].

    State: the membrane ``u`` (starting at θ/2) and the running spike count. θ is trained, so it
    is given at every call.
    """

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.u: Tensor | None = None
        self.count: Tensor | None = None

    def reset(self) -> None:
        self.u = self.count = None

    def step(self, current: Tensor, theta: Threshold | None = None) -> Tensor:
        if theta is None:
            raise ValueError("a signed IF population needs its θ at every step")
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


class ElasticIFNeuron(Neuron):
    """Signed integrate-and-fire neurons whose membrane is kept in units of θ, starting at 1/2.

    A step adds current/θ, fires +1 when the membrane reaches 1 and -1 when it is below 0, and
    moves it by the spike. Fed its whole input at the first step and run T steps, a neuron sends
    clamp(floor(I/θ + 1/2), -T, T) spikes, all of one sign: one spike per step bounds the count
    by T, no counter needed. In θ units every update after the first is exact in float32 (adding
    or removing 1 from a membrane of at least 1, or from one below 0 reached from I/θ + 1/2), so
    that count is bit for bit what the quantized twin computes (``_elastic.py``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.u: Tensor | None = None

    def reset(self) -> None:
        self.u = None

    def step(self, current: Tensor, theta: Threshold | None = None) -> Tensor:
        if theta is None:
            raise ValueError("an elastic IF population needs its θ at every step")
        u = (current / theta + 0.5) if self.u is None else self.u + current / theta
        spikes = (u >= 1).to(current.dtype) - (u < 0).to(current.dtype)
        self.u = u - spikes
        return spikes
