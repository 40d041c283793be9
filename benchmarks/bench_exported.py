"""Real CPU speed of exported models against their reduction in operations.

Loads every exported trial under ``--exports`` (the folders ``spikeprune export`` writes, each
with ``model/`` and ``metrics.json``) as users load them (``from_pretrained``: packed weights
unpacked to float) and the uncompressed student of ``--prepared``, runs them on the same dev
batches (batched simulation, record=False), interleaved in the same rounds, and prints per model
the median seconds of one pass and its ratio to the student's, next to the ratios of dense MACs,
counted SOPs (from one record=True pass over the same batches) and weight size.

    .venv/bin/spikeprune export study-sst2-joint --run-dir runs/study --pareto --out runs/study/export-sst2-joint
    .venv/bin/python benchmarks/bench_exported.py --prepared runs/study/prepared/sst2-quick \\
        --exports runs/study/export-sst2-joint
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

from spikeprune.costs import count_ops  # noqa: E402
from spikeprune.models import SpikingBertForSequenceClassification  # noqa: E402

NAME = "bench_exported"
DENSE = "uncompressed"


def exported_models(folder: Path) -> dict[str, tuple[SpikingBertForSequenceClassification, dict[str, Any]]]:
    """trial folder name -> (model loaded from disk, its metrics.json), in name order."""
    found = {}
    for trial in sorted(p for p in folder.iterdir() if (p / "metrics.json").is_file() and (p / "model").is_dir()):
        found[trial.name] = (SpikingBertForSequenceClassification.from_pretrained(trial / "model").eval(),
                             json.loads((trial / "metrics.json").read_text()))
    if not found:
        sys.exit(f"error: {folder} holds no exported trials (folders with model/ and metrics.json); "
                 f"run `spikeprune export STUDY --pareto --out {folder}` first")
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = benchlib.parser(NAME, __doc__.splitlines()[0], repeats=5, budget=60.0)
    p.add_argument("--exports", type=Path, required=True, help="folder of exported trials (`spikeprune export --out`)")
    benchlib.add_pass_options(p)
    args = p.parse_args(argv)
    if args.prepared is None:
        p.error("--prepared is required: the exported models are compared with its uncompressed student")
    env, base, data, tokens = benchlib.pass_setup(args)
    models = {DENSE: (base.model, {})} | exported_models(args.exports)
    print(f"{len(models) - 1} exported models from {args.exports}; {args.examples} dev examples in {len(data)} "
          f"batches of {args.batch_size}, {tokens / args.examples:.1f} tokens each")
    reports = {name: count_ops(m.config, benchlib.one_pass(m, data, record=True)) for name, (m, _) in models.items()}
    times = benchlib.interleaved({name: (lambda m=m: benchlib.one_pass(m, data)) for name, (m, _) in models.items()},
                                 args.repeats, args.budget, warmup=False)  # the record pass warmed up
    figures: dict[str, Any] = {}
    for name, (model, metrics) in models.items():
        report = reports[name]
        figures[name] = {"median_s": benchlib.median(times[name]), "seconds": times[name],
                         "dense_macs": benchlib.dense_macs_per_token(model) * tokens / args.examples,
                         "sops": report.sops, "size_mb": report.size_mb, "timesteps": model.config.timesteps,
                         "heads": model.config.heads, "intermediate_sizes": model.config.intermediate_sizes,
                         "weight_bits": model.config.weight_bits,
                         "dev_metric": (metrics.get("metrics") or {}).get("metric")}
    ref = figures[DENSE]
    rows = []
    for name, f in figures.items():
        f.update(time_ratio=f["median_s"] / ref["median_s"], dense_macs_ratio=f["dense_macs"] / ref["dense_macs"],
                 sops_ratio=f["sops"] / ref["sops"], size_ratio=f["size_mb"] / ref["size_mb"])
        metric = "" if f["dev_metric"] is None else f"{f['dev_metric']:.4f}"
        rows.append([name, metric, f"{f['median_s'] * 1e3:.0f}", f"{f['time_ratio']:.2f}", f"{f['dense_macs_ratio']:.2f}",
                     f"{f['sops_ratio']:.2f}", f"{f['size_ratio']:.2f}"])
    rounds = len(times[DENSE])
    print(f"\nmedian of {rounds} rounds; ratios to the uncompressed student")
    print(benchlib.table(["model", "dev metric", "ms/pass", "time", "dense MACs", "SOPs", "size"], rows))
    return benchlib.finish(args.out, NAME, env, args, {
        "exports": str(args.exports), "examples": args.examples, "batch_size": args.batch_size, "tokens": tokens,
        "rounds": rounds, "models": figures})


if __name__ == "__main__":
    main()
