"""Faults during a search, on the real local Ray cluster and real storage: a worker killed mid-trial,
trials that raise, measure NaN or hang past the timeout, two drivers on one PostgreSQL study, and
the database going away while a search runs.

Faults are injected through the documented ``trial_function`` extension point (tests/faulty_kernels.py),
planned with token files so that each happens exactly once whatever the timing.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from spikeprune.errors import SpikepruneError
from spikeprune import SearchSettings, run_search
from spikeprune.search._storage import RetryingStorage

import drivers
from helpers import free_port
from faulty_kernels import KERNEL, claimed, copy_base
from pgserver import private_postgres
from tiny_spaces import TINY_KNOBS

pytestmark = pytest.mark.integration  # every test here starts Ray, PostgreSQL or a cluster

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[1]
SPACE = "name: tiny" + TINY_KNOBS
#: Four configs in all, so that five trials must repeat some: duplicates across drivers are certain.
SMALL_SPACE = """
name: small
timesteps: {min: 1, max: 2}
weight_bits: {choices: [4, 32]}
objectives: [{name: metric, direction: maximize}, {name: sops, direction: minimize}]
"""
MAX_EXAMPLES = 16
#: A normal tiny trial takes a few seconds on a loaded machine, a new worker ~10 s more; should one
#: still time out, the test tolerates it (max_failures is high).
TRIAL_TIMEOUT = 20.0
DEADLINE_S = 300.0


def settings(prepared: Path, run_dir: Path, **overrides) -> SearchSettings:
    space = run_dir / "space.yaml"
    if not space.exists():
        space.write_text(SPACE)
    base = dict(prepared=prepared, space=space, study_name="s", n_trials=2, workers=2, run_dir=run_dir,
                max_examples=MAX_EXAMPLES, progress=False, early_stopping=False, trial_function=KERNEL)
    return SearchSettings(**{**base, **overrides})


def states(study: optuna.Study) -> dict[TrialState, int]:
    out: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state] = out.get(t.state, 0) + 1
    return out


def is_ray_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


def wait_until(condition, what: str, timeout: float = DEADLINE_S, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(every)


# ------------------------------------------------------------------------------ workers
def test_a_worker_killed_mid_trial_is_retried_once_then_failed(tiny_prepared, tmp_path, ray_local):
    """SIGKILL the Ray worker process while it evaluates: Ray runs the task again once; a second
    death fails the trial with its reason; the study still gets its complete trial."""
    base = copy_base(tiny_prepared, tmp_path / "base", "hang", "hang", "hang")
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # kill each worker that took a hang token: it is mid-trial
        while not stop.is_set() and len(killed) < 3:
            for _, pid in claimed(base):
                if pid not in killed and is_ray_worker(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            stop.wait(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        study = run_search(settings(base, tmp_path, n_trials=1, workers=1)).study
    finally:
        stop.set()
        thread.join()
    assert len(killed) == 3 and len(claimed(base)) == 3
    first, second = study.trials
    # Trial 0: killed, re-run by Ray, killed again -> FAIL with the reason.
    assert first.state == TrialState.FAIL
    assert first.user_attrs["error"].startswith("WorkerCrashedError: the Ray worker running the trial died")
    # Trial 1: killed once, Ray's retry evaluated it.
    assert second.state == TrialState.COMPLETE and second.user_attrs["metrics"]["metric"] == second.values[0]
    assert int(second.user_attrs["worker"].rsplit(":", 1)[1]) not in killed


def test_raising_nan_and_hanging_trials_fail_with_their_reason(tiny_prepared, tmp_path, ray_local):
    base = copy_base(tiny_prepared, tmp_path / "base", "hang", "raise", "nan")
    study = run_search(settings(base, tmp_path, n_trials=2, trial_timeout=TRIAL_TIMEOUT, max_failures=20)).study
    assert [kind for kind, _ in claimed(base)] == ["hang", "raise", "nan"]
    count = states(study)
    assert count[TrialState.COMPLETE] == 2 and TrialState.RUNNING not in count
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    errors = [t.user_attrs["error"] for t in failed]
    kinds = {"raise": "RuntimeError: injected fault", "nan": "the trial measured metric = nan",
             "timeout": f"timed out after {TRIAL_TIMEOUT:g} s; raise --trial-timeout"}
    for kind, prefix in kinds.items():
        assert any(e.startswith(prefix) for e in errors), (kind, errors)
    # A slow normal trial on a very loaded machine could time out too; nothing else may fail.
    assert all(any(e.startswith(p) for p in kinds.values()) for e in errors), errors
    raised = next(t for t in failed if t.user_attrs["error"].startswith(kinds["raise"]))
    assert "faulty_kernels.py" in raised.user_attrs["traceback"] and ":" in raised.user_attrs["worker"]
    assert all("metrics" not in t.user_attrs and t.values is None for t in failed)  # no NaN stored
    hung = dict(claimed(base))["hang"]
    wait_until(lambda: not is_ray_worker(hung), "the timed-out worker to be killed")


# ------------------------------------------------------------------------------ drivers
def test_two_drivers_on_one_postgres_study(tiny_prepared, tmp_path, ray_local, postgres_url):
    """Two driver processes on one study at once: every config evaluated once (repeats are
    recorded as duplicate_of), nothing lost, exactly the requested number of complete trials."""
    name = f"two-{uuid.uuid4().hex[:8]}"
    base = copy_base(tiny_prepared, tmp_path / "base", "pair", "pair")  # the first two trials overlap
    space = tmp_path / "small.yaml"
    space.write_text(SMALL_SPACE)
    args = ["--prepared", str(base), "--space", str(space), "--study", name, "--n-trials", "5", "--workers", "1",
            "--storage", postgres_url, "--max-examples", str(MAX_EXAMPLES), "--ray-address", ray_local, "--quiet",
            "--no-early-stopping", "--kernel", KERNEL, "--run-dir", str(tmp_path)]
    drivers.finish(*(drivers.start(args) for _ in range(2)), timeout=DEADLINE_S)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    count = states(study)
    assert count[TrialState.COMPLETE] == 5, count
    assert TrialState.RUNNING not in count and TrialState.FAIL not in count, count
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    fresh = [t for t in complete if "duplicate_of" not in t.user_attrs]
    assert len({tuple(sorted(t.params.items())) for t in fresh}) == len(fresh)  # no config evaluated twice
    assert len(fresh) <= 4 < len(complete)  # only four configs exist: some trials are duplicates
    for t in complete:
        if "duplicate_of" in t.user_attrs:
            twin = study.trials[t.user_attrs["duplicate_of"]]
            assert twin in fresh and twin.params == t.params and twin.values == t.values
    assert len({t.user_attrs["driver"]["id"] for t in fresh}) == 2  # both drivers evaluated trials
    assert sum(1 for t in trials if t.user_attrs.get("baseline") and "retry_of" not in t.user_attrs) == 1
    assert [kind for kind, _ in claimed(base)] == ["pair", "pair"]


# ------------------------------------------------------------------------------ storage
class _Seen(logging.Handler):
    """Sets an event when the driver logs a message containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text, self.event, self.messages = text, threading.Event(), []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if self.text in message:
            self.event.set()


def test_storage_outage_is_waited_out(tiny_prepared, tmp_path, ray_local, postgres_url):
    """PostgreSQL stops while a trial runs and that trial finishes during the outage: the driver
    waits, keeps the result, and tells it once the database is back."""
    base = copy_base(tiny_prepared, tmp_path / "base", "gate")
    logger = logging.getLogger("spikeprune.search._storage")
    seen = _Seen("is unreachable")
    logger.addHandler(seen)
    with private_postgres() as pg:
        failure: list[BaseException] = []

        def outage() -> None:
            try:
                wait_until(lambda: claimed(base), "a trial to take the gate")
                pg.stop()
                (base / "faults" / "open").touch()  # the gated trial now finishes while storage is down
                assert seen.event.wait(DEADLINE_S), "the driver never noticed the outage"
                wait_until(lambda: (base / "faults" / "done").exists(), "the gated trial to finish")
            except BaseException as e:  # reported by the main thread
                failure.append(e)
                (base / "faults" / "open").touch()
            finally:
                pg.start()

        thread = threading.Thread(target=outage, daemon=True)
        thread.start()
        try:
            study = run_search(settings(base, tmp_path, study_name="outage", storage=pg.url, n_trials=3)).study
        finally:
            thread.join(DEADLINE_S)
            logger.removeHandler(seen)
        assert not failure, failure
        loaded = optuna.load_study(study_name="outage", storage=pg.url)
        count = states(loaded)
        assert count == {TrialState.COMPLETE: 3}, count
        assert any("is reachable again" in m for m in seen.messages), seen.messages
        assert [t.values for t in study.trials] == [t.values for t in loaded.trials]

        # Past its patience the storage gives up with one line, and then fails fast.
        storage = RetryingStorage(optuna.storages.RDBStorage(pg.url), "the test database", patience=1.0)
        pg.stop()
        with pytest.raises(SpikepruneError) as err:
            storage.get_all_studies()
        assert "\n" not in str(err.value)
        assert str(err.value).startswith("storage the test database unreachable for ")
        assert "rerun the same command to resume" in str(err.value)
