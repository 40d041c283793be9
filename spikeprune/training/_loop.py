"""The checkpointed training loop every stage of ``prepare`` runs, and the stage bookkeeping.

Every training stage checkpoints into ``<out_dir>/checkpoints/<stage>/`` (weights, optimizer,
scheduler, RNG and step as safetensors + JSON, never pickle), so re-running the same command
continues where a killed run stopped and ends bit-identical to an uninterrupted run. A finished
stage is published by renaming its folder, so it appears complete or not at all.

Determinism: data order is a function of (seed, epoch) alone, and the only other randomness
(dropout, initialisation) comes from torch's global generator, whose state is checkpointed.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from spikeprune.data._glue import batches, encode, load_glue
from spikeprune.errors import SpikepruneError

#: Environment variable that overrides the number of CPU threads torch uses.
THREADS_ENV = "SPIKEPRUNE_THREADS"


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
def load_split(task: str, split: str, glue_dir: str | Path | None, tokenizer: Any,
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


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, params: list[Tensor]) -> None:
    """Backward, clip the gradient norm to 1, step: one update of every training stage."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def train_loop(modules: dict[str, nn.Module], step_loss: Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, float]]],
               encoded: dict[str, list], *, batch_size: int, epochs: int, lr: float, warmup_ratio: float,
               weight_decay: float, seed: int, pad_id: int, device: str | torch.device,
               ckpt_dir: Path, checkpoint_every: int, desc: str, bucket: int = 0,
               after_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """AdamW + linear warmup/decay over shuffled, dynamically padded batches, resumable.

    ``modules`` are what the optimizer trains (their parameters that require a gradient) and the
    checkpoint stores (e.g. the student and the distillation projections). ``step_loss(batch)``
    returns the loss and numbers to show; ``after_step()`` runs after each update, before a checkpoint.
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
            "warmup_ratio": warmup_ratio, "weight_decay": weight_decay, "seed": seed, "bucket": bucket}
    step, elapsed = 0, 0.0
    latest = _latest_checkpoint(ckpt_dir)
    if latest is not None:
        meta = _load_checkpoint(latest, modules, optimizer, scheduler, info)
        step, elapsed = meta["step"], meta["elapsed_s"]
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)
    start = time.perf_counter()
    seen = 0
    for epoch in range(step // per_epoch, epochs):
        order = batches(encoded, batch_size, shuffle=True, seed=seed * 100_003 + epoch, pad_id=pad_id, bucket=bucket)
        for batch in itertools.islice(order, step - epoch * per_epoch, None):
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, shown = step_loss(batch)
            optimizer_step(loss, optimizer, params)
            scheduler.step()
            if after_step is not None:
                after_step()
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


def finish_stage(tmp: Path, final: Path, ckpt_dir: Path, summary: dict[str, Any]) -> Path:
    """Publish a finished stage: ``final`` appears complete or not at all; checkpoints go."""
    (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    if ckpt_dir.parent.is_dir() and not any(ckpt_dir.parent.iterdir()):
        ckpt_dir.parent.rmdir()
    return final


def stage_done(folder: Path) -> bool:
    """Stages are published by rename, so the summary file marks a complete folder."""
    return (folder / "training.json").is_file()
