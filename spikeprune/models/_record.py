"""The spike counts a simulation records: plain integers, the raw material of operation counting."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimRecord:
    """Spike counts of one or more batches, over real (non-padding) tokens.

    ``layers[l]`` maps each population of the family (and ``"input"``, the train entering the
    layer) to its spike count (a signed spike counts once), plus ``<name>_x_len`` for the
    populations of ``Family.products``: Σ over examples of that example's spikes times its length,
    i.e. the adds Q·Kᵀ and P·V perform on them.
    """

    examples: int = 0
    tokens: int = 0
    token_pairs: int = 0
    layers: list[dict[str, int]] = field(default_factory=list)

    def merge(self, other: SimRecord) -> SimRecord:
        if not self.layers:
            self.layers = [dict.fromkeys(layer, 0) for layer in other.layers]
        self.examples += other.examples
        self.tokens += other.tokens
        self.token_pairs += other.token_pairs
        for mine, theirs in zip(self.layers, other.layers):
            for key, value in theirs.items():
                mine[key] += value
        return self
