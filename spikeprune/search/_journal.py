"""Integrity of a journal file: find a torn tail or a corrupt line before Optuna replays it.

Optuna's ``JournalFileBackend`` replays every line as JSON. Two kinds of damage happen for real:

- a **torn tail**: the writer died (power cut, full disk, SIGKILL in ``write``) in the middle of
  its last record, so the file does not end with a newline. Optuna skips such a line, but the
  next append is glued onto it and the merged line breaks every later replay. It is safe to
  recover automatically: the writer holds the journal's flock while it appends, so a tail seen
  under the flock belongs to a writer that is gone. A tail that is a whole JSON record missing
  only its newline is completed (a JSON object cannot be a prefix of a longer one); anything else
  is cut and saved to ``<journal>.torn-<time>``;
- **mid-file corruption** (an edited or garbled line, garbage appended): replaying past it could
  attach later records to the wrong trials (Optuna numbers trials by their position in the log),
  so opening refuses with the line number, and ``spikeprune check --repair`` cuts the journal
  before that line (saving the rest to ``<journal>.corrupt-<time>``); the trials it recorded
  after that point run again on resume.

Several drivers may append to one journal, so a torn tail must not wait for the next opener:
the next append would be glued onto it and make it a corrupt line in the middle. ``JournalBackend``
appends the way Optuna's backend does, but under the lock it first recovers a tail a dead writer
left, and a write that fails part-way (a full disk) is cut back, so a retry appends a whole record.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend

from spikeprune.errors import SpikepruneError

LOG = logging.getLogger(__name__)
#: How long opening a journal waits for a writer to finish its append before checking the tail.
LOCK_WAIT_S = 10.0


@dataclass(frozen=True)
class JournalHealth:
    """What ``inspect_journal`` found: complete records, the first bad line, a torn tail."""

    path: Path
    records: int
    #: 1-based number of the first corrupt complete line (None: none), why, and where it starts.
    bad_line: int | None = None
    bad_reason: str | None = None
    bad_offset: int | None = None
    #: Bytes after the last newline (a torn last write), and whether they are one whole record.
    torn: bytes = b""
    torn_whole: bool = False

    @property
    def ok(self) -> bool:
        return self.bad_line is None and not self.torn

    def describe(self) -> str:
        if self.ok:
            return f"journal {self.path}: {self.records} records, intact"
        parts = [f"journal {self.path}: {self.records} readable records"]
        if self.bad_line is not None:
            parts.append(f"line {self.bad_line} is corrupt ({self.bad_reason})")
        if self.torn:
            parts.append(f"a torn last record of {len(self.torn)} bytes")
        return ", ".join(parts)


def _record_problem(line: bytes) -> str | None:
    """Why a complete line is not a journal record (None: it is one)."""
    try:
        data: Any = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return "not JSON"
    if not isinstance(data, dict) or not isinstance(data.get("op_code"), int) or "worker_id" not in data:
        return "not an Optuna journal operation"
    return None


def _replay_problem(replay: Any, line: bytes) -> str | None:
    """Why Optuna cannot apply this record after the earlier ones (None: it applies)."""
    try:
        replay.apply_logs([json.loads(line)])
    except Exception as e:  # Optuna raises KeyError, ValueError, ... on records that do not fit
        return f"Optuna cannot replay it: {type(e).__name__}"
    return None


def inspect_journal(path: str | Path, replay: bool = False) -> JournalHealth:
    """Read the journal and report its damage, changing nothing. ``replay`` also applies every
    record the way Optuna does (slower; ``check``), so records that parse but do not fit are found."""
    from optuna.storages.journal._storage import JournalStorageReplayResult

    path = Path(path)
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    torn = data[end:]
    records, offset = 0, 0
    state = JournalStorageReplayResult("spikeprune-check-") if replay else None
    for number, line in enumerate(data[:end].splitlines(keepends=True), start=1):
        problem = _record_problem(line) if line.strip() else "an empty line"
        if problem is None and state is not None:
            problem = _replay_problem(state, line)
        if problem is not None:
            return JournalHealth(path, records, number, problem, offset, torn, False)
        records += 1
        offset += len(line)
    return JournalHealth(path, records, torn=torn, torn_whole=bool(torn) and _record_problem(torn) is None)


def _backup(path: Path, kind: str, data: bytes) -> Path:
    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    backup = path.with_name(f"{path.name}.{kind}-{stamp}")
    number = 1
    while backup.exists():   # one process may cut twice in a second: keep both
        number += 1
        backup = path.with_name(f"{path.name}.{kind}-{stamp}-{number}")
    partial = backup.with_name(backup.name + ".partial")
    try:   # complete or absent: a full disk must not leave half a backup
        partial.write_bytes(data)
        os.replace(partial, backup)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return backup


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def fix_tail(health: JournalHealth) -> str | None:
    """Recover a torn tail (call under the journal's lock); a one-line account, or None if intact."""
    if not health.torn:
        return None
    size = health.path.stat().st_size
    if health.torn_whole:
        with open(health.path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return f"journal {health.path} ended without a newline after a whole record; completed it"
    backup = _backup(health.path, "torn", health.torn)
    _truncate(health.path, size - len(health.torn))
    return (f"journal {health.path} ended in a torn record ({len(health.torn)} bytes, the last write of a "
            f"writer that died); cut it and saved it to {backup.name}")


def cut_at_bad_line(health: JournalHealth) -> str | None:
    """Cut the journal before its first corrupt line (under the lock), saving the rest."""
    if health.bad_line is None or health.bad_offset is None:
        return None
    data = health.path.read_bytes()
    backup = _backup(health.path, "corrupt", data[health.bad_offset:])
    _truncate(health.path, health.bad_offset)
    return (f"journal {health.path}: cut at corrupt line {health.bad_line}, keeping {health.records} records; "
            f"the {len(data) - health.bad_offset} bytes from there are in {backup.name}")


def check_on_open(path: Path, lock: Any) -> None:
    """Before Optuna replays ``path``: recover a torn tail (saying so), refuse a corrupt line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    # A live writer finishes its append first, so a tail seen once we hold the lock is really torn.
    # A writer that keeps the lock (a stopped process) must not hang a reader: then the tail may be
    # its append in progress, which Optuna's replay skips, and the next opener checks it.
    if not lock.acquire(timeout=LOCK_WAIT_S):
        LOG.warning("journal %s is locked by a writer that does not finish its append (a stopped process?); "
                    "opened without checking its last record", path)
        return
    try:
        health = inspect_journal(path)
        if health.bad_line is not None:
            raise SpikepruneError(
                f"journal {path} is corrupt at line {health.bad_line} ({health.bad_reason}); run `spikeprune check "
                f"STUDY --storage {path} --repair` to cut it there (the rest is kept in a backup file)")
        message = fix_tail(health)
    finally:
        lock.release()
    if message:
        LOG.warning("%s", message)


class JournalBackend(JournalFileBackend):
    """Optuna's journal file backend whose appends leave only whole records (see the module doc).
    ``lock`` is the journal's ``FlockLock``."""

    def __init__(self, path: str | Path, lock: Any) -> None:
        super().__init__(str(path), lock_obj=lock)
        self._path, self._writer_lock = Path(path), lock

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        self._writer_lock.acquire()
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND)
            try:
                end = os.fstat(fd).st_size
                if end and os.pread(fd, 1, end - 1) != b"\n":   # a writer died mid-append
                    LOG.warning("%s", fix_tail(inspect_journal(self._path)))
                    end = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except BaseException:
                    os.ftruncate(fd, end)   # no partial record stays: a retry appends it whole
                    raise
            finally:
                os.close(fd)
        finally:
            self._writer_lock.release()
