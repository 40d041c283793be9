"""Command-line plumbing shared by every subcommand: the parser class, the handler runner, the
options several subcommands share, and opening a stored study from them."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn

from spikeprune.errors import SpikepruneError

if TYPE_CHECKING:
    import optuna

#: Where the GLUE data is when --glue-dir is not given.
GLUE_ENV = "SPIKEPRUNE_GLUE_DIR"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error: ...`` line pointing at ``--help`` (exit code 2),
    like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


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


def add_glue_dir(p: argparse.ArgumentParser, recorded: bool = True) -> None:
    """``--glue-dir``; ``recorded``: its default is the folder the prepared base recorded."""
    default = "default: the one recorded when the base was prepared" if recorded else \
        f"default ${GLUE_ENV}, else download through `datasets`"
    p.add_argument("--glue-dir", default=os.environ.get(GLUE_ENV),
                   help=f"local GLUE folder in the classic layout (<TASK>/train.tsv, dev.tsv); {default}")


def add_run_dir(p: argparse.ArgumentParser, what: str = "studies") -> None:
    p.add_argument("--run-dir", default=Path("runs"), type=Path, help=f"where {what} go (default ./runs)")


def add_study_args(p: argparse.ArgumentParser, many: bool = False, optional: bool = False) -> None:
    """The study (or studies) to open: a name, and --storage or --run-dir to find its storage."""
    if many:
        p.add_argument("studies", nargs="+", metavar="STUDY", help="names of the studies to overlay")
    elif optional:
        p.add_argument("study", nargs="?", metavar="STUDY", default=None,
                       help="study name (default: list the studies in --storage)")
    else:
        p.add_argument("study", metavar="STUDY", help="study name (as given to `spikeprune search --study`)")
    p.add_argument("--storage", default=None,
                   help="SQLAlchemy URL (postgresql+psycopg2://...) or journal file; default RUN_DIR/STUDY/journal.log")
    add_run_dir(p)


def storage_for(args: argparse.Namespace, study: str | None) -> str:
    """The study's storage: --storage if given, else its embedded journal, which must exist."""
    from spikeprune._search.storage import default_storage

    if args.storage:
        return args.storage
    if study is None:
        raise SpikepruneError("give a study name (its journal is RUN_DIR/NAME/journal.log) or --storage")
    journal = default_storage(args.run_dir, study)
    if not journal.is_file():
        raise SpikepruneError(f"no study journal at {journal}; check the study name and --run-dir, or pass --storage")
    return str(journal)


def open_study(args: argparse.Namespace, study: str) -> "optuna.Study":
    from spikeprune import load_study, open_storage

    return load_study(study, open_storage(storage_for(args, study)))
