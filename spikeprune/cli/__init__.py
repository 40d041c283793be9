"""The `spikeprune` command: one subcommand per step of the workflow.

This module defines the options; ``commands`` holds the handlers, which call the public Python
API. Nothing heavy (torch, Ray, Optuna) is imported until a handler runs, so ``--help`` is quick.
Bad input surfaces as ``SpikepruneError``: one line, exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from spikeprune.threads import default_wait_policy

from spikeprune.cli import commands as c
from spikeprune.cli.plumbing import (FINITE, NATURAL, NON_NEGATIVE, POSITIVE, POSITIVE_INT, ArgumentParser, add_glue_dir, add_run_dir,
                       add_study_args, port, run_handler)

DESCRIPTION = """\
Compress spiking BERT models by search: attention heads and FFN neurons kept per layer,
timesteps per layer and weight bit widths, scored on a GLUE metric against counted synaptic
operations, energy, latency and size. The result is a Pareto front you can explore and export.

typical workflow:
  spikeprune prepare --task sst2 --glue-dir ../shared/glue     teacher + spiking student
  spikeprune evaluate --prepared runs/prepared/sst2-quick --config c.yaml
  spikeprune demo --glue-dir ../shared/glue                    the whole job on the defaults
"""


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    from spikeprune.training import PRESETS

    p.add_argument("--task", default="sst2", help="GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli (default sst2)")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="training budget: quick = minutes on a laptop CPU, full = GPU-sized, tiny = tests (default quick)")
    p.add_argument("--base", default=None,
                   help="BERT-family teacher checkpoint, local folder or hub id (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--device", default="cpu", help="torch device for training, e.g. cpu or cuda (default cpu)")
    p.add_argument("--seed", type=NATURAL, default=0, help="random seed (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one field of the preset, e.g. --set distill_examples=4000 (repeatable)")
    add_glue_dir(p, recorded=False)
    add_run_dir(p, "prepared models, studies and reports")


def _add_search_args(p: argparse.ArgumentParser) -> None:
    from spikeprune.search import SearchSettings
    from spikeprune.spaces import SAMPLERS

    d = SearchSettings(prepared="")
    p.add_argument("--prepared", required=True, type=Path, help="prepared base folder (from `spikeprune prepare`)")
    p.add_argument("--space", default=d.space, help="search space: a preset name (joint, spatial, temporal, "
                   "quantization) or a YAML file (default joint)")
    p.add_argument("--task", default=None, help="GLUE task; checked against the prepared base when given")
    p.add_argument("--study", dest="study_name", default=d.study_name,
                   help="study name; re-running with the same name resumes it (default search)")
    p.add_argument("--n-trials", type=POSITIVE_INT, default=d.n_trials,
                   help=f"COMPLETE trials the study should hold, counting earlier runs (default {d.n_trials})")
    p.add_argument("--workers", type=POSITIVE_INT, default=d.workers, help=f"evaluations in flight (default {d.workers})")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL (postgresql+psycopg2://user@host:port/db) or "
                   "journal file; default RUN_DIR/STUDY/journal.log")
    add_run_dir(p)
    p.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                   help="Optuna sampler (default: the space's, else tpe); guided proposes configs on the predicted "
                        "front from the base's spike statistics and a sensitivity profile it measures once and "
                        "caches beside the base")
    p.add_argument("--profile-examples", type=POSITIVE_INT, default=d.profile_examples,
                   help=f"dev examples per sensitivity probe of the guided sampler (default {d.profile_examples})")
    p.add_argument("--seed", type=NATURAL, default=d.seed, help="seed of the sampler and of every trial (default 0)")
    p.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default: start a local one)")
    p.add_argument("--cpus-per-trial", type=POSITIVE, default=d.cpus_per_trial, help="CPUs per evaluation (default 1)")
    p.add_argument("--gpus-per-trial", type=NON_NEGATIVE, default=d.gpus_per_trial, help="GPUs per evaluation (default 0)")
    add_glue_dir(p)
    p.add_argument("--energy", default=None, help="energy model preset, overriding the space's")
    p.add_argument("--max-examples", type=POSITIVE_INT, default=None, help="evaluate on the first N dev examples only")
    p.add_argument("--no-early-stopping", dest="early_stopping", action="store_false",
                   help="evaluate every trial on the whole dev set")
    p.add_argument("--max-failures", type=POSITIVE_INT, default=d.max_failures,
                   help=f"stop after this many failed trials (default {d.max_failures})")
    p.add_argument("--trial-timeout", type=POSITIVE, default=None, metavar="SECONDS",
                   help="kill and fail a trial that runs longer than this (default: no limit)")
    p.add_argument("--storage-patience", type=NON_NEGATIVE, default=d.storage_patience, metavar="SECONDS",
                   help=f"how long to wait for unreachable storage before stopping (default {d.storage_patience:g})")
    p.add_argument("--trial-function", "--kernel", dest="trial_function", default=d.trial_function,
                   metavar="MODULE:FUNCTION", help=f"function the workers run per trial, with run_trial's arguments "
                                                   f"(default {d.trial_function}; --kernel is an old name)")
    p.add_argument("--reference", action="append", default=None, metavar="OBJECTIVE=VALUE",
                   help="worst value the hypervolume counts for an objective, e.g. metric=-0.5 (repeatable; "
                   "default: derived from the dense baseline, or the trials; also the space's `reference` key)")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no live progress line")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="spikeprune", description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="spikeprune " + _version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        return p

    p = add("prepare", c.cmd_prepare, "fine-tune a BERT teacher and distill a spiking student",
            "Fine-tune a BERT teacher on a GLUE task, build a SpikingBERT student from its weights,\n"
            "distill it through surrogate gradients and print both dev scores. Finished stages are\n"
            "cached under RUN_DIR/prepared/<task>-<preset>/ and an interrupted run resumes.")
    _add_prepare_args(p)

    p = add("evaluate", c.cmd_evaluate, "compress the base student by one config and measure it",
            "Apply a compression config (YAML: heads, neurons, timesteps, weight_bits, recovery_steps;\n"
            "each one value or one per layer) to a prepared student, evaluate it on the dev set and\n"
            "print the metric with its bootstrap interval, synaptic operations, energy, latency and size,\n"
            "and what the fp32 ANN teacher, the int8 teacher and the config's integer twin cost on the\n"
            "same tokens, with the spiking energy as a multiple of each.")
    p.add_argument("--prepared", required=True, type=Path, help="prepared base folder (from `spikeprune prepare`)")
    p.add_argument("--config", type=Path, default=None, help="compression config YAML (default: no compression)")
    p.add_argument("--max-examples", type=POSITIVE_INT, default=None, help="evaluate on the first N dev examples only")
    p.add_argument("--energy", default="float45nm", help="energy model: float45nm, int45nm or a .json file "
                                                         "(default float45nm)")
    p.add_argument("--seed", type=NATURAL, default=0, help="random seed (default 0)")
    p.add_argument("--json", type=Path, default=None, help="also write the full result as JSON here")
    add_glue_dir(p)

    p = add("profile", c.cmd_profile, "measure (or show) a base's sensitivity profile for a space",
            "Measure how much compressing each layer along each searched knob of a space hurts the metric,\n"
            "and the base's spike statistics the cost predictor needs: the guided sampler's inputs. Cached\n"
            "in PREPARED/guide/; an interrupted profile resumes, a finished one is shown without running.")
    p.add_argument("--prepared", required=True, type=Path, help="prepared base folder (from `spikeprune prepare`)")
    p.add_argument("--space", default="joint", help="space preset or YAML file (default joint)")
    p.add_argument("--examples", type=POSITIVE_INT, default=64,
                   help="dev examples simulated at each uniform T; surrogate probes see 4x as many (default 64)")
    add_glue_dir(p)

    p = add("search", c.cmd_search, "run or resume a multi-objective compression search",
            "Search the space (heads, FFN neurons, timesteps, bit widths per layer) of a prepared base with\n"
            "an Optuna multi-objective study whose trials run as Ray tasks. The driver is the only writer to\n"
            "storage; re-running with the same --study resumes, re-queuing trials a dead driver left running.")
    _add_search_args(p)

    p = add("status", c.cmd_status, "show a study's progress and Pareto front",
            "Print a study's trial counts, hypervolume and Pareto front (or list the studies in a storage).")
    add_study_args(p, optional=True)

    p = add("check", c.cmd_check, "check (and repair) a study's storage",
            "Check that a study's storage can be read: a journal's torn last record or corrupt lines, records\n"
            "Optuna cannot replay, the study and trial metadata, trials left running. Exit 0 when healthy,\n"
            "1 when damage was found. --repair recovers a torn tail and cuts a journal before its first bad\n"
            "line, keeping what it cuts in a backup file next to it; resuming the search re-runs lost trials.")
    add_study_args(p, optional=True)
    p.add_argument("--repair", action="store_true", help="fix what can be fixed (backups of anything cut are kept)")

    p = add("report", c.cmd_report, "write the interactive HTML report of a study",
            "Write one self-contained HTML file (works offline): the Pareto front with selectable axes\n"
            "and per-layer configs on hover, hypervolume history, per-layer views of the Pareto configs,\n"
            "operations per layer, objective importances and a sortable trials table.")
    add_study_args(p)
    p.add_argument("--out", type=Path, default=None, help="HTML file to write (default RUN_DIR/STUDY/report.html)")
    p.add_argument("--images", nargs="*", default=[], choices=["png", "svg", "pdf"],
                   help="also write static images of the main plots (needs Chromium for kaleido)")

    p = add("trials", c.cmd_trials, "export a study's trials as a table",
            "One row per trial: state, objective values, feasibility, Pareto membership, per-layer\n"
            "parameters, operation counts, timing, and the node, worker and device that ran it.")
    add_study_args(p)
    p.add_argument("--format", choices=["csv", "parquet", "json"], default=None,
                   help="table format (default: from --out's suffix, csv when printing)")
    p.add_argument("--out", type=Path, default=None, help="file to write (default: print CSV/JSON to stdout)")

    p = add("compare", c.cmd_compare, "put the Pareto fronts of several studies side by side",
            "Overlay the fronts of several studies in one HTML page. Studies of one task with the same\n"
            "objectives (e.g. the spatial-only, temporal-only, quantization-only and joint searches) are\n"
            "shown as measured; studies of different tasks (or with --relative) each relative to their\n"
            "own dense student: metric minus the dense student's in points, costs as ratios to its costs,\n"
            "with the config with the fewest SOPs within --max-drop of each dense student.")
    add_study_args(p, many=True)
    p.add_argument("--labels", nargs="+", default=None, help="legend label per study (default: study names)")
    p.add_argument("--relative", action="store_true", default=None,
                   help="normalise each study to its dense student even when all are of one task")
    p.add_argument("--max-drop", type=NON_NEGATIVE, default=0.01,
                   help="metric drop from the dense student the relative table allows (default 0.01: one point)")
    p.add_argument("--out", type=Path, default=Path("runs/compare.html"), help="HTML file to write (default runs/compare.html)")

    p = add("export", c.cmd_export, "export trials as config + packed checkpoint + re-measured metrics",
            "Export one trial (--trial N), every Pareto point (--pareto) or the best trial under a budget\n"
            "(--max-sops X and/or --min-metric Y) as folders holding config.yaml, a packed safetensors\n"
            "model loadable with from_pretrained, and metrics re-measured now. Exits non-zero when a\n"
            "re-measured value differs from the search-time value beyond the stated tolerance.")
    add_study_args(p)
    p.add_argument("--trial", type=NATURAL, default=None, help="export this trial number")
    p.add_argument("--pareto", action="store_true", help="export every trial on the Pareto front")
    p.add_argument("--max-sops", type=NON_NEGATIVE, default=None, help="budget: at most this many synaptic ops per example")
    p.add_argument("--min-metric", type=FINITE, default=None, help="budget: at least this task metric")
    p.add_argument("--out", type=Path, default=None, help="export folder (default RUN_DIR/STUDY/export)")
    p.add_argument("--prepared", type=Path, default=None, help="prepared base (default: the one the study recorded)")
    p.add_argument("--overwrite", action="store_true", help="replace existing exports of the same trials")
    add_glue_dir(p)

    p = add("dashboard", c.cmd_dashboard, "serve optuna-dashboard on a study's storage",
            "Start optuna-dashboard on the study's storage. It listens on 127.0.0.1 unless --host says\n"
            "otherwise.")
    add_study_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port, default=8080, help="port (default 8080)")

    p = add("demo", c.cmd_demo, "run the main job on the embedded defaults",
            "The whole job on the embedded default storage: prepare a teacher and a spiking student\n"
            "(cached after the first run), run a joint search on 2 local Ray workers, write the report\n"
            "and export the config with the fewest synaptic operations whose metric is within\n"
            "--max-drop of the uncompressed student, then print where each result is.")
    _add_prepare_args(p)
    p.add_argument("--space", default="joint", help="search space preset or YAML file (default joint)")
    p.add_argument("--n-trials", type=POSITIVE_INT, default=16, help="complete trials to run (default 16)")
    p.add_argument("--workers", type=POSITIVE_INT, default=2, help="trials in flight on local Ray workers (default 2)")
    p.add_argument("--max-drop", type=NON_NEGATIVE, default=0.01,
                   help="budget for the export: largest metric drop from the uncompressed student (default 0.01)")
    return parser


def _version() -> str:
    from spikeprune import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    default_wait_policy()  # before the options' defaults import anything that loads OpenMP
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_handler(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
