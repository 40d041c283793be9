"""Recovery: a short distillation of a compressed student from its prepared base's teacher.

A search trial with ``recovery_steps`` runs it in memory (a trial is too short to checkpoint).
What it needs from the base (teacher, tokenizer, training split) is a ``RecoverySource``: a search
ships it to the workers inside the base bundle, so worker nodes read nothing from disk; elsewhere
``RecoverySource.cached`` loads it once per process and prepared base.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikeprune.data._glue import GlueSplit, batches, encode, load_glue
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.records import PreparedRecord

from spikeprune.training._distill import DistillLoss, loss_weights
from spikeprune.training._grids import GridWeights
from spikeprune.training._loop import optimizer_step
from spikeprune.training._presets import Preset

#: Recovery refits its 2-, 4- and 8-bit weight scales every this many steps (as the elastic
#: training's preset does every checkpoint_every = 25 batches).
RECOVERY_REFRESH = 25


@dataclass(frozen=True)
class RecoverySource:
    """What recovery reads from a prepared base; never modified by a trial."""

    preset: Preset
    layer_map: list[int]
    teacher: nn.Module
    tokenizer: Any
    train: GlueSplit

    @classmethod
    def load(cls, prepared: str | Path, glue_dir: str | Path | None = None) -> "RecoverySource":
        """The teacher and tokenizer of ``prepared`` and its task's training split (from ``glue_dir``)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        record = PreparedRecord.read(prepared)
        teacher = AutoModelForSequenceClassification.from_pretrained(Path(prepared) / "teacher").eval()
        tokenizer = AutoTokenizer.from_pretrained(Path(prepared) / "teacher")
        return cls(Preset.from_dict(record.preset_config), record.layer_map, teacher, tokenizer,
                   load_glue(record.task, "train", None if glue_dir is None else str(glue_dir)))

    def __getstate__(self) -> dict[str, Any]:
        # A Hugging Face model does not survive pickling whole (its output hooks are lost, so it
        # returns no hidden states): ship its class, config and weights, and rebuild it.
        state = dict(self.__dict__)
        teacher = state.pop("teacher")
        state["teacher_parts"] = (type(teacher), teacher.config, teacher.state_dict())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        cls, config, weights = state.pop("teacher_parts")
        teacher = cls(config)
        teacher.load_state_dict(weights)
        for key, value in {**state, "teacher": teacher.eval()}.items():
            object.__setattr__(self, key, value)

    @staticmethod
    def cached(prepared: str | Path, glue_dir: str | Path | None = None) -> "RecoverySource":
        """``load``, once per process for each prepared base and GLUE folder."""
        return _cached(str(Path(prepared).resolve()), None if glue_dir is None else str(glue_dir))


@functools.lru_cache(maxsize=2)
def _cached(prepared: str, glue_dir: str | None) -> RecoverySource:
    return RecoverySource.load(prepared, glue_dir)


def recover(student: SpikingBertForSequenceClassification, source: RecoverySource, *, steps: int,
            teacher_heads: list[list[int]] | None = None, weight_bits: list[float] | None = None,
            seed: int = 0, device: str = "cpu") -> SpikingBertForSequenceClassification:
    """Train ``student`` in place for ``steps`` optimizer steps at the preset's batch size and
    distillation learning rate, on ``steps`` batches of training examples drawn with ``seed``;
    ``teacher_heads`` are the teacher heads each pruned layer kept, for the attention loss.

    The student stays float; with ``weight_bits`` (the widths it will be quantized to) each step
    runs it on its quantized weights with straight-through gradients, so recovery trains the model
    that is evaluated, not a float one that rounding then moves away from (``GridWeights``)."""
    p = source.preset
    teacher = source.teacher.to(device)
    torch.manual_seed(seed)
    loss_fn = DistillLoss(student.config, teacher.config.hidden_size, teacher.config.num_attention_heads,
                          source.layer_map, temperature=p.temperature, teacher_heads=teacher_heads,
                          **loss_weights(p)).to(device)
    data = encode(source.train.subset(steps * p.batch_size, seed=seed), source.tokenizer, p.max_length)
    params = [*student.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.AdamW(params, lr=p.distill_lr, weight_decay=p.weight_decay)
    student.to(device).train()
    order = batches(data, p.batch_size, shuffle=True, seed=seed, pad_id=source.tokenizer.pad_token_id or 0)
    grids = GridWeights(student, refresh=RECOVERY_REFRESH)
    bits = weight_bits or list(student.config.weight_bits)
    for batch in itertools.islice(order, steps):
        batch = {k: v.to(device) for k, v in batch.items()}
        grids.next_batch()
        loss, _ = loss_fn.step(student, teacher, batch, weights=grids.weights(bits))
        optimizer_step(loss, optimizer, params)
    return student.eval()
