"""Shared plumbing of the benchmark scripts: arguments, threads, the model and batches, timing, output.

The machine the figures come from may be shared, so nothing here trusts one timing: every figure
is a median over repeated rounds, and every comparison is a ratio of runs interleaved in the same
rounds (round r runs each variant once, in an order rotated by r), so a burst of load from
elsewhere hits all variants alike.

Import this module before torch: it sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment sets
it, ``spikeprune.threads``) before any OpenMP runtime loads. With the default (spinning) policy, idle OpenMP threads of
torch and of numba's parallel IF kernel spin on the cores after every parallel region; when the
cores are also busy with other work, every region then waits for the scheduler, which can make a
forward pass with 2 threads many times slower than with 1 (docs/DESIGN.md §8). Run with
``OMP_WAIT_POLICY=ACTIVE`` to measure the default.
"""
from __future__ import annotations

import os

from spikeprune.threads import default_wait_policy

default_wait_policy()  # first: before torch loads its OpenMP runtime

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import torch
from torch import Tensor

from spikeprune.models import importance_shapes
from spikeprune.models import CompressionConfig, SpikingBertConfig
from spikeprune.data import batches
from spikeprune.models import SimRecord, SpikingBertForSequenceClassification
from spikeprune.errors import SpikepruneError
from spikeprune.records import PreparedRecord, TrialRecord

if TYPE_CHECKING:
    from spikeprune.trial import BaseBundle

#: The random stand-in for a prepared base: MiniLM-L6 shaped (6 layers, width 384, 12 heads of
#: 32, FFN 1536), BERT's vocabulary, the SpikingBERT family (the config's default) at T = 4.
MINILM = SpikingBertConfig(vocab_size=30522, hidden_size=384, num_layers=6, head_dim=32, heads=12,
                           intermediate_sizes=1536, timesteps=4, task="sst2")
#: ``--quick``: a model small enough that a whole script runs in a second or two (for tests).
TINY = SpikingBertConfig(vocab_size=1200, hidden_size=32, num_layers=2, head_dim=8, heads=4,
                         intermediate_sizes=64, timesteps=2, max_position_embeddings=64, task="sst2")
#: Random examples are [CLS] + word pieces + [SEP], SST-2 dev sized (BERT tokens, inclusive).
MIN_TOKENS, MAX_TOKENS = 10, 50
CLS_ID, SEP_ID, FIRST_WORD_ID = 101, 102, 1000


def parser(name: str, description: str, *, repeats: int, budget: float) -> argparse.ArgumentParser:
    """The options every benchmark shares; the script adds its own."""
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    p.add_argument("--prepared", type=Path, default=None,
                   help="a prepared base (`spikeprune prepare`); default: a random MiniLM-shaped model")
    p.add_argument("--glue-dir", type=Path, default=None,
                   help="GLUE data for --prepared (default: the one recorded in its prepare.json)")
    p.add_argument("--threads", type=int, default=2, help="torch and numba threads (default 2)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed rounds per setting, at most (default {repeats})")
    p.add_argument("--budget", type=float, default=budget,
                   help=f"seconds of timed rounds per setting after which no new round starts "
                        f"(at least one always runs; 0 = no limit; default {budget:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random model, scores and batches")
    p.add_argument("--quick", action="store_true", help="smallest settings and a tiny model: checks the script runs")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks") / f"{name}.json",
                   help=f"JSON file of the figures (default runs/benchmarks/{name}.json)")
    return p


def add_pass_options(p: argparse.ArgumentParser) -> None:
    """The options of the scripts that time passes over dev batches."""
    p.add_argument("--examples", type=int, default=64, help="examples per pass (default 64)")
    p.add_argument("--batch-size", type=int, default=16, help="default 16")


def pass_setup(args: argparse.Namespace) -> tuple[dict[str, Any], "Base", list[dict[str, Tensor]], int]:
    """``setup``, the base and the batches one pass runs, and their real tokens (``--quick``:
    8 examples in batches of 4, one round)."""
    if args.quick:
        args.examples, args.batch_size, args.repeats = 8, 4, 1
    env = setup(args)
    base = load_base(args, args.examples)
    data = base.batches(args.examples, args.batch_size)
    return env, base, data, sum(int(b["attention_mask"].sum()) for b in data)


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Fix the thread counts and describe the machine; printed and stored with every result."""
    if args.threads < 1:
        sys.exit(f"error: --threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch.manual_seed(args.seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = {"threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
           "cores": os.cpu_count(), "usable_cores": cores, "load_avg_start": _load(),
           "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    print(f"threads: torch {env['threads']}, numba {env['numba_threads']}; cores: {env['cores']} "
          f"({cores} usable); load average {env['load_avg_start']}; torch {env['torch']}")
    return env


def _load() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


# ---------------------------------------------------------------------------- model and data
@dataclass
class Base:
    """The model a benchmark runs and the examples it feeds it (unpadded, as glue.encode gives)."""

    model: SpikingBertForSequenceClassification
    importance: dict[str, Tensor]
    examples: dict[str, list]
    pad_id: int
    source: str

    def batches(self, count: int, batch_size: int) -> list[dict[str, Tensor]]:
        """The first ``count`` examples in padded batches, grouped by length as evaluation does."""
        if count > len(self.examples["input_ids"]):
            sys.exit(f"error: {count} examples asked for but the base has {len(self.examples['input_ids'])}")
        head = {k: v[:count] for k, v in self.examples.items()}
        return list(batches(head, batch_size, sort_by_length=True, pad_id=self.pad_id))


def load_base(args: argparse.Namespace, examples: int) -> Base:
    """``--prepared``: its student, importance scores and (shuffled) dev set. Otherwise a random
    MiniLM-shaped student (tiny with ``--quick``), random scores and random SST-2-sized examples."""
    if args.prepared is not None:
        from spikeprune.trial import BaseBundle

        bundle = BaseBundle.load(args.prepared, args.glue_dir)
        return Base(bundle.student.eval(), bundle.importance, bundle.dev, bundle.pad_id,
                    f"prepared {args.prepared} ({bundle.task} dev)")
    config = TINY if args.quick else MINILM
    gen = torch.Generator().manual_seed(args.seed)
    model = SpikingBertForSequenceClassification(config).eval()
    scores = {key: torch.rand(size, generator=gen) for key, size in importance_shapes(config).items()}
    rng = np.random.default_rng(args.seed)
    ids = [[CLS_ID, *rng.integers(FIRST_WORD_ID, config.vocab_size, n - 2).tolist(), SEP_ID]
           for n in rng.integers(MIN_TOKENS, MAX_TOKENS + 1, examples)]
    data = {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
            "token_type_ids": [[0] * len(x) for x in ids], "labels": rng.integers(0, 2, examples).tolist()}
    name = "tiny" if args.quick else "MiniLM-shaped"
    return Base(model, scores, data, 0, f"random {name} model, random {MIN_TOKENS}-{MAX_TOKENS} token examples")


def majority(base: BaseBundle, examples: int) -> dict[str, float]:
    """Metrics of always answering the most frequent of the first ``examples`` dev labels (the mean
    score for regression): the floor a student must clear to have learnt anything."""
    from spikeprune.data import compute_metrics

    labels = np.array(base.dev["labels"][:examples])
    if base.student.config.is_regression:
        guess = np.full(len(labels), labels.mean())
    else:
        guess = np.full(len(labels), Counter(labels.tolist()).most_common(1)[0][0])
    return compute_metrics(base.task, guess, labels)


def describe(model: SpikingBertForSequenceClassification) -> str:
    c = model.config
    return (f"{c.num_layers} layers, hidden {c.hidden_size}, heads {short(c.heads)} of {c.head_dim}, "
            f"FFN {short(c.intermediate_sizes)}, T {short(c.timesteps)}")


def short(values: list) -> str:
    """A per-layer list as one number when all layers agree."""
    return str(values[0]) if len(set(values)) == 1 else str(values)


def si(value: float) -> str:
    """1234567 -> '1.23M': three significant digits and a k/M/G/T suffix."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def halved(config: SpikingBertConfig, parts: tuple[str, ...], **extra: Any) -> CompressionConfig:
    """A compression config keeping the base's per-layer sizes, with ``parts`` (of heads, neurons,
    timesteps) halved, at least 1 left; ``extra`` sets further fields (weight_bits, recovery_steps)."""
    full = {"heads": config.heads, "neurons": config.intermediate_sizes, "timesteps": config.timesteps}
    return CompressionConfig(**{k: [max(1, v // 2) if k in parts else v for v in values]
                                for k, values in full.items()}, **extra).resolve(config)


def inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The model's keyword arguments from a glue batch."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


# -------------------------------------------------------------------------------- timing
def dense_macs_per_token(model: SpikingBertForSequenceClassification) -> int:
    """Σ_l T_l · Σ in×out of layer l's Linears: one token through the network as dense matmuls."""
    return sum(steps * sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, torch.nn.Linear))
               for layer, steps in zip(model.layers, model.config.timesteps))


def one_pass(model: SpikingBertForSequenceClassification, data: list[dict[str, Tensor]], record: bool = False) -> SimRecord:
    """The batched simulation over ``data`` (what the timing loops run); the spike counts with ``record``."""
    total = SimRecord()
    with torch.inference_mode():
        for batch in data:
            out = model(**inputs(batch), mode="batched", record=record)
            if record:
                total.merge(out.record)
    return total


def interleaved(variants: Mapping[str, Callable[[], Any]], repeats: int, budget: float,
                warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each variant per round. Round r runs every variant once, starting at variant r
    (mod count); rounds stop after ``repeats``, or once ``budget`` seconds of rounds have passed
    (``budget`` <= 0: never). ``warmup`` runs one untimed round first."""
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(max(1, repeats)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
        if 0 < budget <= time.perf_counter() - start:
            break
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


# -------------------------------------------------------------------------------- output
def table(header: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns, first one left-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))) for row in [header, *rows])


def finish(path: Path, name: str, env: dict[str, Any], args: argparse.Namespace, figures: dict[str, Any]) -> dict[str, Any]:
    """Write the figures (with the machine, the load and the arguments) as JSON; return them."""
    env = {**env, "load_avg_end": _load()}
    result = {"benchmark": name, "environment": env,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **figures}
    write_json(path, result)
    print(f"\nload average at the end {env['load_avg_end']}; figures written to {path}")
    return result


def write_figures(figures: dict[str, Any], html: Path, formats: list[str]) -> None:
    """Static images of plotly ``figures`` beside ``html`` (named after it); call after ``finish``,
    since they need a browser and a missing one must not lose the JSON."""
    if formats:
        from spikeprune.results import write_images

        for path in write_images(figures, html.parent, formats, stem=html.stem):
            print(f"image: {path}")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------ search benchmarks
def trial_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options of the scripts that run the trial function on a prepared base's dev set."""
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    p.add_argument("--prepared", type=Path, required=True, help="prepared base (`spikeprune prepare`)")
    p.add_argument("--glue-dir", default=None, help="GLUE folder (default: the one the base recorded)")
    p.add_argument("--max-examples", type=int, default=None, help="first N dev examples only")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks") / f"{name}.json")
    return p


def search_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that run real searches (Optuna driver, Ray workers)."""
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    p.add_argument("--run-dir", type=Path, default=Path("runs/benchmarks"),
                   help="where the studies' journals go (default runs/benchmarks); re-running resumes them")
    p.add_argument("--glue-dir", type=Path, default=None,
                   help="GLUE data (default: the one recorded in each prepare.json)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers, one CPU each (default 2)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks") / f"{name}.json",
                   help=f"JSON file of the figures (default runs/benchmarks/{name}.json)")
    return p


def search_setup(args: argparse.Namespace) -> dict[str, Any]:
    """Describe the machine (searches set their own threads: one per worker)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = {"cores": os.cpu_count(), "usable_cores": cores, "workers": args.workers, "load_avg_start": _load(),
           "torch": torch.__version__, "python": platform.python_version(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    print(f"workers: {args.workers}; cores: {env['cores']} ({cores} usable); load average {env['load_avg_start']}")
    return env


def prepared_task(prepared: Path) -> str:
    """The GLUE task a prepared base was made for (its prepare.json)."""
    try:
        return PreparedRecord.read(prepared).task
    except SpikepruneError as e:
        sys.exit(f"error: {e}")


def span_s(trials: list[Any]) -> float:
    """Seconds from the first trial's start to the last one's end: the study's search time,
    whichever runs (resumes) it took."""
    done = [t for t in trials if t.datetime_start is not None and t.datetime_complete is not None]
    if not done:
        return 0.0
    return (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()


def trial_point(trial: Any) -> dict[str, Any] | None:
    """A finished, fully evaluated trial as a flat dict of what it measured; None for any other."""
    from optuna.trial import TrialState

    record = TrialRecord.of(trial)
    if trial.state != TrialState.COMPLETE or record.early_stopped or record.report is None:
        return None
    report = record.report
    return {"number": trial.number, "metric": float(record.metrics["metric"]),
            "metrics": {k: float(v) for k, v in record.metrics.items()}, "sops": float(report["sops"]),
            "energy_uj": float(report["energy_uj"]), "sum_t": float(report["sum_t"]),
            "size_mb": float(report["size_mb"]),
            "examples": int(report["examples"] if record.examples is None else record.examples),
            "seconds": float((record.timing or {}).get("total_s", float("nan"))),
            "config": dict(trial.params)}
