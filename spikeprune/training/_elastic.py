"""Elastic training: one time-elastic student made good for every config of the search space.

A trial keeps each layer's best heads and FFN neurons (in the base's importance order), runs it
for T_l steps and rounds its weights to b_l bits, then only evaluates: there is no per-trial
training. So the student is trained for all of those configs at once, with the sandwich rule
(BigNAS): each batch, the loss of the largest config (every unit, T = 16, float weights), of the
smallest one (``ElasticAxes.smallest``) and of ``sampled`` random ones, summed, one update. Each
config is distilled from the teacher (logits, hidden states, attention scores: ``DistillLoss``),
or, with ``elastic_targets="largest"``, every config but the largest from the largest's outputs
on the same batch (BigNAS's in-place distillation); ``"mixed"`` does that for the configs that keep
every unit (fewer steps or bits only) and keeps the teacher for the ones that cut heads or neurons.
``elastic_average`` publishes an exponential moving average of the weights, not the last ones.
``elastic_bf16`` runs the forward passes in bfloat16 autocast (weights, gradients and the loss
stay float32): measured on SST-2, a 1.17× faster stage in 28 % less memory. None of these options
measured better than the default at its gates (docs/RESULTS.md, "Elastic-training recipes").
``elastic_small_weight`` scales the smallest config's loss in the sum: its loss is the largest,
and SST-2's default of 0.5 missed fewer gates than full weight on three seeds.

A sub-config is run on the full-size model, exactly as the trial's pruned model computes it:

- **units**: a dropped head's context and a dropped FFN neuron's value are multiplied by 0 on
  their way into attn_out / output: what pruning their rows and columns removes;
- **steps**: ``config.timesteps`` (the θ table row of each layer's T);
- **bits**: weights on the grid of per-channel scales fitted every ``refresh`` batches (fitting
  costs seconds, a forward pass less), with straight-through gradients.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from spikeprune.data._glue import get_task
from spikeprune.errors import SpikepruneError
from spikeprune.models._compress import check_importance, pre_hooks
from spikeprune.models._config import FLOAT_BITS, CompressionConfig
from spikeprune.models._model import SpikingBertForSequenceClassification, SpikingOutput

from spikeprune.training._convert import default_layer_map
from spikeprune.training._grids import GridWeights
from spikeprune.training._distill import DistillLoss, TeacherOutput, loss_weights, teacher_forward
from spikeprune.training._loop import finish_stage, load_split, train_loop
from spikeprune.training._presets import Preset

#: Weight widths the training samples (the grid ones; 1 and 1.58 bits are not trained for).
TRAINED_BITS: tuple[float, ...] = (2.0, 4.0, 8.0, FLOAT_BITS)


@dataclass(frozen=True)
class ElasticAxes:
    """What the training samples per layer: heads and FFN neurons in steps of a sixth of the
    layer's (at least ``min_heads`` and ``min_neurons``), steps 1, 2, 3, 4, 6, 8, ... up to
    ``max_steps`` (the base's) and a width of ``TRAINED_BITS``: the grids the shipped spaces search,
    so the training spends its configs where trials are evaluated."""

    heads: int
    neurons: int
    min_heads: int
    min_neurons: int
    head_step: int
    neuron_step: int
    max_steps: int

    @classmethod
    def of(cls, student: SpikingBertForSequenceClassification, p: Preset) -> "ElasticAxes":
        cfg = student.config
        heads, neurons = max(cfg.heads), max(cfg.intermediate_sizes)
        if any(h != heads for h in cfg.heads) or any(n != neurons for n in cfg.intermediate_sizes):
            raise SpikepruneError("elastic training starts from an unpruned student; prune after it")
        return cls.for_sizes(heads, neurons, max(cfg.timesteps), p.elastic_min_width)

    @classmethod
    def for_sizes(cls, heads: int, neurons: int, max_steps: int, min_width: float) -> "ElasticAxes":
        """The axes of a layer with ``heads`` heads and ``neurons`` FFN neurons, cut to at least
        ``min_width`` of each."""
        head_step, neuron_step = max(1, heads // 6), max(1, neurons // 6)
        return cls(heads=heads, neurons=neurons, min_heads=_smallest_on_grid(heads, head_step, min_width),
                   min_neurons=_smallest_on_grid(neurons, neuron_step, min_width),
                   head_step=head_step, neuron_step=neuron_step, max_steps=max_steps)

    def largest(self, layers: int) -> CompressionConfig:
        return CompressionConfig([self.heads] * layers, [self.neurons] * layers, [self.max_steps] * layers,
                                 [FLOAT_BITS] * layers)

    def smallest(self, layers: int) -> CompressionConfig:
        return CompressionConfig([self.min_heads] * layers, [self.min_neurons] * layers, [1] * layers,
                                 [min(TRAINED_BITS)] * layers)

    def step_choices(self) -> list[int]:
        """1, 2, 3, 4, 6, 8, 12, 16, ...: powers of two and the midpoints between them (up to the
        base's steps, always included), so few steps are drawn as often as many."""
        values = {b * 2 ** e for b in (1, 3) for e in range(self.max_steps.bit_length())}
        return sorted({k for k in values if k <= self.max_steps} | {self.max_steps})

    def sample(self, layers: int) -> CompressionConfig:
        """A random config from torch's global generator (checkpointed, so a resumed run draws the
        same). Each axis is compressed with probability 1/2, else left at its largest, and takes
        one value for every layer or one per layer (1/2 each): configs that cut one or two axes,
        and uniform ones, are what a search starts from and are drawn often."""
        def axis(values: list) -> list:
            if torch.rand(()) < 0.5:
                return [values[-1]] * layers
            if torch.rand(()) < 0.5:
                return [values[int(torch.randint(len(values), ()))]] * layers
            return [values[i] for i in torch.randint(len(values), (layers,)).tolist()]

        return CompressionConfig(
            heads=axis(_grid(self.heads, self.head_step, self.min_heads)),
            neurons=axis(_grid(self.neurons, self.neuron_step, self.min_neurons)),
            timesteps=axis(self.step_choices()),
            weight_bits=axis(list(TRAINED_BITS)))


class ElasticRunner:
    """Runs the full-size student as any config of the axes: unit masks, steps, weight grids."""

    def __init__(self, student: SpikingBertForSequenceClassification, scores: dict[str, Tensor],
                 refresh: int) -> None:
        self.student = student
        cfg = student.config
        check_importance(scores, cfg, methods=("grad",))
        #: Units best first: a trial keeping k keeps the first k (``select_units``' choice).
        self.head_order = [_ranking(scores[f"grad.head.{l}"]) for l in range(cfg.num_layers)]
        self.neuron_order = [_ranking(scores[f"grad.neuron.{l}"]) for l in range(cfg.num_layers)]
        self.grids = GridWeights(student, refresh)

    def __call__(self, batch: dict[str, Tensor], config: CompressionConfig) -> SpikingOutput:
        model = self.student
        with self._masked(config), self._steps(config):
            return functional_call(model, self.grids.weights(config.weight_bits),
                                   (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                                   {"mode": "surrogate"})

    def next_batch(self) -> None:
        """Refit the weight grids' scales every ``refresh`` batches (and on the first)."""
        self.grids.next_batch()

    @contextmanager
    def _masked(self, config: CompressionConfig) -> Iterator[None]:
        hooks = {}
        for l, layer in enumerate(self.student.layers):
            if config.heads[l] < layer.num_heads:
                keep = layer.attn_out.weight.new_zeros(layer.num_heads)
                keep[self.head_order[l][:config.heads[l]]] = 1.0
                mask = keep.repeat_interleave(layer.head_dim)
                hooks[layer.attn_out] = lambda x, m=mask: x * m
            if config.neurons[l] < layer.output.in_features:
                keep = layer.output.weight.new_zeros(layer.output.in_features)
                keep[self.neuron_order[l][:config.neurons[l]]] = 1.0
                hooks[layer.output] = lambda x, m=keep: x * m
        with pre_hooks(hooks):
            yield

    @contextmanager
    def _steps(self, config: CompressionConfig) -> Iterator[None]:
        model = self.student
        full = model.config
        model.config = dataclasses.replace(full, timesteps=list(config.timesteps))
        try:
            yield
        finally:
            model.config = full


def _inplace_target(big: SpikingOutput, loss_fn: DistillLoss, teacher_hidden: int) -> TeacherOutput:
    """The largest config's outputs as the target of the others (in-place distillation), in the
    teacher's shape: its projected rates at the teacher layers they are compared with."""
    hidden: list[Tensor | None] = [None] * teacher_hidden
    scores = {}
    for l, t in enumerate(loss_fn.layer_map):
        hidden[t + 1] = loss_fn.projections[l](big.hidden_rates[l]).detach()
        scores[t] = big.attention_scores[l].detach()
    return TeacherOutput(big.logits.detach(), hidden, scores)


class WeightAverage(nn.Module):
    """An exponential moving average of a model's parameters, kept as buffers so the training's
    checkpoint stores it (a resumed run averages on bit-identically) and the optimizer skips it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        for name, param in model.named_parameters():
            self.register_buffer(self._buffer_name(name), param.detach().clone())

    @staticmethod
    def _buffer_name(parameter: str) -> str:
        return parameter.replace(".", "__")  # a buffer's name may not contain dots

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            self.get_buffer(self._buffer_name(name)).lerp_(param, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            param.copy_(self.get_buffer(self._buffer_name(name)))


def _learns_from_largest(targets: str, config: CompressionConfig, largest: CompressionConfig) -> bool:
    """Whether ``config`` (not the largest) learns from the largest config's outputs: all do with
    "largest", those that keep every head and neuron with "mixed" (in-place distillation lifted
    few steps and bits and cost the width rows), none with "teacher"."""
    if targets == "mixed":
        return config.heads == largest.heads and config.neurons == largest.neurons
    return targets == "largest"


def _float_output(out: SpikingOutput) -> SpikingOutput:
    """What the loss compares in float32, whatever precision the forward pass ran in."""
    return dataclasses.replace(out, logits=out.logits.float(), hidden_rates=[r.float() for r in out.hidden_rates],
                               attention_scores=[a.float() for a in out.attention_scores])


def _float_target(t: TeacherOutput) -> TeacherOutput:
    """The teacher's targets in float32."""
    return TeacherOutput(t.logits.float(), [h.float() for h in t.hidden], {k: v.float() for k, v in t.scores.items()})


def _smallest_on_grid(top: int, step: int, share: float) -> int:
    """The fewest units on the grid top, top - step, ... that keep at least ``share`` of top."""
    return top - (top - math.ceil(share * top)) // step * step


def _grid(top: int, step: int, smallest: int) -> list[int]:
    """smallest, ..., top - step, top: unit counts counted down from the whole, ascending."""
    return list(range(top, smallest - 1, -step))[::-1]


def _ranking(score: Tensor) -> Tensor:
    """Unit indices, best first (ties to the lower index), as ``select_units`` ranks them."""
    return torch.sort(score, descending=True, stable=True).indices


def train_elastic(student: SpikingBertForSequenceClassification, teacher: nn.Module, scores: dict[str, Tensor],
                  task: str, glue_dir: str | Path | None, out_dir: str | Path, p: Preset, *, tokenizer: Any,
                  device: str = "cpu", seed: int = 0) -> SpikingBertForSequenceClassification:
    """Train ``student`` (time-elastic family) for every config of the axes; write ``out_dir/student``.

    Resumes from ``out_dir/checkpoints/elastic``, bit-identical to an uninterrupted run: configs
    come from the checkpointed generator, and the weight grids are refitted on batches that are
    multiples of ``checkpoint_every`` (where a resumed run starts)."""
    if student.config.family != "elastic":
        raise SpikepruneError(f"elastic training needs a time-elastic student, not {student.config.family}")
    spec = get_task(task)
    out_dir = Path(out_dir)
    layers = student.config.num_layers
    axes = ElasticAxes.of(student, p)
    runner = ElasticRunner(student, scores, refresh=p.checkpoint_every)
    weights = loss_weights(p)
    torch.manual_seed(seed)
    loss_fn = DistillLoss(student.config, teacher.config.hidden_size, teacher.config.num_attention_heads,
                          default_layer_map(teacher.config.num_hidden_layers, layers),
                          temperature=p.temperature, **weights).to(device)
    student.to(device).train()
    teacher.to(device).eval()

    def precision() -> torch.autocast:
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=p.elastic_bf16)

    def step_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        runner.next_batch()
        with precision():
            teacher_target = _float_target(teacher_forward(teacher, batch, loss_fn.score_layers))
        largest = axes.largest(layers)
        configs = [largest, axes.smallest(layers)] + [axes.sample(layers) for _ in range(p.elastic_sampled)]
        total, shown, inplace = None, {}, None
        for name, config in zip(("big", "small", *(f"r{i}" for i in range(p.elastic_sampled))), configs):
            with precision():
                out = runner(batch, config)
            out = _float_output(out)
            target = inplace if inplace is not None and _learns_from_largest(p.elastic_targets, config, largest) \
                else teacher_target
            loss, _ = loss_fn(out, target, batch, student.loss)
            shown[name] = loss.item()
            if name == "small":
                loss = loss * p.elastic_small_weight
            if name == "big" and p.elastic_targets != "teacher":
                inplace = _inplace_target(out, loss_fn, len(teacher_target.hidden))
            total = loss if total is None else total + loss
        return total, {k: shown[k] for k in ("big", "small")}

    if p.elastic_examples == 0:  # the θ table alone
        summary = {"steps": 0, "examples": 0, "elapsed_s": 0.0}
    else:
        data = load_split(spec.name, "train", glue_dir, tokenizer, p.max_length, p.elastic_examples, seed + 2)
        modules: dict[str, nn.Module] = {"student": student, "loss": loss_fn}
        average = WeightAverage(student, p.elastic_average) if p.elastic_average > 0 else None
        if average is not None:
            modules["average"] = average
        summary = train_loop(modules, step_loss, data, batch_size=p.batch_size,
                             epochs=p.elastic_epochs, lr=p.elastic_lr, warmup_ratio=p.warmup_ratio, weight_decay=p.weight_decay,
                             seed=seed + 2, pad_id=tokenizer.pad_token_id or 0, device=device,
                             ckpt_dir=out_dir / "checkpoints" / "elastic", checkpoint_every=p.checkpoint_every,
                             desc=f"elastic {spec.name} (sandwich of {2 + p.elastic_sampled})", bucket=p.length_bucket,
                             after_step=None if average is None else lambda: average.update(student))
        if average is not None:
            average.copy_to(student)
    student.eval()
    tmp = out_dir / ".tmp-student"
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    finish_stage(tmp, out_dir / "student", out_dir / "checkpoints" / "elastic",
                 {**summary, "task": spec.name, "layer_map": loss_fn.layer_map, "preset": p.name, "seed": seed, "axes": dataclasses.asdict(axes),
                  "sampled": p.elastic_sampled, "loss_weights": weights, "temperature": p.temperature})
    return student
