"""Time-batched against lockstep simulation, and what spike counting adds (docs/DESIGN.md §3).

For each batch size and number of timesteps T, three variants run interleaved in the same rounds:
``batched`` (record=False), ``batched+rec`` (record=True, as evaluation runs) and ``lockstep+rec``.
Printed per setting: median seconds, the speedup lockstep+rec / batched+rec (both count, so the
ratio is like for like), the counting overhead batched+rec / batched - 1 (docs/RESULTS.md holds its
target), and whether the outputs are identical: logits of all three, and the spike records of
the two record=True runs, compared exactly.

One untimed warmup round runs at the first T of each batch size (JIT, thread pools, allocator).

    .venv/bin/python benchmarks/bench_simulation.py [--batch-sizes 1 16 64] [--timesteps 4 8 16 32]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)
import torch  # noqa: E402

from spikeprune.models import set_timesteps  # noqa: E402
from spikeprune.models import SpikingOutput  # noqa: E402

NAME = "bench_simulation"
VARIANTS = {"batched": ("batched", False), "batched+rec": ("batched", True), "lockstep+rec": ("lockstep", True)}


def run_setting(base: benchlib.Base, batch: dict[str, torch.Tensor], steps: int, args: Any,
                warmup: bool) -> dict[str, Any]:
    """Time the three variants on one batch at ``steps`` timesteps and compare their outputs."""
    model = set_timesteps(base.model, steps)
    outputs: dict[str, SpikingOutput] = {}

    def variant(name: str):
        mode, record = VARIANTS[name]

        def call() -> None:
            with torch.inference_mode():
                outputs[name] = model(**benchlib.inputs(batch), mode=mode, record=record)
        return call

    times = benchlib.interleaved({name: variant(name) for name in VARIANTS}, args.repeats, args.budget, warmup)
    med = {name: benchlib.median(t) for name, t in times.items()}
    logits_equal = all(torch.equal(outputs["batched"].logits, outputs[name].logits) for name in VARIANTS)
    records_equal = outputs["batched+rec"].record == outputs["lockstep+rec"].record
    return {
        "batch_size": int(batch["input_ids"].shape[0]), "timesteps": steps,
        "padded_length": int(batch["input_ids"].shape[1]), "tokens": int(batch["attention_mask"].sum()),
        "rounds": len(times["batched"]), "seconds": times, "median_s": med,
        "speedup_lockstep_over_batched": med["lockstep+rec"] / med["batched+rec"],
        "counting_overhead": med["batched+rec"] / med["batched"] - 1.0,
        "logits_equal": logits_equal, "records_equal": records_equal,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = benchlib.parser(NAME, __doc__.splitlines()[0], repeats=5, budget=15.0)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="default 1 16 (add 64 if you like)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[4, 8, 16, 32], help="default 4 8 16 32")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.timesteps, args.repeats = [1, 4], [2], 1
    env = benchlib.setup(args)
    base = benchlib.load_base(args, max(args.batch_sizes))
    print(f"model: {base.source}; {benchlib.describe(base.model)}")

    rows, settings = [], []
    for batch_size in args.batch_sizes:
        batch = base.batches(batch_size, batch_size)[0]
        for i, steps in enumerate(args.timesteps):
            s = run_setting(base, batch, steps, args, warmup=i == 0)
            settings.append(s)
            m = s["median_s"]
            rows.append([str(batch_size), str(steps), f"{s['padded_length']}/{s['tokens']}", str(s["rounds"]),
                         f"{m['batched'] * 1e3:.1f}", f"{m['batched+rec'] * 1e3:.1f}", f"{m['lockstep+rec'] * 1e3:.1f}",
                         f"{s['speedup_lockstep_over_batched']:.2f}x", f"{s['counting_overhead'] * 100:+.1f}%",
                         "yes" if s["logits_equal"] else "NO", "yes" if s["records_equal"] else "NO"])
            print(f"  B={batch_size} T={steps}: {s['rounds']} rounds", flush=True)
    print("\nmedian ms per forward (B = batch size, width/tokens = padded length / real tokens of the batch)")
    print(benchlib.table(["B", "T", "width/tokens", "rounds", "batched", "batched+rec", "lockstep+rec",
                          "lockstep/batched", "counting", "logits equal", "records equal"], rows))
    identical = all(s["logits_equal"] and s["records_equal"] for s in settings)
    worst = max(s["counting_overhead"] for s in settings)
    print(f"\noutputs identical in every setting: {'yes' if identical else 'NO'}; "
          f"largest counting overhead {worst * 100:+.1f}% (target: at most +10%)")
    return benchlib.finish(args.out, NAME, env, args, {
        "model": base.model.config.to_dict(), "source": base.source, "settings": settings,
        "all_identical": identical, "max_counting_overhead": worst})


if __name__ == "__main__":
    main()
