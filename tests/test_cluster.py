"""Searches on a real multi-node Ray cluster on this machine (tests/raycluster.py: a head and
worker nodes started with ``ray start``, each its own raylet and object store).

- trials spread over the nodes, and each trial records the node that ran it (``trials``, report);
- a worker node whose raylet is killed mid-trial loses nothing: its trial is retried on another
  node, nothing stays RUNNING, nothing runs twice, the search ends with its trials; also with two
  drivers on one PostgreSQL study;
- a worker node that cannot see the run folder, the prepared base or the GLUE data (hidden in its
  own mount namespace) completes trials, recovery included: the base reaches it by the object store;
- a trial given a GPU that torch cannot use fails with a reason that says so.

Faults are planned with the token files of tests/faulty_kernels.py.
"""
from __future__ import annotations

import csv
import io
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from spikeprune.search._storage import default_storage, open_storage

import drivers
from faulty_kernels import FAULTS, KERNEL, claimed, copy_base
from raycluster import RayCluster, cluster_env, session_processes
from tiny_spaces import TINY_KNOBS

pytestmark = pytest.mark.integration  # every test here starts Ray, PostgreSQL or a cluster

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[1]
MAX_EXAMPLES = 16
DEADLINE_S = drivers.DEADLINE_S
#: Ray workers on the nodes import the test trial function from the repository.
NODE_ENV = {"PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> RayCluster:
    """A head node with 1 CPU and 1 (declared) GPU; each test adds its worker nodes."""
    c = RayCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start("head", cpus=1, head=True, gpus=1, env=NODE_ENV)
        yield c
    finally:
        c.stop()


@pytest.fixture
def worker_node(cluster):
    name = f"w{uuid.uuid4().hex[:6]}"
    node = cluster.start(name, cpus=1, env=NODE_ENV)
    yield node
    node.stop()
    del cluster.nodes[name]


def search(address: str, base: Path, run_dir: Path, study: str, n_trials: int, workers: int,
           *extra: str, space: str = "name: tiny" + TINY_KNOBS) -> subprocess.Popen:
    space_file = run_dir / f"{study}.yaml"
    space_file.write_text(space)
    return drivers.start(["--prepared", str(base), "--space", str(space_file), "--study", study, "--n-trials",
                          str(n_trials), "--workers", str(workers), "--run-dir", str(run_dir), "--max-examples",
                          str(MAX_EXAMPLES), "--ray-address", address, "--quiet", "--no-early-stopping", *extra],
                         env=cluster_env())


def short_id(cluster: RayCluster, name: str) -> str:
    return cluster.node_id(name)[:8]


def node_ids(trials) -> list[str]:
    return [t.user_attrs["node"].split("/")[1] for t in trials]


def check_nothing_lost(study: optuna.Study, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``n_trials`` COMPLETE, none RUNNING or FAIL, no config evaluated twice."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == n_trials, states
    assert TrialState.RUNNING not in states and TrialState.FAIL not in states, states
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    fresh = [t for t in complete if "duplicate_of" not in t.user_attrs]
    assert len({tuple(sorted(t.params.items())) for t in fresh}) == len(fresh)
    for t in complete:
        assert t.values is not None and t.user_attrs["metrics"]["metric"] == t.values[0]
    return fresh


class NodeKiller(threading.Thread):
    """Kills ``node``'s raylet as soon as one of its processes holds a ``gate`` token (mid-trial),
    then opens the gates (the trials waiting elsewhere go on)."""

    def __init__(self, base: Path, node) -> None:
        super().__init__(daemon=True)
        self.base, self.node, self.stopped = base, node, threading.Event()
        self.killed_at: float | None = None
        self.node_pids: set[int] = set()    # every process seen on the node until it was killed

    def run(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not self.stopped.is_set() and time.monotonic() < deadline:
            self.node_pids |= self.node.pids
            if any(kind == "gate" and pid in self.node_pids for kind, pid in claimed(self.base)):
                self.node.kill_raylet()
                self.killed_at = time.monotonic()
                break
            time.sleep(0.05)
        (self.base / FAULTS / "open").touch()

    def finished_on_node(self) -> int:
        """Trials the node finished before it was lost (the ``pair`` tokens its workers took)."""
        return sum(kind == "pair" and pid in self.node_pids for kind, pid in claimed(self.base))


def test_trials_spread_over_the_nodes_and_record_them(cluster, worker_node, tiny_prepared, tmp_path):
    drivers.finish(search(cluster.address, tiny_prepared, tmp_path, "spread", 4, 2))
    study = optuna.load_study(study_name="spread", storage=open_storage(default_storage(tmp_path, "spread")))
    fresh = check_nothing_lost(study, 4)
    expected = {short_id(cluster, "head"), short_id(cluster, worker_node.name)}
    assert set(node_ids(fresh)) == expected
    assert {t.user_attrs["device"] for t in fresh} == {"cpu"}
    # Visible to users: the trials table and the report's table.
    table = subprocess.run([sys.executable, "-m", "spikeprune", "trials", "spread", "--run-dir",
                            str(tmp_path)], cwd=REPO, capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    assert len(rows) == 4 and {row["node"].split("/")[1] for row in rows} == expected
    subprocess.run([sys.executable, "-m", "spikeprune", "report", "spread", "--run-dir", str(tmp_path),
                    "--out", str(tmp_path / "report.html")], cwd=REPO, capture_output=True, text=True, check=True)
    html = (tmp_path / "report.html").read_text()
    assert all(node in html for node in expected)


def test_a_worker_node_lost_mid_trial_loses_nothing(cluster, worker_node, tiny_prepared, tmp_path):
    """Two trials run at once (so one per node) and finish, then the worker node's raylet is killed
    while it evaluates the next: Ray runs that task again on the head, the search ends with 6 trials."""
    base = copy_base(tiny_prepared, tmp_path / "base", "pair", "pair", "gate", "gate")
    worker_id = short_id(cluster, worker_node.name)
    killer = NodeKiller(base, worker_node)
    killer.start()
    try:
        drivers.finish(search(cluster.address, base, tmp_path, "lost", 6, 2, "--kernel", KERNEL))
    finally:
        killer.stopped.set()
        killer.join()
    assert killer.killed_at is not None, "no trial ran on the worker node with a gate token"
    study = optuna.load_study(study_name="lost", storage=open_storage(default_storage(tmp_path, "lost")))
    fresh = check_nothing_lost(study, 6)
    # The trials the worker node finished before it was lost are kept; the killed trial and every
    # later one ran on the head.
    assert node_ids(fresh).count(worker_id) == killer.finished_on_node() >= 1
    assert [kind for kind, _ in claimed(base)] == ["pair", "pair", "gate", "gate"]


def test_a_worker_node_lost_under_two_drivers_on_postgres(cluster, worker_node, tiny_prepared, tmp_path,
                                                          postgres_url):
    name = f"lost-{uuid.uuid4().hex[:8]}"
    base = copy_base(tiny_prepared, tmp_path / "base", "pair", "pair", "gate", "gate")
    worker_id = short_id(cluster, worker_node.name)   # a dead node no longer lists its resources
    killer = NodeKiller(base, worker_node)
    killer.start()
    try:
        pair = [search(cluster.address, base, tmp_path, name, 6, 1, "--trial-function", KERNEL,
                       "--storage", postgres_url)
                for _ in range(2)]
        drivers.finish(*pair)
    finally:
        killer.stopped.set()
        killer.join()
    assert killer.killed_at is not None, "no trial ran on the worker node with a gate token"
    study = optuna.load_study(study_name=name, storage=postgres_url)
    fresh = check_nothing_lost(study, 6)
    assert len({t.user_attrs["driver"]["id"] for t in fresh}) == 2
    assert node_ids(fresh).count(worker_id) == killer.finished_on_node()


def test_a_worker_node_without_the_run_folder(tiny_prepared, glue_dir, tmp_path, tmp_path_factory):
    """A cluster whose only CPUs are on a node that cannot see pytest's folders (the run folder and
    the prepared base live there) nor the GLUE data, started from another working directory."""
    hidden = (tmp_path_factory.getbasetemp(), Path(glue_dir).resolve())
    c = RayCluster(tmp_path)
    try:
        c.start("head", cpus=0, head=True)
        node = c.start("far", cpus=2, hide=hidden)
        raylet = next(pid for pid, comm in session_processes(node.process.pid).items() if comm == "raylet")
        mounts = Path(f"/proc/{raylet}/mountinfo").read_text()
        assert all(f" {p} " in mounts for p in hidden), "the folders are not hidden from the node"
        space = "name: far" + TINY_KNOBS + "recovery_steps: 2\n"   # recovery reads the teacher and train set
        drivers.finish(search(c.address, tiny_prepared, tmp_path, "far", 4, 2, space=space))
        study = optuna.load_study(study_name="far", storage=open_storage(default_storage(tmp_path, "far")))
        fresh = check_nothing_lost(study, 4)
        assert set(node_ids(fresh)) == {c.node_id("far")[:8]}
        assert {t.user_attrs["compression"]["recovery_steps"] for t in fresh} == {2}
    finally:
        c.stop()


def test_a_gpu_that_torch_cannot_use_fails_the_trial_clearly(cluster, tiny_prepared, tmp_path):
    """The head declares a GPU; torch here has no CUDA: the trial fails saying so, nothing runs on the CPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the trial would run on it")
    out = drivers.finish(search(cluster.address, tiny_prepared, tmp_path, "gpu", 1, 1, "--gpus-per-trial", "1",
                        "--max-failures", "1"), code=1)
    assert "stopped after 1 failed trials" in out[0]
    study = optuna.load_study(study_name="gpu", storage=open_storage(default_storage(tmp_path, "gpu")))
    (trial,) = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert "cannot use CUDA" in trial.user_attrs["error"] and "--gpus-per-trial 0" in trial.user_attrs["error"]
    assert trial.user_attrs["node"].split("/")[1] == short_id(cluster, "head")
