"""Command-line pieces of the search: arguments, the ``search`` and ``status`` handlers.

``spikeprune search`` / ``spikeprune status`` (spikeprune/cli.py) and ``python -m
spikeprune.search`` share these, so the options are defined once.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from spikeprune.models.errors import SpikepruneError

from .driver import SAMPLERS, SearchSettings, run_search
from .progress import study_status
from .storage import default_storage


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error: ...`` line pointing at ``--help`` (exit code 2),
    like every other bad input; ``spikeprune`` and its subcommands use it too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    d = SearchSettings(prepared="")
    p.add_argument("--prepared", required=True, type=Path, help="prepared base folder (from `spikeprune prepare`)")
    p.add_argument("--space", default=d.space, help="search space: a preset name (joint, spatial, temporal, "
                   "quantization) or a YAML file (default joint)")
    p.add_argument("--task", default=None, help="GLUE task; checked against the prepared base when given")
    p.add_argument("--study", dest="study_name", default=d.study_name,
                   help="study name; re-running with the same name resumes it (default search)")
    p.add_argument("--n-trials", type=int, default=d.n_trials,
                   help=f"COMPLETE trials the study should hold, counting earlier runs (default {d.n_trials})")
    p.add_argument("--workers", type=int, default=d.workers, help=f"evaluations in flight (default {d.workers})")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL (postgresql+psycopg2://user@host:port/db) or "
                   "journal file; default RUN_DIR/STUDY/journal.log")
    p.add_argument("--run-dir", type=Path, default=Path(d.run_dir), help="where studies go (default ./runs)")
    p.add_argument("--sampler", choices=SAMPLERS, default=d.sampler, help="Optuna sampler (default tpe)")
    p.add_argument("--seed", type=int, default=d.seed, help="sampler and kernel seed (default 0)")
    p.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default: start a local one)")
    p.add_argument("--cpus-per-trial", type=float, default=d.cpus_per_trial, help="CPUs per evaluation (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial, help="GPUs per evaluation (default 0)")
    p.add_argument("--glue-dir", default=os.environ.get("SPIKEPRUNE_GLUE_DIR"),
                   help="local GLUE folder (default: the one recorded when the base was prepared)")
    p.add_argument("--energy", default=None, help="energy model preset, overriding the space's")
    p.add_argument("--max-examples", type=int, default=None, help="evaluate on the first N dev examples only")
    p.add_argument("--no-early-stopping", dest="early_stopping", action="store_false",
                   help="evaluate every trial on the whole dev set")
    p.add_argument("--max-failures", type=int, default=d.max_failures,
                   help=f"stop after this many failed trials (default {d.max_failures})")
    p.add_argument("--trial-timeout", type=float, default=None, metavar="SECONDS",
                   help="kill and fail a trial that runs longer than this (default: no limit)")
    p.add_argument("--storage-patience", type=float, default=d.storage_patience, metavar="SECONDS",
                   help=f"how long to wait for unreachable storage before stopping (default {d.storage_patience:g})")
    p.add_argument("--kernel", default=d.kernel, metavar="MODULE:FUNCTION",
                   help=f"trial function the workers run, with run_trial's arguments (default {d.kernel})")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no live progress line")


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    keys = ("prepared", "space", "task", "study_name", "n_trials", "workers", "storage", "run_dir", "sampler",
            "seed", "ray_address", "cpus_per_trial", "gpus_per_trial", "glue_dir", "energy", "max_examples",
            "early_stopping", "max_failures", "progress", "trial_timeout", "storage_patience", "kernel")
    return SearchSettings(**{k: getattr(args, k) for k in keys})


def cmd_search(args: argparse.Namespace) -> int:
    run_search(settings_from_args(args))
    return 0


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study_name", nargs="?", metavar="STUDY", default=None, help="study name (default: list the studies)")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL or journal file (default RUN_DIR/STUDY/journal.log)")
    p.add_argument("--run-dir", type=Path, default=Path("runs"), help="where studies go (default ./runs)")


def cmd_status(args: argparse.Namespace) -> int:
    storage = args.storage
    if storage is None:
        if args.study_name is None:
            raise SpikepruneError("give --study NAME (its journal is RUN_DIR/NAME/journal.log) or --storage")
        storage = str(default_storage(args.run_dir, args.study_name))
        if not Path(storage).is_file():
            raise SpikepruneError(f"no study journal at {storage}; check the study name and --run-dir, or give --storage")
    print(study_status(storage, args.study_name))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spikeprune.search [status] ...``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    status = bool(argv) and argv[0] == "status"
    parser = ArgumentParser(prog="python -m spikeprune.search" + (" status" if status else ""),
                            description="Show a stored study." if status else "Run or resume a search.")
    (add_status_arguments if status else add_search_arguments)(parser)
    args = parser.parse_args(argv[1:] if status else argv)
    return run_handler(cmd_status if status else cmd_search, args)


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command handler the way every entry point does: bad input is one line and exit 2."""
    try:
        return handler(args)
    except SpikepruneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
