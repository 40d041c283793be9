"""Teacher -> student conversion: a spiking BERT with the teacher's shape and weights.

The student copies the teacher's weights (evenly spaced layers when it has fewer) and gets a
readout standardised to its rates, so distillation starts from the teacher's function.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._converted import POPULATIONS, RESIDUAL, encoder_theta, quantize_ste
from spikeprune.models._elastic import MAX_STEPS, check_steps
from spikeprune.models._families import family_of
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.errors import SpikepruneError

#: Readout units whose rate varies less than this across sentences are left unscaled.
READOUT_MIN_STD = 1e-3


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers (0-based) ending at the last: 6 -> 3 gives [1, 3, 5]."""
    if not 1 <= student_layers <= teacher_layers:
        raise SpikepruneError(f"a student needs 1..{teacher_layers} layers (the teacher's count), got {student_layers}")
    return [(l + 1) * teacher_layers // student_layers - 1 for l in range(student_layers)]


#: Our student parameter names -> HF BERT names (``{t}`` is the teacher layer).
_LAYER_NAMES = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense", "output": "output.dense", "out_norm": "output.LayerNorm",
}


def build_student(teacher: nn.Module, timesteps: int | list[int], num_layers: int | None = None,
                  layer_map: list[int] | None = None, threshold: float = 1.0, leak: float = 1.0,
                  task: str | None = None, family: str = "spikingbert", levels: int = 8,
                  residual_thresholds: str = "population") -> SpikingBertForSequenceClassification:
    """A spiking student with the teacher's shape and weights; layer l copies teacher layer
    ``layer_map[l]`` (default evenly spaced, see ``default_layer_map``). A ``converted`` student
    reads [CLS] through the teacher's pooler, like the teacher; its thresholds start at 1 and are
    set by ``calibrate_thresholds``."""
    tc = teacher.config
    if tc.model_type != "bert" or getattr(tc, "position_embedding_type", "absolute") != "absolute":
        raise SpikepruneError(f"the spiking student copies BERT weights, but the teacher is a {tc.model_type!r} "
                              "model; fine-tune a BERT checkpoint as teacher")
    if tc.hidden_act != "gelu":
        raise SpikepruneError(f"the spiking student uses exact GELU but the teacher uses {tc.hidden_act!r}; "
                              "use a BERT teacher with hidden_act='gelu'")
    num_layers = num_layers or (len(layer_map) if layer_map else tc.num_hidden_layers)
    layer_map = list(layer_map) if layer_map is not None else default_layer_map(tc.num_hidden_layers, num_layers)
    if len(layer_map) != num_layers or any(not 0 <= t < tc.num_hidden_layers for t in layer_map):
        raise SpikepruneError(f"layer map {layer_map} must give {num_layers} teacher layers in "
                              f"0..{tc.num_hidden_layers - 1}")
    config = SpikingBertConfig(
        vocab_size=tc.vocab_size, hidden_size=tc.hidden_size, num_layers=num_layers,
        head_dim=tc.hidden_size // tc.num_attention_heads, heads=tc.num_attention_heads,
        intermediate_sizes=tc.intermediate_size, timesteps=timesteps,
        max_position_embeddings=tc.max_position_embeddings, type_vocab_size=tc.type_vocab_size,
        layer_norm_eps=tc.layer_norm_eps, threshold=threshold, leak=leak, num_labels=tc.num_labels, task=task,
        family=family, levels=levels, residual_thresholds=residual_thresholds,
        readout=family_of(family).readout)
    names = {f"embeddings.{e}.{w}": f"bert.embeddings.{e}.{w}"
             for e in ("word_embeddings", "position_embeddings", "token_type_embeddings") for w in ("weight",)}
    for w in ("weight", "bias"):
        names[f"embeddings.LayerNorm.{w}"] = f"bert.embeddings.LayerNorm.{w}"
        names[f"pooler.{w}"] = f"bert.pooler.dense.{w}"
        names[f"classifier.{w}"] = f"classifier.{w}"
        for l, t in enumerate(layer_map):
            for ours, theirs in _LAYER_NAMES.items():
                names[f"layers.{l}.{ours}.{w}"] = f"bert.encoder.layer.{t}.{theirs}.{w}"
    source = teacher.state_dict()
    student = SpikingBertForSequenceClassification(config)
    state = {ours: source[theirs].detach().clone() for ours, theirs in names.items()}
    own = student.state_dict()
    # the converted family's thresholds and unit scales, calibrated later
    state.update({k: own[k] for k in own if "threshold" in k or "scales" in k})
    student.load_state(state, source="teacher")
    return student


#: Activations sampled per population for a threshold percentile (enough for the 99.9th).
CALIBRATION_SAMPLE = 200_000
#: Tokens sampled for a per-unit percentile (residual_thresholds="unit").
CALIBRATION_TOKENS = 20_000


@torch.no_grad()
def calibrate_thresholds(student: SpikingBertForSequenceClassification, batches: Iterable[dict[str, Tensor]],
                         percentile: float) -> dict[str, float]:
    """Set every population's θ of a ``converted`` student to percentile(|activation|) / L, and
    with ``residual_thresholds="unit"`` each residual unit's scale to its own percentile over the
    population's.

    Layer by layer: a layer's activations are measured in float on the quantized output of the
    layers before it (already calibrated), over the real tokens of ``batches``. Returns θ by
    population name ("encoder", "layers.<l>.<population>").
    """
    cfg = student.config
    levels = cfg.levels
    data = [(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in batches]
    masks = [m.to(torch.float32)[..., None] for _, m, _ in data]
    key_masks = [((1.0 - m.to(torch.float32)) * torch.finfo(torch.float32).min)[:, None, None, :] for _, m, _ in data]
    generator = torch.Generator().manual_seed(0)

    def theta(values: list[Tensor], token_masks: list[Tensor]) -> float:
        real = torch.cat([v.abs()[m.expand_as(v) > 0] for v, m in zip(values, token_masks)])
        if real.numel() > CALIBRATION_SAMPLE:
            real = real[torch.randint(real.numel(), (CALIBRATION_SAMPLE,), generator=generator)]
        return max(float(torch.quantile(real, percentile / 100.0)), 1e-6) / levels

    def unit_scales(values: list[Tensor], token_masks: list[Tensor], population: float) -> Tensor:
        rows = torch.cat([v[m[..., 0] > 0] for v, m in zip(values, token_masks)]).abs()
        if rows.shape[0] > CALIBRATION_TOKENS:
            rows = rows[torch.randint(rows.shape[0], (CALIBRATION_TOKENS,), generator=generator)]
        return torch.quantile(rows, percentile / 100.0, dim=0).clamp_min(1e-6) / levels / population

    found: dict[str, float] = {}
    embedded = [student.embeddings(ids, types) for ids, _, types in data]
    found["encoder"] = theta(embedded, masks)
    student.encoder_threshold.fill_(found["encoder"])
    if student.encoder_scales is not None:
        student.encoder_scales.copy_(unit_scales(embedded, masks, found["encoder"]))
    xs = [quantize_ste(e, encoder_theta(student), levels) * m for e, m in zip(embedded, masks)]
    for l, layer in enumerate(student.layers):
        seen: dict[str, list[Tensor]] = {name: [] for name in POPULATIONS}
        for x, key_mask in zip(xs, key_masks):
            layer.quantized(x, key_mask, observe=lambda name, value: seen[name].append(value))
        for i, name in enumerate(POPULATIONS):
            found[f"layers.{l}.{name}"] = theta(seen[name], masks)
            layer.thresholds[i] = found[f"layers.{l}.{name}"]
            if layer.unit_scales is not None and name in RESIDUAL:
                layer.unit_scales[RESIDUAL.index(name)] = unit_scales(seen[name], masks, found[f"layers.{l}.{name}"])
        xs = [layer.quantized(x, key_mask)[0]["output"] * m for x, key_mask, m in zip(xs, key_masks, masks)]
    return found


@torch.no_grad()
def standardize_readout(student: SpikingBertForSequenceClassification, batches: Iterable[dict[str, Tensor]]) -> None:
    """Fold a per-unit standardisation of the readout rates into the pooler.

    A copied teacher's pooler expects signed hidden states of unit scale; the student's averaged
    rates sit near 0.1 and vary across sentences by a few hundredths, so a short distillation
    cannot grow the head's weights enough to read them. Rewriting the pooler as
    W·((r − μ)/σ) + b, with μ, σ of the rates on a few training batches, changes no function the
    model can express, only where optimisation starts.
    """
    pooled = []
    for batch in batches:
        out = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        mask = batch["attention_mask"].to(out.hidden_rates[-1].dtype)[..., None]
        pooled.append(student._readout(out.hidden_rates[-1], mask))
    rates = torch.cat(pooled)
    mean, std = rates.mean(dim=0), rates.std(dim=0)
    scale = torch.where(std > READOUT_MIN_STD, 1.0 / std, torch.ones_like(std))
    weight = student.pooler.weight * scale
    student.pooler.bias -= weight @ mean
    student.pooler.weight.copy_(weight)


#: Multipliers of λ/L' tried per population by ``relevel``: log-spaced over [0.1, 2].
RELEVEL_FACTORS = torch.logspace(-1, math.log10(2.0), 48)
#: Tokens sampled per population for ``relevel``'s error.
RELEVEL_TOKENS = 2048


@torch.no_grad()
def relevel(student: SpikingBertForSequenceClassification, batches: Iterable[dict[str, Tensor]],
            levels: int) -> SpikingBertForSequenceClassification:
    """A copy of a converted student quantized to ``levels`` per side, no training: each
    population's θ becomes c·λ/levels (λ = L·θ, the trained clip) with the factor c of least
    squared error over RELEVEL_FACTORS; the trained per-unit scales are kept.

    Why least error and not the clip: at few levels the best step is set by where most values
    lie, not by the largest ones. Layer by layer, like ``calibrate_thresholds``: a layer's
    activations are measured in float on the re-levelled output of the layers before it.
    """
    cfg = student.config
    if not family_of(cfg.family).incremental:
        raise SpikepruneError(f"only a converted student has levels to change; this one is {cfg.family}")
    model = copy.deepcopy(student)
    model.config = dataclasses.replace(cfg, levels=levels)
    data = [(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in batches]
    masks = [m.to(torch.float32)[..., None] for _, m, _ in data]
    key_masks = [((1.0 - m.to(torch.float32)) * torch.finfo(torch.float32).min)[:, None, None, :] for _, m, _ in data]
    generator = torch.Generator().manual_seed(0)

    def best_factor(values: list[Tensor], theta: Tensor) -> float:
        """The factor c whose θ·c quantizer has the least squared error on (up to
        RELEVEL_TOKENS sampled) real tokens."""
        rows = torch.cat([v[m[..., 0] > 0] for v, m in zip(values, masks)])
        if rows.shape[0] > RELEVEL_TOKENS:
            rows = rows[torch.randperm(rows.shape[0], generator=generator)[:RELEVEL_TOKENS]]
        errors = [float((quantize_ste(rows, theta * c, levels) - rows).square().sum()) for c in RELEVEL_FACTORS]
        return float(RELEVEL_FACTORS[min(range(len(errors)), key=errors.__getitem__)])

    embedded = [model.embeddings(ids, types) for ids, _, types in data]
    model.encoder_threshold.mul_(cfg.levels / levels)
    model.encoder_threshold.mul_(best_factor(embedded, encoder_theta(model)))
    xs = [quantize_ste(e, encoder_theta(model), levels) * m for e, m in zip(embedded, masks)]
    for layer in model.layers:
        layer.levels = levels
        layer.thresholds.mul_(cfg.levels / levels)
        seen: dict[str, list[Tensor]] = {name: [] for name in POPULATIONS}
        for x, key_mask in zip(xs, key_masks):
            layer.quantized(x, key_mask, observe=lambda name, value: seen[name].append(value))
        for i, name in enumerate(POPULATIONS):
            layer.thresholds[i] *= best_factor(seen[name], layer.theta(name))
        xs = [layer.quantized(x, key_mask)[0]["output"] * m for x, key_mask, m in zip(xs, key_masks, masks)]
    return model.eval()


@torch.no_grad()
def elastic_from_converted(student: SpikingBertForSequenceClassification, batches: Iterable[dict[str, Tensor]],
                           progress: Callable[[int], None] | None = None) -> SpikingBertForSequenceClassification:
    """The time-elastic model (``family="elastic"``) of a converted student, no training: the
    same weights and per-unit scales, and a θ table whose row T is ``relevel``'s θ at T levels
    (T = 1..16); ``progress(T)`` is called after each row."""
    cfg = student.config
    check_steps(cfg.timesteps)
    batches = list(batches)
    elastic = SpikingBertForSequenceClassification(dataclasses.replace(cfg, family="elastic"))
    state = {k: v for k, v in student.state_dict().items() if not k.endswith(("thresholds", "encoder_threshold"))}
    missing, unexpected = elastic.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(("thresholds", "encoder_threshold")) for k in missing):
        raise SpikepruneError(f"the converted student's weights do not fit an elastic model: {unexpected[:3]} {missing[:3]}")
    for steps in range(1, MAX_STEPS + 1):
        levelled = relevel(student, batches, steps)
        elastic.encoder_threshold[steps - 1] = levelled.encoder_threshold
        for target, source in zip(elastic.layers, levelled.layers):
            target.thresholds[steps - 1] = source.thresholds
        if progress is not None:
            progress(steps)
    return elastic.eval()
