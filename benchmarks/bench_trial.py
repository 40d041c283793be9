"""Where a search trial's time goes: compress, recover, evaluate, count (``spikeprune.run_trial``).

Needs a prepared base (``--prepared``). Each config runs ``run_trial`` once per round, configs
interleaved in the same rounds; per config the median seconds of each kernel from the trial's own
timing (compress_s = pruning + timesteps + quantization, recover_s = the distillation recovery
including loading its teacher and data, eval_s = batched simulation of the dev examples with spike
recording, count_s = count_ops) plus "other": the rest of run_trial's wall time (bootstrap interval
of the metric, bookkeeping). Shares are of the sum of those medians.

A tiny base for trying the script out (seconds):
    .venv/bin/spikeprune prepare --task sst2 --preset tiny --glue-dir /work/shared/glue --run-dir /tmp/bench-run
    .venv/bin/python benchmarks/bench_trial.py --prepared /tmp/bench-run/prepared/sst2-tiny
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

from spikeprune.trial import BaseBundle
from spikeprune.trial import TrialResult, run_trial  # noqa: E402

NAME = "bench_trial"
#: The kernels of a trial, in the order they run; "other" is wall time outside the trial's timing.
KERNELS: tuple[str, ...] = ("compress", "recover", "eval", "count", "other")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = benchlib.parser(NAME, __doc__.splitlines()[0], repeats=3, budget=60.0)
    p.add_argument("--max-examples", type=int, default=256,
                   help="dev examples per trial, as a search fidelity (default 256; 0 = the whole dev set)")
    p.add_argument("--recovery-steps", type=int, default=8,
                   help="recovery steps of the recovering config (default 8; 0 leaves that config out)")
    args = p.parse_args(argv)
    if args.prepared is None:
        p.error("--prepared is required: a trial needs a real teacher, dev set and importance scores "
                "(`spikeprune prepare --preset tiny` makes one in seconds)")
    if args.quick:
        args.max_examples, args.recovery_steps, args.repeats = 16, 1, 1
    env = benchlib.setup(args)
    t0 = time.perf_counter()
    base = BaseBundle.load(args.prepared, args.glue_dir)
    load_s = time.perf_counter() - t0
    cfg = base.student.config
    max_examples = args.max_examples or None
    examples = min(max_examples or base.dev_size, base.dev_size)
    print(f"base: {args.prepared} ({base.task}, {base.dev_size} dev examples; loaded in {load_s:.1f} s); "
          f"{benchlib.describe(base.student)}")
    print(f"{examples} dev examples per trial, batches of {base.batch_size}")

    configs = {
        "dense": benchlib.halved(cfg, ()),
        "heads/2+ffn/2": benchlib.halved(cfg, ("heads", "neurons")),
        "heads/2+ffn/2+T/2, 4-bit": benchlib.halved(cfg, ("heads", "neurons", "timesteps"), weight_bits=4),
    }
    if args.recovery_steps:
        configs[f"heads/2+ffn/2, recover {args.recovery_steps}"] = benchlib.halved(
            cfg, ("heads", "neurons"), recovery_steps=args.recovery_steps)
    results: dict[str, list[TrialResult]] = {name: [] for name in configs}
    wall: dict[str, list[float]] = {name: [] for name in configs}

    def trial(name: str):
        def call() -> None:
            t = time.perf_counter()
            results[name].append(run_trial(base, configs[name], max_examples=max_examples, seed=args.seed))
            wall[name].append(time.perf_counter() - t)
        return call

    # Warm up on a few examples (JIT, thread pools) without a full round of trials.
    run_trial(base, configs["dense"], max_examples=min(8, examples), seed=args.seed)
    benchlib.interleaved({name: trial(name) for name in configs}, args.repeats, args.budget, warmup=False)

    figures, rows = {}, []
    for name, runs in results.items():
        kernels = {k: [r.timing[f"{k}_s"] for r in runs] for k in KERNELS[:-1]}
        kernels["other"] = [w - r.timing["total_s"] for w, r in zip(wall[name], runs)]
        med = {k: benchlib.median(v) for k, v in kernels.items()}
        total = sum(med.values())
        shares = {k: v / total for k, v in med.items()}
        last = runs[-1]
        figures[name] = {"compression": configs[name].to_dict(), "rounds": len(runs), "wall_s": wall[name],
                         "kernel_s": kernels, "median_s": med, "shares": shares,
                         "eval_examples_per_s": last.examples / med["eval"], "metric": last.metrics["metric"],
                         "sops": last.report.sops}
        rows.append([name, str(len(runs)), f"{total:.2f}", *(f"{shares[k] * 100:.1f}%" for k in KERNELS),
                     f"{last.examples / med['eval']:.1f}", f"{last.metrics['metric']:.4f}"])
    print("\nmedian seconds per trial and each kernel's share")
    print(benchlib.table(["config", "rounds", "trial s", *KERNELS, "eval ex/s", "metric"], rows))
    return benchlib.finish(args.out, NAME, env, args, {
        "prepared": str(args.prepared), "task": base.task, "model": cfg.to_dict(), "load_s": load_s,
        "examples": examples, "batch_size": base.batch_size, "configs": figures})


if __name__ == "__main__":
    main()
