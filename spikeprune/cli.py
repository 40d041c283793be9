"""The `spikeprune` command: one subcommand per step of the workflow.

Each handler only parses arguments and calls the public Python API, so everything the command
does can be done from Python too. Bad input surfaces as ``SpikepruneError``: one line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from spikeprune.models.errors import SpikepruneError

DESCRIPTION = """\
Compress spiking BERT models by search: attention heads and FFN neurons kept per layer,
timesteps per layer and weight bit widths, scored on a GLUE metric against counted synaptic
operations, energy, latency and size. The result is a Pareto front you can explore and export.

typical workflow:
  spikeprune prepare --task sst2 --glue-dir ../shared/glue     teacher + spiking student
  spikeprune evaluate --prepared runs/prepared/sst2-quick --config c.yaml
  spikeprune demo --glue-dir ../shared/glue                    the whole job on the defaults
"""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--glue-dir", default=os.environ.get("SPIKEPRUNE_GLUE_DIR"),
                   help="local GLUE folder in the classic layout (<TASK>/train.tsv, dev.tsv); "
                        "default $SPIKEPRUNE_GLUE_DIR, else download through `datasets`")
    p.add_argument("--run-dir", default="runs", type=Path,
                   help="where prepared models, studies and reports go (default: ./runs)")


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    from spikeprune.models.train import PRESETS

    p.add_argument("--task", default="sst2", help="GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli (default sst2)")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="training budget: quick = minutes on a laptop CPU, full = GPU-sized, tiny = tests (default quick)")
    p.add_argument("--base", default=None,
                   help="BERT-family teacher checkpoint, local folder or hub id (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--device", default="cpu", help="torch device for training, e.g. cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def cmd_prepare(args: argparse.Namespace) -> int:
    from spikeprune.models.train import prepare

    out = prepare(args.task, args.glue_dir, args.run_dir, preset=args.preset, base=args.base,
                  device=args.device, seed=args.seed)
    print(f"prepared base: {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from spikeprune.models.config import CompressionConfig
    from spikeprune.models.ops import format_report
    from spikeprune.models.trial import BaseBundle, run_trial

    compression = CompressionConfig.load(args.config) if args.config else CompressionConfig()
    base = BaseBundle.load(args.prepared, glue_dir=args.glue_dir)
    result = run_trial(base, compression, max_examples=args.max_examples,
                       seed=args.seed, energy=args.energy)
    print(format_report(result.report))
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    lo, hi = result.metric_ci
    print(f"{base.task} dev ({result.examples} examples): {metrics} (95% CI {lo:.4f}..{hi:.4f})")
    print(f"time: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timing.items()))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from spikeprune.models.train import prepare

    out = prepare(args.task, args.glue_dir, args.run_dir, preset=args.preset, base=args.base,
                  device=args.device, seed=args.seed)
    print(f"prepared base: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikeprune", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="spikeprune " + _version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        return p

    p = add("prepare", cmd_prepare, "fine-tune a BERT teacher and distill a spiking student",
            "Fine-tune a BERT teacher on a GLUE task, build a SpikingBERT student from its weights,\n"
            "distill it through surrogate gradients and print both dev scores. Finished stages are\n"
            "cached under RUN_DIR/prepared/<task>-<preset>/ and an interrupted run resumes.")
    _add_prepare_args(p)
    _add_data_args(p)

    p = add("evaluate", cmd_evaluate, "compress the base student by one config and measure it",
            "Apply a compression config (YAML: heads, neurons, timesteps, weight_bits, recovery_steps;\n"
            "each one value or one per layer) to a prepared student, evaluate it on the dev set and\n"
            "print the metric with its bootstrap interval, synaptic operations, energy, latency and size.")
    p.add_argument("--prepared", required=True, type=Path, help="prepared base folder (from `spikeprune prepare`)")
    p.add_argument("--config", type=Path, default=None, help="compression config YAML (default: no compression)")
    p.add_argument("--max-examples", type=int, default=None, help="evaluate on the first N dev examples only")
    p.add_argument("--energy", default="float45nm", help="energy model preset: float45nm or int45nm (default float45nm)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", type=Path, default=None, help="also write the full result as JSON here")
    p.add_argument("--glue-dir", default=os.environ.get("SPIKEPRUNE_GLUE_DIR"),
                   help="local GLUE folder (default: the one recorded when the base was prepared)")

    p = add("demo", cmd_demo, "run the main job on the embedded defaults",
            "Prepare a teacher and a spiking student on SST-2 with the quick preset (cached after the\n"
            "first run) and print their dev scores.")
    _add_prepare_args(p)
    _add_data_args(p)
    return parser


def _version() -> str:
    from spikeprune import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except SpikepruneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
