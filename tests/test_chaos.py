"""A search under faults that land together and at bad moments (benchmarks/chaos.py), and the
faults it found, each reproduced on its own:

- the short chaos run: drivers on one journal study and on one PostgreSQL study, on a multi-node
  Ray cluster, under a handful of seeded random faults of every kind; every invariant holds;
- a full disk stops a search with one line that names the folder, keeps every finished trial, and
  rerunning once there is space finishes the study;
- the disk filling while a trial's parameters are drawn stops the driver with that line too (it
  used to be taken for a bad config, whose error could not be recorded either: a raw OSError);
- a PostgreSQL connection lost while the trials are read is waited out (it stopped a driver with
  a traceback);
- a PostgreSQL connection lost while a driver opens the storage is said to be one (it was reported
  as Optuna's "invalid data in the commit");
- drivers re-queuing one dead driver's trial together, one of them held up by a PostgreSQL restart,
  queue it once (it stopped a driver with ``UpdateFinishedTrialError``): tests/test_storage_races.py.
"""
from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from spikeprune import BaseBundle, SearchSettings, SearchSpace
from spikeprune.errors import SpikepruneError
from spikeprune.search._driver import Driver
from spikeprune.search._journal import inspect_journal
from spikeprune.search._storage import RetryingStorage, StorageOutage, default_storage, open_storage
from spikeprune.search._study import open_study

import drivers
from tiny_spaces import TINY_KNOBS

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[1]
SPACE = "name: tiny" + TINY_KNOBS


def chaos_module():
    spec = importlib.util.spec_from_file_location("benchmarks_chaos", REPO / "benchmarks" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_a_short_search_under_random_faults_loses_nothing(tiny_prepared, tmp_path, postgres_url):
    chaos = chaos_module()
    result = chaos.main(["--seed", "7", "--n-trials", "8", "--drivers", "2", "--nodes", "1", "--fault-every", "3",
                         "--kinds", "worker", "driver", "node", "postgres", "disk", "tear",
                         "--prepared", str(tiny_prepared), "--work-dir", str(tmp_path), "--deadline", "600"])
    for phase in result["phases"]:
        assert phase["ok"], {k: phase[k] for k in ("invariants", "driver_errors", "files", "lost", "changes")}
        assert phase["complete"] == 8 and not phase["lost"] and not phase["running"]
    assert sum(p["faults_total"] for p in result["phases"]) >= 3
    assert {p["storage"] for p in result["phases"]} == {"journal", "postgres"}


def search_args(base: Path, run_dir: Path, study: str, n_trials: int, ray_address: str, *extra: str) -> list[str]:
    space = run_dir.parent / f"{study}.yaml"
    space.write_text(SPACE)
    return ["--prepared", str(base), "--space", str(space), "--study", study, "--n-trials", str(n_trials),
            "--workers", "1", "--run-dir", str(run_dir), "--max-examples", "16", "--ray-address", ray_address,
            "--quiet", "--no-early-stopping", *extra]


@pytest.mark.integration
def test_a_full_disk_is_one_line_naming_the_folder_and_loses_nothing(tiny_prepared, small_disk, ray_local):
    run_dir = small_disk.path
    drivers.finish(drivers.start(search_args(tiny_prepared, run_dir, "full", 2, ray_local)))
    journal = default_storage(run_dir, "full")
    before = {t.number: t.values for t in optuna.load_study(study_name="full", storage=open_storage(journal)).trials
              if t.state == TrialState.COMPLETE}
    assert len(before) == 2
    small_disk.fill()
    driver = drivers.start(search_args(tiny_prepared, run_dir, "full", 4, ray_local, "--storage-patience", "1"))
    out, err = driver.communicate(timeout=drivers.DEADLINE_S)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert driver.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert errors == [err.strip().splitlines()[-1]]
    assert errors[0].startswith(f"error: the disk of {journal.parent} is full (") and "free space there" in errors[0]
    assert inspect_journal(journal, replay=True).ok
    small_disk.free()
    drivers.finish(drivers.start(search_args(tiny_prepared, run_dir, "full", 4, ray_local)))
    after = optuna.load_study(study_name="full", storage=open_storage(journal)).trials
    assert sum(t.state == TrialState.COMPLETE for t in after) == 4
    assert all(after[n].state == TrialState.COMPLETE and after[n].values == v for n, v in before.items())


class FillingSampler(optuna.samplers.RandomSampler):
    """A real sampler that fills the disk the first time it draws a value: the disk is full from
    the middle of drawing a trial's parameters on."""

    def __init__(self, disk) -> None:
        super().__init__(seed=0)
        self.disk = disk

    def sample_independent(self, study, trial, name, distribution):
        if not self.disk.full:
            self.disk.fill()
        return super().sample_independent(study, trial, name, distribution)


@pytest.mark.integration
def test_a_disk_filling_while_parameters_are_drawn_stops_the_driver(tiny_prepared, glue_dir, small_disk, tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    settings = SearchSettings(prepared=tiny_prepared, space=space_file, study_name="draw", run_dir=small_disk.path,
                              progress=False, storage_patience=0.5)
    space = SearchSpace.load(space_file)
    base = BaseBundle.load(tiny_prepared, glue_dir)
    journal = default_storage(small_disk.path, "draw")
    storage = RetryingStorage(open_storage(journal), str(journal), settings.storage_patience)
    study, resume = open_study(settings, space, storage, base.task, Path(tiny_prepared), base.student.config,
                               "float45nm", base.dev_size, sampler_for=lambda seed: FillingSampler(small_disk))
    for trial in study.get_trials(deepcopy=False):   # draw a trial of the sampler, not a queued seed
        study.tell(study.ask(), state=TrialState.FAIL)
    driver = Driver(settings, space, study, storage, base.student.config, base.dev_size, "float45nm", resume)
    with pytest.raises(StorageOutage, match=f"the disk of {journal.parent} is full"):
        driver.launch()
    assert inspect_journal(journal, replay=True).ok
    small_disk.free()
    (trial,) = optuna.load_study(study_name="draw", storage=open_storage(journal)).get_trials(
        deepcopy=False, states=(TrialState.RUNNING,))
    assert "error" not in trial.user_attrs   # not mistaken for a config the model cannot hold


@pytest.mark.integration
def test_a_connection_lost_while_trials_are_read_is_waited_out(postgres_url):
    """PostgreSQL drops the connection in the middle of reading the trials: Optuna's RDB storage
    retries the query in the broken transaction and reports the rollback error that follows. That
    is an outage like any other: retried, not a traceback that stops the driver."""
    import psycopg2
    from sqlalchemy import event
    from sqlalchemy.engine import make_url

    name = f"lost-read-{uuid.uuid4().hex[:8]}"
    rdb = optuna.storages.RDBStorage(postgres_url, engine_kwargs={"pool_pre_ping": True})
    study = optuna.create_study(storage=rdb, study_name=name, directions=["maximize"])
    for value in range(3):
        study.tell(study.ask({"x": optuna.distributions.IntDistribution(0, 9)}), [value])
    url = make_url(postgres_url)
    dropped: list[int] = []

    def drop_connection(conn, cursor, statement, *args) -> None:
        """The server ends this connection just before the trials' parameters are read."""
        if statement.lstrip().startswith("SELECT trial_params") and not dropped:
            dropped.append(cursor.connection.info.backend_pid)
            admin = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
            try:
                admin.cursor().execute("SELECT pg_terminate_backend(%s)", (dropped[0],))
                admin.commit()
            finally:
                admin.close()

    event.listen(rdb.engine, "before_cursor_execute", drop_connection)
    storage = RetryingStorage(rdb, "the test database", patience=60.0)
    trials = storage.get_all_trials(rdb.get_study_id_from_name(name))
    assert dropped, "the connection was not dropped while the trials were read"
    assert [t.values for t in trials] == [[0.0], [1.0], [2.0]]


@pytest.mark.integration
def test_a_connection_lost_while_the_storage_opens_is_a_connection_failure(postgres_url):
    """PostgreSQL ends the connection while Optuna checks its tables on opening: Optuna wraps that
    as a StorageInternalError about "invalid data in the commit"; the driver says it cannot
    connect, with the server's reason, like any refused connection."""
    import psycopg2
    from sqlalchemy import event
    from sqlalchemy.engine import Engine, make_url

    url = make_url(postgres_url)
    dropped: list[int] = []

    def drop_connection(conn, cursor, statement, *args) -> None:
        """The server ends this connection just before Optuna reads its schema version."""
        if "FROM version_info" in statement and not dropped:
            dropped.append(cursor.connection.info.backend_pid)
            admin = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
            try:
                admin.cursor().execute("SELECT pg_terminate_backend(%s, 10000)", (dropped[0],))  # waits for it
                admin.commit()
            finally:
                admin.close()

    event.listen(Engine, "before_cursor_execute", drop_connection)   # the engine is made inside open_storage
    try:
        with pytest.raises(SpikepruneError) as error:
            open_storage(postgres_url)
    finally:
        event.remove(Engine, "before_cursor_execute", drop_connection)
    assert dropped, "the connection was not dropped while the storage opened"
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot connect to storage {postgres_url} (server closed the connection "
                              f"unexpectedly); is the database server running"), message
