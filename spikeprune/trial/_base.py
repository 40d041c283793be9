"""The prepared base as a trial sees it: the student, its importance scores and the encoded dev set
(and, for spaces that recover, what recovery trains from).

Loaded once per search and put in Ray's object store once; every trial starts from it, so a worker
node needs no access to the files it came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from torch import Tensor

from spikeprune.models._compress import IMPORTANCE_NAME, load_importance
from spikeprune.data._glue import batches, encode, get_task, load_glue
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.training._recovery import RecoverySource
from spikeprune.errors import SpikepruneError
from spikeprune.records import PreparedRecord

#: Dev examples are visited in this fixed shuffled order, so the first n of them (an early-stopping
#: fidelity) are a random sample and every trial sees the same sample.
DEV_ORDER_SEED = 0


@dataclass
class BaseBundle:
    """What every trial starts from, loaded once per worker (or put once in Ray's object store)."""

    prepared: Path
    task: str
    student: SpikingBertForSequenceClassification
    importance: dict[str, Tensor]
    dev: dict[str, list]
    pad_id: int
    glue_dir: str | None
    batch_size: int = 64
    importance_method: str = "grad"
    #: Loaded with the bundle when trials will recover (``load(recovery=True)``), else on first use.
    recovery: RecoverySource | None = None

    @classmethod
    def load(cls, prepared: str | Path, glue_dir: str | Path | None = None, batch_size: int = 64,
             importance_method: str = "grad", recovery: bool = False) -> "BaseBundle":
        from transformers import AutoTokenizer

        prepared = Path(prepared)
        record = PreparedRecord.read(prepared)
        student = SpikingBertForSequenceClassification.from_pretrained(prepared / "student")
        importance = load_importance(prepared / IMPORTANCE_NAME, student.config)
        try:
            tokenizer = AutoTokenizer.from_pretrained(prepared / "student")
        except (OSError, ValueError) as e:
            raise SpikepruneError(f"{prepared / 'student'} holds no usable tokenizer ({str(e).strip().splitlines()[0]}); "
                                  f"run `spikeprune prepare` again into a fresh --run-dir") from None
        task = get_task(record.task)
        glue = str(glue_dir) if glue_dir is not None else record.glue_dir
        dev = load_glue(task.name, task.dev_split, glue)
        order = np.random.default_rng(DEV_ORDER_SEED).permutation(len(dev))
        encoded = encode(dev, tokenizer, record.max_length)
        encoded = {k: [v[i] for i in order] for k, v in encoded.items()}
        return cls(prepared=prepared, task=task.name, student=student, importance=importance, dev=encoded,
                   pad_id=tokenizer.pad_token_id or 0, glue_dir=glue, batch_size=batch_size,
                   importance_method=importance_method,
                   recovery=RecoverySource.load(prepared, glue) if recovery else None)

    def recovery_source(self) -> RecoverySource:
        """What recovery trains from: carried by the bundle, or loaded (once per process) from disk."""
        return self.recovery if self.recovery is not None else RecoverySource.cached(self.prepared, self.glue_dir)

    @property
    def dev_size(self) -> int:
        return len(self.dev["input_ids"])

    def dev_batches(self, max_examples: int | None = None, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """Dev examples ``start`` up to ``max_examples`` (of the fixed order) in length-sorted batches."""
        n = self.dev_size if max_examples is None else min(max_examples, self.dev_size)
        part = {k: v[start:n] for k, v in self.dev.items()}
        return batches(part, self.batch_size, sort_by_length=True, pad_id=self.pad_id)
