"""Distillation: the teacher's logits, hidden states and attention scores taught to the student
through surrogate gradients (the equilibrium view of SpikingBERT, see models/_spikingbert.py)."""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from spikeprune.models._config import SpikingBertConfig
from spikeprune.data._glue import get_task
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.errors import SpikepruneError

from spikeprune.training._convert import default_layer_map
from spikeprune.training._loop import finish_stage, load_split, train_loop
from spikeprune.training._presets import Preset, get_preset


@dataclass
class TeacherOutput:
    logits: Tensor
    hidden: list[Tensor]        # [embeddings, layer 0 output, ...], each [B, L, H]
    scores: dict[int, Tensor]   # teacher layer -> pre-softmax attention scores [B, nh, L, L]


@torch.no_grad()
def teacher_forward(teacher: nn.Module, batch: dict[str, Tensor], score_layers: Iterable[int]) -> TeacherOutput:
    """Logits, hidden states and the pre-softmax scores of ``score_layers``.

    HF returns only post-softmax probabilities, so the scores are recomputed from each layer's
    input with the layer's own query/key projections: (W_q h)(W_k h)ᵀ/√d, the exact quantity
    the student's ``attention_scores`` holds (tests check softmax of it equals HF's probs).
    """
    out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  token_type_ids=batch["token_type_ids"], output_hidden_states=True)
    scores = {}
    for t in score_layers:
        attn = teacher.bert.encoder.layer[t].attention.self
        h = out.hidden_states[t]
        q = attn.query(h).unflatten(-1, (attn.num_attention_heads, -1)).transpose(1, 2)
        k = attn.key(h).unflatten(-1, (attn.num_attention_heads, -1)).transpose(1, 2)
        scores[t] = q @ k.transpose(-1, -2) * attn.attention_head_size ** -0.5
    return TeacherOutput(out.logits, list(out.hidden_states), scores)


class DistillLoss(nn.Module):
    """Weighted sum of the distillation losses; holds the training-only hidden projections.

    - hidden: MSE between Linear_l(student rate of layer l) and the teacher's hidden state of
      layer ``layer_map[l]``, over real tokens. Rates live in [0, 1] and hidden states are
      signed, so a learned projection (identity-initialised when widths agree) bridges scales.
    - attention: MSE between the student's pre-softmax scores and the teacher's, over real
      (query, key) pairs. ``teacher_heads[l]`` names the teacher heads a pruned layer kept.
    - logits: soft cross-entropy at ``temperature`` (scaled by T²), MSE for regression.
    - labels: the task loss on gold labels.
    Each is averaged over layers, so weights do not depend on depth.
    """

    def __init__(self, student: SpikingBertConfig, teacher_hidden: int, teacher_heads_count: int,
                 layer_map: list[int], *, hidden_weight: float, attention_weight: float,
                 logit_weight: float, label_weight: float, temperature: float,
                 teacher_heads: list[list[int]] | None = None) -> None:
        super().__init__()
        if len(layer_map) != student.num_layers:
            raise SpikepruneError(f"layer map {layer_map} has {len(layer_map)} entries for a {student.num_layers}-layer student")
        if attention_weight and teacher_heads is None and any(h != teacher_heads_count for h in student.heads):
            raise SpikepruneError("the student has pruned heads: pass teacher_heads (the kept teacher heads per layer) "
                                  "or set the attention loss weight to 0")
        self.layer_map = list(layer_map)
        self.teacher_heads = teacher_heads
        self.weights = {"hidden": hidden_weight, "attention": attention_weight,
                        "logits": logit_weight, "labels": label_weight}
        self.temperature = temperature
        self.regression = student.is_regression
        self.projections = nn.ModuleList(nn.Linear(student.hidden_size, teacher_hidden)
                                         for _ in range(student.num_layers))
        if student.hidden_size == teacher_hidden:
            for proj in self.projections:
                nn.init.eye_(proj.weight)
                nn.init.zeros_(proj.bias)

    @property
    def needs_teacher(self) -> bool:
        return any(self.weights[k] for k in ("hidden", "attention", "logits"))

    @property
    def score_layers(self) -> list[int]:
        """The teacher layers whose attention scores the loss needs."""
        return sorted(set(self.layer_map)) if self.weights["attention"] else []

    def step(self, student: SpikingBertForSequenceClassification, teacher: nn.Module | None,
             batch: dict[str, Tensor], weights: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, float]]:
        """The loss of one batch: the teacher's targets, the student's surrogate forward (with
        ``weights`` in place of its own parameters of those names), the sum."""
        target = teacher_forward(teacher, batch, self.score_layers) if self.needs_teacher else None
        out = functional_call(student, weights or {}, (batch["input_ids"], batch["attention_mask"],
                                                        batch["token_type_ids"]), {"mode": "surrogate"})
        return self(out, target, batch, student.loss)

    def forward(self, student: Any, teacher: TeacherOutput | None, batch: dict[str, Tensor],
                task_loss: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, dict[str, float]]:
        mask = batch["attention_mask"].to(student.logits.dtype)
        parts: dict[str, Tensor] = {}
        if self.weights["hidden"]:
            losses = [(((proj(rate) - teacher.hidden[t + 1]) ** 2).mean(-1) * mask).sum() / mask.sum()
                      for proj, rate, t in zip(self.projections, student.hidden_rates, self.layer_map)]
            parts["hidden"] = torch.stack(losses).mean()
        if self.weights["attention"]:
            pairs = mask[:, None, :, None] * mask[:, None, None, :]
            losses = []
            for l, (scores, t) in enumerate(zip(student.attention_scores, self.layer_map)):
                target = teacher.scores[t]
                if self.teacher_heads is not None:
                    target = target[:, self.teacher_heads[l]]
                losses.append((((scores - target) ** 2) * pairs).sum() / (pairs.sum() * scores.shape[1]))
            parts["attention"] = torch.stack(losses).mean()
        if self.weights["logits"]:
            if self.regression:
                parts["logits"] = F.mse_loss(student.logits, teacher.logits)
            else:
                tau = self.temperature
                soft = torch.softmax(teacher.logits / tau, dim=-1)
                parts["logits"] = -(soft * torch.log_softmax(student.logits / tau, dim=-1)).sum(-1).mean() * tau ** 2
        if self.weights["labels"]:
            parts["labels"] = task_loss(student.logits, batch["labels"])
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {k[:3]: v.item() for k, v in parts.items()}


def loss_weights(p: Preset) -> dict[str, float]:
    """DistillLoss weights of a preset (hidden, attention and logit weights 0: gold labels alone)."""
    return dict(hidden_weight=p.hidden_weight, attention_weight=p.attention_weight,
                logit_weight=p.logit_weight, label_weight=p.label_weight)


def distill_student(student: SpikingBertForSequenceClassification, teacher: nn.Module | None, task: str,
                    glue_dir: str | Path | None, out_dir: str | Path, preset: str | Preset = "quick", *,
                    tokenizer: Any, layer_map: list[int] | None = None,
                    teacher_heads: list[list[int]] | None = None, device: str = "cpu",
                    seed: int = 0, stage: str = "student") -> SpikingBertForSequenceClassification:
    """Distill ``teacher`` into ``student`` (surrogate gradients); write ``out_dir/<stage>``.

    Loss weights and temperature come from the preset (with only ``label_weight`` above 0 it trains
    on gold labels and needs no teacher); override with ``dataclasses.replace(PRESETS[name], ...)``. Resumes from
    ``out_dir/checkpoints/<stage>``.
    """
    p = get_preset(preset)
    spec = get_task(task)
    out_dir = Path(out_dir)
    weights = loss_weights(p)
    if teacher is None and any(weights[k] for k in ("hidden_weight", "attention_weight", "logit_weight")):
        raise SpikepruneError("distillation needs a teacher; pass one or set hidden_weight, attention_weight and "
                              "logit_weight to 0 (gold labels alone)")
    teacher_layers = teacher.config.num_hidden_layers if teacher is not None else student.config.num_layers
    layer_map = layer_map or default_layer_map(teacher_layers, student.config.num_layers)
    torch.manual_seed(seed)
    loss_fn = DistillLoss(student.config, teacher.config.hidden_size if teacher is not None else student.config.hidden_size,
                          teacher.config.num_attention_heads if teacher is not None else 0, layer_map,
                          temperature=p.temperature, teacher_heads=teacher_heads, **weights).to(device)
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    ckpt_dir = out_dir / "checkpoints" / stage
    if p.distill_examples == 0:  # no training: a converted student is already its teacher, quantized
        summary = {"steps": 0, "examples": 0, "elapsed_s": 0.0}
    else:
        data = load_split(task, "train", glue_dir, tokenizer, p.max_length, p.distill_examples, seed)

        def step_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
            return loss_fn.step(student, teacher, batch)

        summary = train_loop({"student": student, "loss": loss_fn}, step_loss, data, batch_size=p.batch_size,
                             epochs=p.distill_epochs, lr=p.distill_lr, warmup_ratio=p.warmup_ratio,
                             weight_decay=p.weight_decay, seed=seed, pad_id=tokenizer.pad_token_id or 0,
                             device=device, ckpt_dir=ckpt_dir, checkpoint_every=p.checkpoint_every,
                             desc=f"student {spec.name} T={student.config.timesteps[0]}", bucket=p.length_bucket)
    student.eval()
    tmp = out_dir / f".tmp-{stage}"
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    finish_stage(tmp, out_dir / stage, ckpt_dir,
                  {**summary, "task": spec.name, "preset": p.name, "seed": seed, "layer_map": layer_map,
                   "loss_weights": weights, "temperature": p.temperature})
    return student
