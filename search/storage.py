"""Where studies live: an embedded journal file by default, any SQLAlchemy database on request.

The embedded default is Optuna's journal (``JournalStorage`` over a ``JournalFileBackend``) at
``<run_dir>/<study>/journal.log``, not SQLite, because:

- it is an append-only log guarded by a file lock, so a second process (``spikeprune status``,
  ``optuna-dashboard``, a second driver) can read or write it while a search runs; SQLite through
  Optuna's RDB storage serialises every write on one database lock and fails with
  "database is locked" under concurrent writers;
- nothing to migrate: no schema, no alembic versions tied to the Optuna release;
- a crash loses at most the record being appended; replay skips a torn last line.

Writers take an ``flock`` on ``journal.log.flock`` (``FlockLock``) instead of Optuna's lock files:
the kernel releases it when the holder dies, so a SIGKILLed driver does not make the next one wait
out Optuna's 30 s grace period. Other tools writing the same journal (optuna-dashboard notes) use
Optuna's own lock; single appends are atomic on a local disk, so this is only a concern on NFS.

For several drivers on several machines use a database server: any SQLAlchemy URL
(``postgresql+psycopg2://user@host:5432/db``, also ``sqlite:///file.db``) goes to ``RDBStorage``.
"""
from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from spikeprune.models.errors import SpikepruneError

JOURNAL_NAME = "journal.log"
STUDY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")  # \Z: "$" would let a trailing newline in
#: URL schemes handled by RDBStorage (the SQLAlchemy dialects whose drivers we install or that
#: ship with Python).
RDB_SCHEMES = ("postgresql", "postgresql+psycopg2", "sqlite")


class FlockLock:
    """Exclusive ``flock`` on ``<journal>.flock``, released by the kernel if the holder dies.

    It has the acquire/release interface of Optuna's journal file locks (``BaseJournalFileLock``).
    """

    def __init__(self, journal: str | Path) -> None:
        self._path = f"{journal}.flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def check_study_name(name: str) -> str:
    """Study names become folder names and database keys: keep them plain."""
    if not isinstance(name, str) or not STUDY_NAME.match(name) or name in (".", ".."):
        raise SpikepruneError(f"study name {name!r} is not allowed; use 1-64 letters, digits, '-', '_' or '.'")
    return name


def default_storage(run_dir: str | Path, study_name: str) -> Path:
    """The embedded journal of a study: ``<run_dir>/<study>/journal.log``."""
    return Path(run_dir) / check_study_name(study_name) / JOURNAL_NAME


def describe(url_or_path: str | Path) -> str:
    """The storage location for messages, with any password hidden."""
    text = str(url_or_path)
    if "://" in text:
        try:
            from sqlalchemy.engine import make_url
            return make_url(text).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL has nothing we can reliably hide; show the scheme only
            return text.split("://", 1)[0] + "://..."
    return text


def open_storage(url_or_path: str | Path) -> BaseStorage:
    """Open a study storage: a SQLAlchemy URL (RDBStorage) or a journal file path (created)."""
    text = str(url_or_path)
    if "://" not in text:
        path = Path(text).expanduser()
        if path.is_dir():
            raise SpikepruneError(f"storage {path} is a folder; give the journal file, e.g. {path / JOURNAL_NAME}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(str(path), lock_obj=FlockLock(path))
        except OSError as e:
            raise SpikepruneError(f"cannot open journal storage {path}: {e.strerror}; pick a writable path") from None
        return JournalStorage(backend)
    scheme = text.split("://", 1)[0].lower()
    if scheme not in RDB_SCHEMES:
        raise SpikepruneError(f"storage URL scheme {scheme!r} is not supported; use a journal file path or "
                              f"postgresql+psycopg2://user@host:port/db (or sqlite:///file.db)")
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        make_url(text).port  # parses host and port, so "host:xyz" fails here and not in a driver
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise SpikepruneError(f"storage URL {describe(text)} is not a valid SQLAlchemy URL; "
                              f"use postgresql+psycopg2://user@host:port/db") from None
    try:
        return RDBStorage(text, engine_kwargs={"pool_pre_ping": True})
    except sqlalchemy.exc.OperationalError as e:
        reason = str(e.orig).strip().splitlines()[0] if e.orig else "connection failed"
        raise SpikepruneError(f"cannot connect to storage {describe(text)} ({reason}); is the database server "
                              f"running and the URL right?") from None
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise SpikepruneError(f"storage URL {describe(text)} needs a database driver that is not installed ({e})") from None
    except optuna.exceptions.StorageInternalError as e:
        raise SpikepruneError(f"storage {describe(text)} cannot be used: {str(e).splitlines()[0]}") from None
