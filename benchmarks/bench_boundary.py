"""Boundary rules between layers of different timesteps: accuracy against synaptic operations.

For a few per-layer timestep schedules, evaluates a SpikingBERT-family student (the family the
rules apply to; a converted student re-times its trains instead) with each rule of
``spikeprune.models.BOUNDARY_RULES`` (``repeat``: the last T_l steps of the previous train, cycling;
``rate``: re-encode its average rate) and prints metric and SOPs per example, so the default can
be chosen by accuracy at equal operations.

    python benchmarks/bench_boundary.py --prepared runs/prepared/sst2-quick --max-examples 300

(``runs/prepared/sst2-quick`` made with ``--set family=spikingbert --set timesteps=4``.)
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

from spikeprune.models import BOUNDARY_RULES, CompressionConfig  # noqa: E402
from spikeprune.trial import BaseBundle
from spikeprune.trial import build_compressed, measure  # noqa: E402

#: Per-layer timesteps for a 6-layer student at T = 4: shrinking, growing and alternating.
SCHEDULES: list[list[int]] = [[4, 4, 3, 3, 2, 2], [2, 2, 3, 3, 4, 4], [4, 2, 4, 2, 4, 2]]


def main(argv: list[str] | None = None) -> dict:
    args = benchlib.trial_parser("bench_boundary", __doc__.splitlines()[0]).parse_args(argv)

    base = BaseBundle.load(args.prepared, args.glue_dir)
    layers = base.student.config.num_layers
    rows = []
    print(f"{'timesteps':22s} {'rule':7s} {'metric':>7s} {'SOPs':>10s}")
    for schedule in SCHEDULES:
        if len(schedule) != layers:
            continue
        for rule in BOUNDARY_RULES:
            model, resolved, timing = build_compressed(base, CompressionConfig(timesteps=schedule))
            model.config = dataclasses.replace(model.config, boundary=rule)
            result = measure(base, model, resolved, timing, max_examples=args.max_examples)
            rows.append({"timesteps": schedule, "rule": rule, "metric": result.metrics["metric"],
                         "sops": result.report.sops, "examples": result.examples})
            print(f"{str(schedule):22s} {rule:7s} {result.metrics['metric']:7.4f} {result.report.sops:10.4g}", flush=True)
    benchlib.write_json(args.out, rows)
    print(f"wrote {args.out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
