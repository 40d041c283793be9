"""Evaluation on a dev set: GLUE metrics, raw predictions and the spike counts of a spiking model.

Used by ``prepare`` (teacher and student scores) and by the trial kernel; the predictions are kept
so that a bootstrap interval can resample them and two disjoint parts can be merged.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from spikeprune.data._glue import get_task
from spikeprune.data._metrics import compute_metrics, main_metric
from spikeprune.models._record import SimRecord
from spikeprune.models._model import SpikingBertForSequenceClassification


@dataclass
class Evaluation:
    """Dev-set outcome of one model: metrics (plus "metric" = the task's main one), the merged
    spike counts of a spiking model (None for a float model) and the raw predictions, which the
    bootstrap interval resamples."""

    metrics: dict[str, float]
    record: SimRecord | None
    predictions: np.ndarray
    labels: np.ndarray


@torch.inference_mode()
def evaluate_model(model: nn.Module, batches: Iterable[dict[str, Tensor]], task: str,
                   mode: str = "batched") -> Evaluation:
    """Evaluate a spiking (``mode="batched"``, spikes recorded) or a Hugging Face model. A spiking
    model in ``mode="surrogate"`` runs its training surrogate instead (no spikes, no record): the
    quantized network of the converted family, a cheap stand-in for sensitivity probes. The elastic
    family's ``mode="twin"`` records the same spike counts as ``batched`` without stepping neurons."""
    spiking = isinstance(model, SpikingBertForSequenceClassification)
    regression = get_task(task).is_regression
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    record = SimRecord() if spiking and mode != "surrogate" else None
    predictions, labels = [], []
    for batch in batches:
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
        if spiking:
            out = model(**inputs, mode=mode, record=record is not None)
            if record is not None:
                record.merge(out.record)
        else:
            out = model(**inputs)
        logits = out.logits.float().cpu()
        predictions.append(logits.squeeze(-1) if regression else logits.argmax(-1))
        labels.append(batch["labels"])
    model.train(was_training)
    preds, golds = torch.cat(predictions).numpy(), torch.cat(labels).numpy()
    return Evaluation(_scores(task, preds, golds), record, preds, golds)


def merge_evaluations(first: Evaluation, rest: Evaluation, task: str) -> Evaluation:
    """One evaluation of two disjoint sets of examples: scores over both, spike counts added
    (an early-stopping look and the rest of the dev set, without evaluating the look twice)."""
    preds = np.concatenate([first.predictions, rest.predictions])
    golds = np.concatenate([first.labels, rest.labels])
    record = None
    if first.record is not None and rest.record is not None:
        record = SimRecord().merge(first.record).merge(rest.record)
    return Evaluation(_scores(task, preds, golds), record, preds, golds)


def _scores(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    metrics = compute_metrics(task, predictions, labels)
    metrics["metric"] = metrics[main_metric(task)]
    return metrics
