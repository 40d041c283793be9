"""What makes a prepared base, and whether a cached one is still that base.

``prepare`` caches its stages in ``<run_root>/prepared/<task>-<preset>/``. A cache may be reused
only when it was made by the same command (``cache_key``: task, preset values, seed, base, GLUE
files) and its files are the ones written (``file_digests``: sizes and SHA-256 recorded in
``prepare.json``). Anything else is refused with the fix, never silently reused. The argument
checks here run before any work, so a bad value costs no training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any

from spikeprune.models._config import RESIDUAL_THRESHOLDS
from spikeprune.models._families import FAMILIES
from spikeprune.errors import SpikepruneError
from spikeprune.records import PreparedRecord

from spikeprune.training._presets import ELASTIC_TARGETS, Preset

#: Preset fields that may be 0 (loss weights, ratios); every other number must be > 0.
MAY_BE_ZERO = ("warmup_ratio", "weight_decay", "hidden_weight", "attention_weight", "logit_weight", "label_weight",
               "length_bucket", "distill_examples", "elastic_examples", "elastic_sampled", "elastic_average")
#: Bookkeeping files that are not part of the base (the records themselves, stage summaries).
NOT_HASHED = (PreparedRecord.FILE, PreparedRecord.KEY_FILE)


def check_preset(p: Preset) -> None:
    """Every budget a positive finite number (``--set distill_examples=-5`` is refused up front)."""
    for name, value in vars(p).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        floor_ok = value >= 0 if name in MAY_BE_ZERO else value > 0
        if not math.isfinite(value) or not floor_ok:
            raise SpikepruneError(f"preset {name}={value!r} must be a finite number "
                                  f"{'>= 0' if name in MAY_BE_ZERO else '> 0'}; fix the --set value")
    if not 0 < p.elastic_min_width <= 1:
        raise SpikepruneError(f"preset elastic_min_width={p.elastic_min_width!r} is the smallest share of heads and "
                              f"neurons trained for; pick a value in (0, 1]")
    if p.family not in FAMILIES:
        raise SpikepruneError(f"preset family={p.family!r} is unknown; use one of {', '.join(FAMILIES)}")
    if p.residual_thresholds not in RESIDUAL_THRESHOLDS:
        raise SpikepruneError(f"preset residual_thresholds={p.residual_thresholds!r} is unknown; use one of "
                              f"{', '.join(RESIDUAL_THRESHOLDS)}")
    if p.elastic_targets not in ELASTIC_TARGETS:
        raise SpikepruneError(f"preset elastic_targets={p.elastic_targets!r} is unknown; use one of {', '.join(ELASTIC_TARGETS)}")
    if p.elastic_average >= 1:
        raise SpikepruneError(f"preset elastic_average={p.elastic_average!r} is the weight average's decay per step; "
                              f"pick a value in [0, 1), e.g. 0.99 (0: off)")
    if p.calibration_percentile > 100:
        raise SpikepruneError(f"preset calibration_percentile={p.calibration_percentile!r} must be at most 100")


def check_device(device: str) -> None:
    """The torch device exists here (``--device cuda`` on a CPU-only torch is one line, not a traceback)."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise SpikepruneError(f"--device {device!r} is not a torch device; use cpu or cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SpikepruneError(f"--device {device}: this torch has no CUDA device ({torch.__version__}); use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise SpikepruneError(f"--device {device!r}: only cpu and cuda are supported")


def check_base(base: str | None) -> None:
    """A local --base folder must hold a model config and a tokenizer (hub ids are checked on load)."""
    if base is None:
        return
    path = Path(base).expanduser()
    looks_local = base.startswith(("/", ".", "~")) or base.count("/") != 1
    if not path.exists():
        if looks_local:
            raise SpikepruneError(f"--base {base} does not exist; give a checkpoint folder or a hub id")
        return
    if not path.is_dir():
        raise SpikepruneError(f"--base {base} is a file; give a checkpoint folder with config.json and a tokenizer")
    if not (path / "config.json").is_file():
        raise SpikepruneError(f"--base {base} has no config.json; give a Hugging Face checkpoint folder")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise SpikepruneError(f"--base {base} has no tokenizer (tokenizer.json or vocab.txt); "
                              f"save the tokenizer into it too (tokenizer.save_pretrained)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def glue_digest(task_folder: Path | None) -> dict[str, Any]:
    """Sizes and hashes of the task's GLUE files (the data a base was trained and scored on)."""
    if task_folder is None or not task_folder.is_dir():
        return {}
    return {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(task_folder.glob("*.tsv"))}


def cache_key(task: str, p: Preset, seed: int, base: str, data: dict[str, Any]) -> dict[str, Any]:
    """Everything that made a base: two commands with equal keys make the same base."""
    return {"task": task, "preset": p.to_dict(), "seed": seed, "base": base, "data": data}


def key_difference(had: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first part of the key that differs, for the refusal message (None: equal)."""
    for name in ("task", "seed", "base", "data"):
        if had.get(name) != wanted.get(name):
            return f"{name} {had.get(name)!r:.80} (this command: {wanted.get(name)!r:.80})" if name != "data" else \
                "GLUE files (changed since)"
    # A field newer than the base's record was made at its default (before it existed, no preset changed it).
    defaults = {f.name: f.default for f in dataclasses.fields(Preset) if f.default is not dataclasses.MISSING}
    had_preset = had.get("preset", {})
    changed = sorted(k for k, v in wanted["preset"].items() if had_preset.get(k, defaults.get(k)) != v)
    return f"set of preset values ({', '.join(changed)} differ)" if changed else None


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file of a prepared base, by path relative to it."""
    return {str(f.relative_to(folder)): {"size": f.stat().st_size, "sha256": _sha256(f)}
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name not in NOT_HASHED}


def damaged_file(folder: Path, recorded: dict[str, dict[str, Any]]) -> str | None:
    """The first recorded file that is missing or changed (sizes first: a truncation is cheap to see)."""
    for name, want in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want.get("size"):
            return f"{name} has {path.stat().st_size} bytes, {want.get('size')} when written"
    for name, want in recorded.items():
        if _sha256(folder / name) != want.get("sha256"):
            return f"{name} changed since it was written (SHA-256 differs)"
    return None


def check_cached(out: Path, done: PreparedRecord, key: dict[str, Any]) -> str | None:
    """Refuse a cached base the command did not make or whose files changed; a note when it
    cannot be verified (a ``prepare.json`` older than keys and digests), else None."""
    fix = f"prepare into another --run-dir, or delete {out} to rebuild it"
    had = done.key if done.key is not None else {  # an older record: compare what it kept
        "task": done.task, "preset": done.preset_config, "seed": done.seed, "base": done.base,
        "data": key["data"]}
    differs = key_difference(had, key)
    if differs is not None:
        raise SpikepruneError(f"{out} was prepared with another {differs}; {fix}")
    if done.files is None:
        return f"note: {out} was prepared by an older spikeprune that recorded no file digests; its files are unverified"
    damage = damaged_file(out, done.files)
    if damage is not None:
        raise SpikepruneError(f"cached base {out} is damaged: {damage}; {fix}")
    return None
