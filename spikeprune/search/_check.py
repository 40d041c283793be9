"""`spikeprune check`: is a study's storage readable, and can every record in it be used?

It looks where a later command would fail: the journal's bytes (a torn tail, a corrupt line,
records Optuna cannot replay; ``_journal.py``), the study's ``StudyRecord``, every trial's
``TrialRecord``, and trials left RUNNING. ``repair`` fixes what can be fixed without guessing:
a torn tail is recovered, a journal is cut before its first bad line (the rest saved to a
backup file); trials lost that way are run again when the search resumes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from spikeprune.errors import SpikepruneError
from spikeprune.records import StudyRecord, TrialRecord

from spikeprune.search._journal import LOCK_WAIT_S, cut_at_bad_line, fix_tail, inspect_journal
from spikeprune.search._storage import FlockLock, describe, open_storage


@dataclass
class CheckResult:
    """Lines to print and whether the storage is healthy (after any repair)."""

    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def problem(self, text: str) -> None:
        self.lines.append("problem: " + text)
        self.ok = False


def _check_journal(path: Path, repair: bool, result: CheckResult) -> None:
    lock = FlockLock(path)
    if not lock.acquire(timeout=LOCK_WAIT_S):
        raise SpikepruneError(f"journal {path} is locked by a writer that does not finish its append; stop the "
                              f"search (or the stopped process holding it) and check again")
    try:
        health = inspect_journal(path, replay=True)
        if health.ok:
            result.lines.append(health.describe())
            return
        if not repair:
            result.problem(health.describe() + "; run again with --repair (a backup of what is cut is kept)")
            return
        for message in (cut_at_bad_line(health), fix_tail(inspect_journal(path))):
            if message:
                result.lines.append("repaired: " + message)
        after = inspect_journal(path, replay=True)
        if not after.ok:
            result.problem(after.describe())
    finally:
        lock.release()


def _check_study(study: optuna.Study, result: CheckResult) -> None:
    try:
        record = StudyRecord.read(study)
        result.lines.append(f"study {study.study_name}: task {record.task}, base {record.prepared}")
    except SpikepruneError as e:
        result.problem(str(e))
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        try:
            TrialRecord.of(t)
        except SpikepruneError as e:
            result.problem(str(e))
    states = Counter(t.state.name.lower() for t in trials)
    result.lines.append(f"{len(trials)} trials: " + (", ".join(f"{n} {s}" for s, n in sorted(states.items()))
                                                      or "none"))
    if states.get(TrialState.RUNNING.name.lower()):
        result.lines.append("running trials of a driver that is gone are re-queued when the search resumes")


def check_storage(location: str, study_name: str | None, repair: bool = False) -> CheckResult:
    """Check (and with ``repair`` fix) the storage at ``location`` and the study in it."""
    result = CheckResult()
    if "://" not in location:
        path = Path(location).expanduser()
        if not path.is_file():
            raise SpikepruneError(f"no journal file at {path}; check the study name, --run-dir or --storage")
        _check_journal(path, repair, result)
        if not result.ok:
            return result
    storage = open_storage(location)
    names = optuna.get_all_study_names(storage)
    for name in [study_name] if study_name else names:
        if name not in names:
            raise SpikepruneError(f"no study {name!r} in {describe(location)}; studies there: {', '.join(names) or 'none'}")
        _check_study(optuna.load_study(study_name=name, storage=storage), result)
    result.lines.append("ok" if result.ok else "problems found")
    return result
