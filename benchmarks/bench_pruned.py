"""Measured CPU time of pruned models against their reduction in dense and in synaptic operations.

Each config is built from the base with ``spikeprune.models.prune`` (physically smaller weights)
and ``set_timesteps``; all of them run the same batches, interleaved in the same rounds (batched
simulation, record=False). Per config:

- time: median seconds of one pass over the batches, and its ratio to the dense model's;
- dense MACs: what a non-spiking accelerator would do, Σ over layers of T_l · Σ(in × out) of the
  layer's six Linears (query, key, value, attn_out, intermediate, output), per real token, summed
  over the tokens of an example (attention products, embedding and classifier left out);
- SOPs: the counted synaptic operations of ``spikeprune.count_ops`` (from one record=True pass),
  which also follow the firing rates the pruning leaves.

Without ``--prepared`` the importance scores are random: fine for timing, meaningless for accuracy.

    .venv/bin/python benchmarks/bench_pruned.py [--prepared runs/prepared/sst2-quick]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

from spikeprune.models import prune, set_timesteps  # noqa: E402
from spikeprune.models import CompressionConfig  # noqa: E402
from spikeprune.costs import count_ops  # noqa: E402
from spikeprune.models import SpikingBertForSequenceClassification  # noqa: E402

NAME = "bench_pruned"
#: Config name -> which of heads, FFN neurons, timesteps are halved.
CONFIGS: dict[str, tuple[str, ...]] = {
    "dense": (), "heads/2": ("heads",), "ffn/2": ("neurons",), "heads/2+ffn/2": ("heads", "neurons"),
    "T/2": ("timesteps",), "heads/2+ffn/2+T/2": ("heads", "neurons", "timesteps"),
}


def build(base: benchlib.Base, compression: CompressionConfig) -> SpikingBertForSequenceClassification:
    model = prune(base.model, compression.heads, compression.neurons, base.importance)
    return set_timesteps(model, compression.timesteps).eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = benchlib.parser(NAME, __doc__.splitlines()[0], repeats=5, budget=60.0)
    benchlib.add_pass_options(p)
    args = p.parse_args(argv)
    env, base, data, tokens = benchlib.pass_setup(args)
    print(f"model: {base.source}; {benchlib.describe(base.model)}")
    print(f"{args.examples} examples in {len(data)} batches of {args.batch_size}, {tokens / args.examples:.1f} tokens each")

    configs = {name: benchlib.halved(base.model.config, parts) for name, parts in CONFIGS.items()}
    models = {name: build(base, c) for name, c in configs.items()}

    reports = {name: count_ops(m.config, benchlib.one_pass(m, data, record=True)) for name, m in models.items()}
    times = benchlib.interleaved({name: (lambda m=m: benchlib.one_pass(m, data)) for name, m in models.items()},
                                 args.repeats, args.budget, warmup=False)   # the record pass warmed up
    figures, rows = {}, []
    for name, model in models.items():
        report = reports[name]
        dense = benchlib.dense_macs_per_token(model) * tokens / args.examples
        figures[name] = {"compression": configs[name].to_dict(), "seconds": times[name],
                         "median_s": benchlib.median(times[name]), "dense_macs": dense, "sops": report.sops,
                         "energy_uj": report.energy_uj, "parameters": report.parameters}
    ref = figures["dense"]
    for name, f in figures.items():
        f.update(time_ratio=f["median_s"] / ref["median_s"], dense_macs_ratio=f["dense_macs"] / ref["dense_macs"],
                 sops_ratio=f["sops"] / ref["sops"], energy_ratio=f["energy_uj"] / ref["energy_uj"])
        c = configs[name]
        rows.append([name, benchlib.short(c.heads), benchlib.short(c.neurons), benchlib.short(c.timesteps),
                     benchlib.si(f["parameters"]), f"{f['median_s'] * 1e3:.0f}", f"{f['time_ratio']:.2f}",
                     benchlib.si(f["dense_macs"]), f"{f['dense_macs_ratio']:.2f}",
                     benchlib.si(f["sops"]), f"{f['sops_ratio']:.2f}", f"{f['energy_ratio']:.2f}"])
    rounds = len(times["dense"])
    print(f"\nmedian of {rounds} rounds; ops per example; ratios to dense")
    print(benchlib.table(["config", "heads", "FFN", "T", "params", "ms/pass", "time", "dense MACs", "ratio",
                          "SOPs", "ratio", "energy"], rows))
    return benchlib.finish(args.out, NAME, env, args, {
        "model": base.model.config.to_dict(), "source": base.source, "examples": args.examples,
        "batch_size": args.batch_size, "tokens": tokens, "rounds": rounds, "configs": figures})


if __name__ == "__main__":
    main()
