"""Two writers of one trial while the storage drops its connection, on the journal and on PostgreSQL
(real storages, with the fault injected into the storage object the driver's ``RetryingStorage``
wraps):

- a tell whose commit landed before the connection dropped is retried, finds its trial finished
  with its own result and is done, counted once;
- a tell cut off by a lost connection while another process finished the trial with another
  result stops with one line naming the trial (the stored result stands);
- drivers that all find a dead driver's trial RUNNING (they start together after a restart) queue
  it again once, whichever of them gets there first and wherever the other is cut off: the chaos
  run of seed 35 died with ``UpdateFinishedTrialError`` when one driver's re-queue, held up by a
  PostgreSQL restart, found the trial re-queued by the other.
"""
from __future__ import annotations

import errno
import socket
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import optuna
import pytest
import sqlalchemy.exc
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from spikeprune import open_storage
from spikeprune.search._resume import Resume
from spikeprune.search._storage import RetryingStorage, StorageConflict

optuna.logging.set_verbosity(optuna.logging.WARNING)

DIRECTIONS = ["maximize", "minimize"]
X = {"x": IntDistribution(0, 9)}


@pytest.fixture(params=["journal", pytest.param("postgres", marks=pytest.mark.integration)])
def location(request, tmp_path) -> str:
    """Where the study lives: a journal file, or the shared test PostgreSQL (unique study names)."""
    if request.param == "journal":
        return str(tmp_path / "races" / "journal.log")
    return request.getfixturevalue("postgres_url")


def lost_connection(location: str) -> Exception:
    """What the storage raises when its connection drops: the database driver's error, or the OS's."""
    if "://" in location:
        import psycopg2

        return sqlalchemy.exc.OperationalError("COMMIT", None, psycopg2.OperationalError(
            "server closed the connection unexpectedly"))
    return OSError(errno.EIO, "Input/output error")


class Driver:
    """One driver's storage stack as ``run_search`` builds it, over its own storage object (another
    process, as far as the storage can tell), and the way to break that object's next call."""

    def __init__(self, location: str) -> None:
        self.inner = open_storage(location)
        self.storage = RetryingStorage(optuna.storages.get_storage(self.inner), "the test storage", patience=10.0)

    def next_call(self, name: str, fault: Callable[..., Any]) -> None:
        """``fault(real_method, *args)`` runs instead of the next ``name`` call; later calls are plain."""
        real, pending = getattr(self.inner, name), [fault]

        def once(*args: Any, **kwargs: Any) -> Any:   # a retry may hold this very function: it runs real then
            return pending.pop()(real, *args, **kwargs) if pending else real(*args, **kwargs)

        setattr(self.inner, name, once)


def new_study(location: str) -> tuple[str, Driver, optuna.Study]:
    name = f"race-{uuid.uuid4().hex[:8]}"
    driver = Driver(location)
    return name, driver, optuna.create_study(storage=driver.storage, study_name=name, directions=DIRECTIONS)


def test_a_tell_that_committed_before_the_connection_dropped_is_done(location):
    name, driver, study = new_study(location)
    trial = study.ask(X)

    dropped = []

    def commit_then_drop(real, *args, **kwargs):
        real(*args, **kwargs)
        dropped.append(True)
        raise lost_connection(location)

    driver.next_call("set_trial_state_values", commit_then_drop)
    study.tell(trial, [0.5, 10.0])
    assert dropped
    stored = optuna.load_study(study_name=name, storage=open_storage(location)).get_trials()
    assert [(t.state, t.values) for t in stored] == [(TrialState.COMPLETE, [0.5, 10.0])]


def test_a_tell_cut_off_while_another_process_finished_the_trial_is_a_conflict(location):
    name, driver, study = new_study(location)
    trial = study.ask(X)
    other = optuna.load_study(study_name=name, storage=open_storage(location))

    def other_tells_then_drop(real, *args, **kwargs):
        other.tell(trial.number, [0.25, 20.0])
        raise lost_connection(location)

    driver.next_call("set_trial_state_values", other_tells_then_drop)
    with pytest.raises(StorageConflict) as error:
        study.tell(trial, [0.5, 10.0])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("trial #0 was finished by another process (COMPLETE 0.25, 20) while this driver "
                              "told it COMPLETE 0.5, 10 over a lost connection"), message
    stored = optuna.load_study(study_name=name, storage=open_storage(location)).get_trials()
    assert [(t.state, t.values) for t in stored] == [(TrialState.COMPLETE, [0.25, 20.0])]


@pytest.mark.parametrize("cut", ["outage-before-its-first-write", "after-its-error-note", "outage-during-its-fail"])
def test_drivers_finding_one_dead_drivers_trial_queue_it_again_once(location, cut):
    """Drivers A and B both list the dead driver's trial as RUNNING; A re-queues it while B is at
    ``cut``. B leaves it (or, when its FAIL was cut off, cannot tell its FAIL from A's and finds
    the retry A queued): one retry in the study, no error."""
    name, setup, study = new_study(location)
    trial = study.ask(X)
    gone = subprocess.Popen(["true"])
    gone.wait()
    trial.set_user_attr("driver", {"id": "gone", "host": socket.gethostname(), "pid": gone.pid})

    def resume(driver: Driver) -> Resume:
        return Resume(optuna.load_study(study_name=name, storage=driver.storage), driver.storage, 60.0)

    a, b = Driver(location), Driver(location)
    resume_a, resume_b = resume(a), resume(b)
    by_a: list[int] = []

    def a_first_then_drop(real, *args, **kwargs):
        by_a.extend(resume_a.recover())
        raise lost_connection(location)

    def write_then_a(real, *args, **kwargs):
        real(*args, **kwargs)
        by_a.extend(resume_a.recover())

    if cut == "outage-before-its-first-write":
        b.next_call("set_trial_user_attr", a_first_then_drop)
    elif cut == "after-its-error-note":
        b.next_call("set_trial_user_attr", write_then_a)
    else:
        b.next_call("set_trial_state_values", a_first_then_drop)
    by_b = resume_b.recover()
    assert by_a == [0]
    assert by_b == ([0] if cut == "outage-during-its-fail" else [])
    trials = optuna.load_study(study_name=name, storage=open_storage(location)).get_trials()
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["error"] == f"driver {socket.gethostname()}:{gone.pid} stopped while the trial ran; re-queued"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(trials) == 2 and len(retries) == 1, [(t.number, t.state, t.user_attrs) for t in trials]
    assert retries[0].state == TrialState.WAITING and retries[0].system_attrs["fixed_params"] == trial.params
