"""Simulating a batch in slices (``SpikingBertForSequenceClassification.slice_bytes``) against in one piece, on a prepared base.

A batch of 64 sentences at T = 16 builds spike trains of hundreds of megabytes; each is above
glibc's mmap threshold, so every allocation maps fresh pages and faults them in. The model
therefore simulates each batch in slices whose widest train stays under ``SpikingBertForSequenceClassification.slice_bytes``. This
script times one evaluation pass (record=True, as a trial runs) both ways, interleaved, and checks
that logits and spike counts are identical.

    .venv/bin/python benchmarks/bench_slices.py --prepared runs/prepared/sst2-quick --examples 128 --batch-size 64
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)
import torch  # noqa: E402

from spikeprune.models import SimRecord, SpikingBertForSequenceClassification  # noqa: E402

NAME = "bench_slices"


def main(argv: list[str] | None = None) -> dict:
    p = benchlib.parser(NAME, __doc__.splitlines()[0], repeats=3, budget=600)
    benchlib.add_pass_options(p)
    p.add_argument("--slice-bytes", type=int, default=SpikingBertForSequenceClassification.slice_bytes,
                   help=f"largest spike train per slice (default the model's, {SpikingBertForSequenceClassification.slice_bytes})")
    args = p.parse_args(argv)
    env, base, data, tokens = benchlib.pass_setup(args)
    print(f"{base.source}: {benchlib.describe(base.model)}; {args.examples} examples, {tokens} tokens, "
          f"batches of {args.batch_size}")
    sliced_bytes = args.slice_bytes
    results: dict[str, tuple] = {}

    def variant(limit: int):
        def call() -> None:
            base.model.slice_bytes = limit
            logits = []
            with torch.inference_mode():
                record = SimRecord()
                for batch in data:
                    out = base.model(**benchlib.inputs(batch), mode="batched", record=True)
                    record.merge(out.record)
                    logits.append(out.logits)
            results[name_of[limit]] = (torch.cat(logits), record)
        return call

    name_of = {2**62: "one piece", sliced_bytes: f"slices of {sliced_bytes / 2**20:g} MiB"}
    times = benchlib.interleaved({name: variant(limit) for limit, name in name_of.items()},
                                 args.repeats, args.budget, warmup=False)
    del base.model.slice_bytes
    (a_logits, a_rec), (b_logits, b_rec) = results.values()
    same = bool(torch.equal(a_logits, b_logits)) and a_rec.layers == b_rec.layers
    medians = {name: benchlib.median(t) for name, t in times.items()}
    one, sliced = medians.values()
    rows = [[name, f"{m:.2f}", f"{m / args.examples * 1000:.1f}", str(len(times[name]))] for name, m in medians.items()]
    print(benchlib.table(["variant", "median s", "ms/example", "rounds"], rows))
    print(f"speedup {one / sliced:.2f}x; logits and spike counts identical: {same}")
    result = benchlib.finish(args.out, NAME, env, args, {"times": times, "medians": medians, "speedup": one / sliced,
                                                         "identical": same})
    if not same:
        sys.exit("error: slicing changed the outputs")
    return result


if __name__ == "__main__":
    main()
