"""Command-line plumbing shared by every subcommand: the parser class, the handler runner, the
options several subcommands share, and opening a stored study from them."""
from __future__ import annotations

import argparse
import math
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
    """Run a command handler the way every entry point does: bad input is one line and exit 2; a
    file the OS refuses (permissions, a full disk) too; a closed pipe (``| head``) ends quietly."""
    try:
        return handler(args)
    except SpikepruneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _number(kind: Callable[[str], float], low: float | None, low_ok: bool, what: str) -> Callable[[str], float]:
    """An argparse type: a finite number of ``kind`` above ``low`` (or at it when ``low_ok``)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or (low is not None and (value < low or (value == low and not low_ok))):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    parse.__name__ = what
    return parse


POSITIVE_INT = _number(int, 1, True, "an integer >= 1")
NATURAL = _number(int, 0, True, "an integer >= 0")
POSITIVE = _number(float, 0, False, "a number > 0")
NON_NEGATIVE = _number(float, 0, True, "a number >= 0")
FINITE = _number(float, None, True, "a finite number")


def port(text: str) -> int:
    value = POSITIVE_INT(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(value)


def output_file(path: Path | None, what: str) -> None:
    """Before any work: ``path`` can be written as a file (not a folder, not under a file)."""
    if path is None:
        return
    if path.is_dir():
        raise SpikepruneError(f"{what} {path} is a folder; give a file name")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise SpikepruneError(f"{what} {path} is under {parent}, which is a file; give another path")
    if parent is not None and not os.access(parent, os.W_OK):
        raise SpikepruneError(f"{what} {path}: cannot write into {parent}; give a writable path")


def output_folder(path: Path | None, what: str) -> None:
    """Before any work: ``path`` can be a folder (not an existing file, not under a file)."""
    if path is not None and path.exists() and not path.is_dir():
        raise SpikepruneError(f"{what} {path} is a file; give a folder")
    if path is not None:
        output_file(path / "_", what)


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
    from spikeprune.search import default_storage

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
