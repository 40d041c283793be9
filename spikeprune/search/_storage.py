"""Where studies live: an embedded journal file by default, any SQLAlchemy database on request.

The embedded default is Optuna's journal (``JournalStorage`` over a ``JournalFileBackend``) at
``<run_dir>/<study>/journal.log``, not SQLite, because:

- it is an append-only log guarded by a file lock, so a second process (``spikeprune status``,
  ``optuna-dashboard``, a second driver) can read or write it while a search runs; SQLite through
  Optuna's RDB storage serialises every write on one database lock and fails with
  "database is locked" under concurrent writers;
- nothing to migrate: no schema, no alembic versions tied to the Optuna release;
- a crash loses at most the record being appended: a torn last line is recovered when the
  journal is opened, and a corrupt line is refused with the way out (``_journal.py``).

Writers take an ``flock`` on ``journal.log.flock`` (``FlockLock``) instead of Optuna's lock files:
the kernel releases it when the holder dies, so a SIGKILLed driver does not make the next one wait
out Optuna's 30 s grace period. Other tools writing the same journal (optuna-dashboard notes) use
Optuna's own lock; single appends are atomic on a local disk, so this is only a concern on NFS.

For several drivers on several machines use a database server: any SQLAlchemy URL
(``postgresql+psycopg2://user@host:5432/db``, also ``sqlite:///file.db``) goes to ``RDBStorage``.
"""
from __future__ import annotations

import abc
import errno
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage

from spikeprune.errors import SpikepruneError

from spikeprune.search._journal import JournalBackend, check_on_open
from spikeprune.search._settings import check_study_name

JOURNAL_NAME = "journal.log"
#: Backoff between storage retries: doubling from the first, capped at the second.
RETRY_DELAYS_S = (0.5, 10.0)
LOG = logging.getLogger(__name__)
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

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting for it; with ``timeout`` seconds, give up then (False)."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


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
            lock = FlockLock(path)
            check_on_open(path, lock)
            backend = JournalBackend(path, lock)
        except OSError as e:
            if _full_disk(e):
                raise StorageOutage(f"cannot open journal storage {path}: the disk of {path.parent} is full "
                                    f"({e.strerror}); free space there and rerun the same command") from None
            raise SpikepruneError(f"cannot open journal storage {path}: {e.strerror}; pick a writable path") from None
        try:
            return JournalStorage(backend)
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # records that do not replay
            raise SpikepruneError(f"journal {path} holds records Optuna cannot replay ({type(e).__name__}: "
                                  f"{str(e)[:80]}); run `spikeprune check STUDY --storage {path} --repair`") from None
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
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise SpikepruneError(f"storage URL {describe(text)} needs a database driver that is not installed ({e})") from None
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError) as e:
        # A connection lost while Optuna checks its tables comes wrapped as a StorageInternalError
        # ("invalid data in the commit"): it is the server going away all the same.
        if _unreachable(e):
            raise SpikepruneError(f"cannot connect to storage {describe(text)} ({_reason(e)}); is the database "
                                  f"server running and the URL right?") from None
        raise SpikepruneError(f"storage {describe(text)} cannot be used: {str(e).splitlines()[0]}") from None


# --------------------------------------------------------------------------- outages
def _chain(error: BaseException) -> list[BaseException]:
    """The error and what led to it, outermost first: its cause, else the error being handled when
    it was raised (Optuna's RDB storage retries a query in a transaction the lost connection broke,
    and reports the rollback error that follows, raised while handling the connection error)."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _unreachable(error: BaseException) -> bool:
    """Whether a storage error means the storage is out of reach for now (worth waiting for): a
    lost or refused database connection, or an I/O error on the journal's disk or share."""
    import sqlalchemy.exc

    for cause in _chain(error):
        if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                              sqlalchemy.exc.DisconnectionError)):
            return True
        if isinstance(cause, OSError) and not isinstance(cause, (PermissionError, FileNotFoundError,
                                                                 IsADirectoryError, NotADirectoryError)):
            return True
    return False


def _full_disk(error: BaseException) -> bool:
    """Whether the innermost error is the OS saying the disk (or the user's quota) is full."""
    innermost = _chain(error)[-1]
    return isinstance(innermost, OSError) and innermost.errno in (errno.ENOSPC, errno.EDQUOT)


def _reason(error: BaseException) -> str:
    """The innermost error's first line: what the database driver or the OS said."""
    innermost = _chain(error)[-1]
    text = str(getattr(innermost, "orig", None) or innermost).strip()
    return text.splitlines()[0] if text else type(innermost).__name__


class StorageOutage(SpikepruneError):
    """The storage stayed out of reach past the patience: the run must stop (nothing to record it in)."""


class StorageConflict(SpikepruneError):
    """Two processes finished one trial with different results: the first one stored stands."""


def _result(state: optuna.trial.TrialState, values: list[float] | None) -> str:
    return state.name if values is None else f"{state.name} {', '.join(f'{v:.6g}' for v in values)}"


class RetryingStorage(optuna.storages.BaseStorage):
    """Any Optuna storage, with every call retried while the storage is out of reach.

    A call that fails for a connection reason (``_unreachable``) is repeated with doubling delays
    (``RETRY_DELAYS_S``) for up to ``patience`` seconds; then the outage becomes one
    ``StorageOutage`` (a ``SpikepruneError``) and later calls fail at once (so the way out does not wait again). Each
    storage call is one transaction, so retrying it alone is safe; the one call that is not
    idempotent, finishing a trial, may have committed before the connection dropped: a retry that
    finds the trial finished reads it back, and the tell is done when it holds the state and values
    this tell meant to write, a ``StorageConflict`` when it holds another result.
    """

    def __init__(self, inner: optuna.storages.BaseStorage, where: str, patience: float) -> None:
        self._inner, self._where, self._patience = inner, where, patience
        self._gave_up = False

    @property
    def gave_up(self) -> bool:
        """Whether an outage outlasted the patience (later calls then fail at once)."""
        return self._gave_up

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        method = getattr(self._inner, name)
        first_failure: float | None = None
        delay = RETRY_DELAYS_S[0]
        while True:
            try:
                result = method(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if first_failure is None or name != "set_trial_state_values":
                    raise
                result = self._told_already(*args, **kwargs)  # the attempt that seemed to fail may have committed
            except Exception as e:
                if self._gave_up or not _unreachable(e):
                    raise
                now = time.monotonic()
                # A journal's full disk is named by its folder: that is where space must be freed.
                full = f"the disk of {Path(self._where).parent} is full" if _full_disk(e) else None
                if first_failure is None:
                    first_failure = now
                    LOG.warning("%s (%s); retrying for up to %g s", full or f"storage {self._where} is unreachable",
                                _reason(e), self._patience)
                waited = now - first_failure
                if waited >= self._patience:
                    self._gave_up = True
                    what, fix = (f"{full} ({_reason(e)}) for {waited:.0f} s", "free space there") if full else \
                        (f"storage {self._where} unreachable for {waited:.0f} s ({_reason(e)})", "start the storage")
                    raise StorageOutage(f"{what}; finished trials are saved: {fix} and rerun the same command "
                                          f"to resume") from None
                time.sleep(min(delay, self._patience - waited))
                delay = min(2 * delay, RETRY_DELAYS_S[1])
                continue
            if first_failure is not None:
                LOG.warning("storage %s is reachable again after %.0f s", self._where,
                            time.monotonic() - first_failure)
            return result

    def _told_already(self, trial_id: int, state: optuna.trial.TrialState, values: Any = None) -> bool:
        """A retried tell found its trial finished: done if the trial holds what the tell meant to
        write (the attempt that seemed to fail had committed), else another process finished it."""
        stored = self._call("get_trial", (trial_id,), {})
        meant = None if values is None else [float(v) for v in values]
        if stored.state == state and stored.values == meant:
            return True
        raise StorageConflict(f"trial #{stored.number} was finished by another process "
                              f"({_result(stored.state, stored.values)}) while this driver told it "
                              f"{_result(state, meant)} over a lost connection; the stored result stands")


def _retrying(name: str) -> Any:
    def call(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    call.__name__ = call.__qualname__ = name
    return call


for _name, _member in vars(optuna.storages.BaseStorage).items():
    if callable(_member) and not _name.startswith("_"):
        setattr(RetryingStorage, _name, _retrying(_name))
abc.update_abstractmethods(RetryingStorage)
