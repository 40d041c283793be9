"""Boundary rules between layers of different timesteps: accuracy against synaptic operations.

For a few per-layer timestep schedules, evaluates the prepared student with each rule of
``models.config.BOUNDARY_RULES`` (``repeat``: the last T_l steps of the previous train, cycling;
``rate``: re-encode its average rate) and prints metric and SOPs per example, so the default can
be chosen by accuracy at equal operations.

    python benchmarks/bench_boundary.py --prepared runs/prepared/sst2-quick --max-examples 300
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from spikeprune.models.config import BOUNDARY_RULES, CompressionConfig
from spikeprune.models.trial import BaseBundle, build_compressed, measure

#: Per-layer timesteps for the 6-layer, T=4 quick student: shrinking, growing and alternating.
SCHEDULES: list[list[int]] = [[4, 4, 3, 3, 2, 2], [2, 2, 3, 3, 4, 4], [4, 2, 4, 2, 4, 2]]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, required=True, help="prepared base (`spikeprune prepare`)")
    p.add_argument("--glue-dir", default=None, help="GLUE folder (default: the one the base recorded)")
    p.add_argument("--max-examples", type=int, default=None, help="first N dev examples only")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/bench_boundary.json"))
    args = p.parse_args(argv)

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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
