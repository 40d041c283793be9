"""Recovery: a short distillation of a compressed student from its prepared base's teacher.

A search trial with ``recovery_steps`` runs it in memory (a trial is too short to checkpoint).
The teacher, tokenizer and training split are loaded once per process and prepared base
(``_source``), so a Ray worker that runs many trials pays for them once, not once per trial.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikeprune._model.glue import GlueSplit, batches, encode, load_glue
from spikeprune._model.spiking import SpikingBertForSequenceClassification
from spikeprune.records import PreparedRecord

from .distill import DistillLoss, loss_weights
from .loop import optimizer_step
from .presets import Preset


@dataclass(frozen=True)
class _Source:
    """What recovery reads from a prepared base; never modified by a trial."""

    preset: Preset
    layer_map: list[int]
    teacher: nn.Module
    tokenizer: Any
    train: GlueSplit


@functools.lru_cache(maxsize=2)
def _source(prepared: str, glue_dir: str | None, device: str) -> _Source:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    record = PreparedRecord.read(prepared)
    teacher = AutoModelForSequenceClassification.from_pretrained(Path(prepared) / "teacher").to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(Path(prepared) / "teacher")
    return _Source(Preset(**record.preset_config), record.layer_map, teacher, tokenizer,
                   load_glue(record.task, "train", glue_dir))


def recover(student: SpikingBertForSequenceClassification, prepared: str | Path, glue_dir: str | Path | None, *,
            steps: int, teacher_heads: list[list[int]] | None = None, seed: int = 0,
            device: str = "cpu") -> SpikingBertForSequenceClassification:
    """Train ``student`` in place for ``steps`` optimizer steps at the preset's batch size and
    distillation learning rate, on ``steps`` batches of training examples drawn with ``seed``;
    ``teacher_heads`` are the teacher heads each pruned layer kept, for the attention loss."""
    source = _source(str(Path(prepared).resolve()), None if glue_dir is None else str(glue_dir), str(device))
    p = source.preset
    torch.manual_seed(seed)
    loss_fn = DistillLoss(student.config, source.teacher.config.hidden_size, source.teacher.config.num_attention_heads,
                          source.layer_map, temperature=p.temperature, teacher_heads=teacher_heads,
                          **loss_weights(p)).to(device)
    data = encode(source.train.subset(steps * p.batch_size, seed=seed), source.tokenizer, p.max_length)
    params = [*student.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.AdamW(params, lr=p.distill_lr, weight_decay=p.weight_decay)
    student.to(device).train()
    order = batches(data, p.batch_size, shuffle=True, seed=seed, pad_id=source.tokenizer.pad_token_id or 0)
    for batch in itertools.islice(order, steps):
        loss, _ = loss_fn.step(student, source.teacher, {k: v.to(device) for k, v in batch.items()})
        optimizer_step(loss, optimizer, params)
    return student.eval()
