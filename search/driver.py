"""The search driver: one process owns the study, Ray runs the evaluations.

Shape (DESIGN.md §6): the driver asks Optuna for a trial, turns its parameters into a
CompressionConfig, and submits the evaluation as a Ray task; it keeps ``workers`` tasks in flight
with ``ray.wait`` and is the only process that writes the study. The base bundle (student,
importance scores, encoded dev set) goes into the object store once and every task gets it by
reference. The same code runs on a local ``ray.init`` or on a cluster (``ray_address``).

Counting: ``n_trials`` is the number of COMPLETE trials the study should hold, whoever ran them,
so re-running the same command after a crash finishes the job instead of starting a new one.
Early-stopped trials are COMPLETE (told with their partial values); failed ones do not count. A
driver starts no trial once the COMPLETE and RUNNING trials (of every driver) reach ``n_trials``,
and waits for its own; a failed one makes room for another.

Early stopping (Optuna's pruners do not support several objectives): with the space's
``early_stopping`` set, each trial's task first evaluates ``fraction`` of the dev set (the look).
If the look is beaten by another trial's look on the same examples — no worse in every objective
and better in the metric by more than ``margin`` — or misses the metric floor by more than
``margin``, the trial stops there, told with its partial values and marked ``early_stopped``
(fidelity < 1). Otherwise the same task goes on with the rest of the dev set (the look is not
evaluated twice). The decision is made in the worker (``models.trial.EarlyStop``) against the
looks the study held when the task was submitted. Seeds (the baseline and the uniform configs)
take the look, for later trials to compare with, and always run in full.

Resume: trials left RUNNING by a driver that is gone (on this host: its process is dead; on another:
no heartbeat for ``stale_after_s``) are marked FAIL and their parameters enqueued again; finished
trials are never re-run. A config equal to one already finished, or being evaluated, is not
evaluated again either: the trial is told that trial's values (user attr ``duplicate_of``).

Faults (see README "Reliability and safety"):

- a kernel error, a non-finite measurement (NaN/inf) or a trial running longer than
  ``trial_timeout`` (its Ray task is then killed) fails the trial with the reason in its ``error``
  attr, and the search goes on (up to ``max_failures`` failures per run);
- a worker process that dies mid-trial (killed, out of memory) makes Ray run the task again, once
  (``TASK_RETRIES``: a transient death is retried, a config that kills its worker every time costs
  two attempts, not an endless loop); a second death fails the trial;
- storage calls that fail because the storage is out of reach (a database restart, a network
  blip) are retried with backoff for ``storage_patience`` seconds (``RetryingStorage``); results
  that finish meanwhile wait in memory, so none is lost; past the patience the driver stops with
  one line and the next run resumes;
- several drivers may share one study (PostgreSQL): seeds are enqueued once, queued trials are
  taken atomically, a config another driver is evaluating is followed rather than re-run (the
  later trial becomes its ``duplicate_of``), and ``n_trials`` counts every driver's trials.
"""
from __future__ import annotations

import abc
import json
import logging
import math
import os
import socket
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from spikeprune.models.config import CompressionConfig, SpikingBertConfig
from spikeprune.models.errors import SpikepruneError
from spikeprune.models.trial import EarlyStop
from spikeprune.spaces.schema import SearchSpace

from .progress import Progress
from .storage import check_study_name, default_storage, describe, open_storage
from .worker import DEFAULT_KERNEL, load_kernel

SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "nsga3", "gp", "random")
#: Trial user attrs copied from an earlier identical trial to a duplicate.
RESULT_ATTRS: tuple[str, ...] = ("metrics", "metric_ci", "report", "timing", "worker", "examples",
                                 "fidelity", "early_stopped", "partial")
HEARTBEAT_KEY = "spikeprune:driver:"
HEARTBEAT_EVERY_S = 30.0
#: Times Ray re-runs a task whose worker process died before the trial fails (see the module doc).
TASK_RETRIES = 1
#: How often a driver looks at a trial another driver evaluates for it, and waits for a new study's
#: setup by the driver that created it.
POLL_S = 1.0
SETUP_WAIT_S = 30.0
#: Backoff between storage retries: doubling from the first, capped at the second.
RETRY_DELAYS_S = (0.5, 10.0)
LOG = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    """Everything a search needs; ``spikeprune search`` fills it from the command line."""

    prepared: str | Path
    space: str | Path | SearchSpace = "joint"
    task: str | None = None                 # checked against the prepared base when given
    study_name: str = "search"
    n_trials: int = 20                      # COMPLETE trials the study should hold
    workers: int = 2                        # evaluations in flight
    storage: str | None = None              # URL or journal path; default <run_dir>/<study>/journal.log
    run_dir: str | Path = "runs"
    sampler: str = "tpe"
    seed: int = 0
    ray_address: str | None = None          # an existing cluster; None starts a local one
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    glue_dir: str | Path | None = None
    energy: str | None = None               # overrides the space's energy preset
    max_examples: int | None = None         # cap on dev examples of a full evaluation
    early_stopping: bool = True             # False ignores the space's early_stopping
    population_size: int = 20               # NSGA-II/III generation size
    max_failures: int = 5                   # stop after this many failed trials in one run
    stale_after_s: float = 120.0            # a driver silent this long is dead (other hosts)
    progress: bool = True                   # live status line on stderr
    trial_timeout: float | None = None      # seconds from a trial's submission; then it is killed and failed
    storage_patience: float = 600.0         # seconds to wait for unreachable storage before stopping
    kernel: str = DEFAULT_KERNEL            # "module:function" the workers run per trial (worker.py)

    def check(self) -> None:
        check_study_name(self.study_name)
        if self.sampler not in SAMPLERS:
            raise SpikepruneError(f"sampler {self.sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
        for name in ("n_trials", "workers", "max_failures", "population_size"):
            if int(getattr(self, name)) < 1:
                raise SpikepruneError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise SpikepruneError("cpus_per_trial must be > 0 and gpus_per_trial >= 0")
        if self.max_examples is not None and self.max_examples < 1:
            raise SpikepruneError(f"max_examples must be >= 1, got {self.max_examples}")
        if self.trial_timeout is not None and not self.trial_timeout > 0:
            raise SpikepruneError(f"trial_timeout must be > 0 seconds, got {self.trial_timeout}")
        if not self.storage_patience >= 0:
            raise SpikepruneError(f"storage_patience must be >= 0 seconds, got {self.storage_patience}")


def make_sampler(name: str, seed: int, population_size: int = 20) -> optuna.samplers.BaseSampler:
    """The sampler by name. Feasibility needs no constraints_func: in Optuna 5 every sampler reads
    the constraints the driver sets on each trial (``Trial.set_constraint``) before ``tell``."""
    s = optuna.samplers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return s.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed)
        if name == "nsga2":
            return s.NSGAIISampler(population_size=population_size, seed=seed)
        if name == "nsga3":
            return s.NSGAIIISampler(population_size=population_size, seed=seed)
        if name == "gp":
            return s.GPSampler(seed=seed)
        if name == "random":
            return s.RandomSampler(seed=seed)
    raise SpikepruneError(f"sampler {name!r} is unknown; use one of {', '.join(SAMPLERS)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextmanager
def ray_session(settings: SearchSettings) -> Iterator[None]:
    """Connect to ``ray_address``, reuse an initialised Ray, or start a local cluster sized for
    ``workers`` tasks (and stop it afterwards)."""
    if not settings.ray_address:
        # A laptop cluster: no usage reporting, no token file, loopback only (DESIGN.md §8).
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    started = False
    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
                # Ray reads this switch once, on import: apply it in case Ray was imported before.
                import ray._private.ray_constants as ray_constants
                ray_constants.ENABLE_RAY_CLUSTER = False
            gpus = settings.workers * settings.gpus_per_trial
            # A laptop cluster listens on loopback only (Ray would bind the external address).
            ray.init(num_cpus=max(1, round(settings.workers * settings.cpus_per_trial)),
                     num_gpus=None if gpus == 0 else max(1, round(gpus)), include_dashboard=False,
                     log_to_driver=False, _node_ip_address="127.0.0.1")
        started = True
    try:
        have = ray.cluster_resources()
        for key, need in (("CPU", settings.cpus_per_trial), ("GPU", settings.gpus_per_trial)):
            if need and have.get(key, 0) < need:
                raise SpikepruneError(f"each trial asks for {need:g} {key} but the Ray cluster has "
                                      f"{have.get(key, 0):g}; lower --{key.lower()}s-per-trial or add resources")
        yield
    finally:
        if started:
            ray.shutdown()


# -------------------------------------------------------------------------------- storage
def _unreachable(error: BaseException) -> bool:
    """Whether a storage error means the storage is out of reach for now (worth waiting for): a
    lost or refused database connection, or an I/O error on the journal's disk or share."""
    import sqlalchemy.exc

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                              sqlalchemy.exc.DisconnectionError)):
            return True
        if isinstance(cause, OSError) and not isinstance(cause, (PermissionError, FileNotFoundError,
                                                                 IsADirectoryError, NotADirectoryError)):
            return True
        cause = cause.__cause__
    return False


def _reason(error: BaseException) -> str:
    """The innermost error's first line: what the database driver or the OS said."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class RetryingStorage(optuna.storages.BaseStorage):
    """Any Optuna storage, with every call retried while the storage is out of reach.

    A call that fails for a connection reason (``_unreachable``) is repeated with doubling delays
    (``RETRY_DELAYS_S``) for up to ``patience`` seconds; then the outage becomes one
    ``SpikepruneError`` and later calls fail at once (so the way out does not wait again). Each
    storage call is one transaction, so retrying it alone is safe; the one call that is not
    idempotent, finishing a trial, is recognised when a retry finds the first attempt did commit.
    """

    def __init__(self, inner: optuna.storages.BaseStorage, where: str, patience: float) -> None:
        self._inner, self._where, self._patience = inner, where, patience
        self._gave_up = False

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        method = getattr(self._inner, name)
        first_failure: float | None = None
        delay = RETRY_DELAYS_S[0]
        while True:
            try:
                result = method(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if first_failure is not None and name == "set_trial_state_values":
                    return True  # the attempt that seemed to fail had committed
                raise
            except Exception as e:
                if self._gave_up or not _unreachable(e):
                    raise
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                    LOG.warning("storage %s is unreachable (%s); retrying for up to %g s",
                                self._where, _reason(e), self._patience)
                waited = now - first_failure
                if waited >= self._patience:
                    self._gave_up = True
                    raise SpikepruneError(
                        f"storage {self._where} unreachable for {waited:.0f} s ({_reason(e)}); finished trials "
                        f"are saved: start the storage and rerun the same command to resume") from None
                time.sleep(min(delay, self._patience - waited))
                delay = min(2 * delay, RETRY_DELAYS_S[1])
                continue
            if first_failure is not None:
                LOG.warning("storage %s is reachable again after %.0f s", self._where,
                            time.monotonic() - first_failure)
            return result


def _retrying(name: str) -> Any:
    def call(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    call.__name__ = call.__qualname__ = name
    return call


for _name, _member in vars(optuna.storages.BaseStorage).items():
    if callable(_member) and not _name.startswith("_"):
        setattr(RetryingStorage, _name, _retrying(_name))
abc.update_abstractmethods(RetryingStorage)


def task_error(error: Exception) -> str:
    """One line for a Ray failure of the task itself (the kernel's own errors come back as data)."""
    import ray

    if isinstance(error, ray.exceptions.WorkerCrashedError):
        return (f"WorkerCrashedError: the Ray worker running the trial died (killed, out of memory or "
                f"crashed), also when Ray ran it again ({TASK_RETRIES} retry)")
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[-1] if text else repr(error)}"


@dataclass
class _Flight:
    """One trial being evaluated."""

    trial: optuna.Trial
    config: CompressionConfig
    seeded: bool
    started: float = field(default_factory=time.monotonic)  # submission, for trial_timeout
    #: Trials with the same parameters asked while this one ran: they are told its result.
    followers: list[optuna.Trial] = field(default_factory=list)


@dataclass
class RunStats:
    """What this run did, for the summary line (examples = dev examples evaluated)."""

    finished: int = 0
    failed: int = 0
    early_stopped: int = 0
    duplicates: int = 0
    examples: int = 0
    examples_without_stopping: int = 0
    re_queued: list[int] = field(default_factory=list)


class Driver:
    """Runs one search: owns the study, the Ray tasks in flight and the progress display."""

    def __init__(self, settings: SearchSettings, space: SearchSpace, study: optuna.Study,
                 storage: optuna.storages.BaseStorage, model: SpikingBertConfig, dev_size: int, energy: str) -> None:
        self.s, self.space, self.study, self.storage = settings, space, study, storage
        self.model, self.dev_size, self.energy = model, dev_size, energy
        self.full_examples = min(settings.max_examples or dev_size, dev_size)
        es = space.early_stopping if settings.early_stopping and "metric" in space.objective_names else None
        self.margin = es.margin if es else 0.0
        self.partial_examples = max(1, round(es.fraction * self.full_examples)) if es else None
        if self.partial_examples is not None and self.partial_examples >= self.full_examples:
            self.partial_examples = None
        self.metric_index = space.objective_names.index("metric") if "metric" in space.objective_names else None
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.driver = {"id": uuid.uuid4().hex[:12], "host": self.host, "pid": self.pid}
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.flights: dict[Any, _Flight] = {}
        #: Our trials waiting for a trial another driver evaluates, by that trial's number.
        self.foreign: dict[int, list[optuna.Trial]] = {}
        self.stats = RunStats()
        self.last_beat = 0.0
        self.progress = Progress(study, settings.n_trials, enabled=settings.progress)

    # ------------------------------------------------------------------------- resume
    def recover(self) -> None:
        """Fail trials left RUNNING by dead drivers and enqueue their parameters again."""
        self.heartbeat(force=True)
        # Trials before heartbeats: a driver writes its heartbeat before it asks any trial, so every
        # owner of a trial listed here has a beat in the later read. The other order let a driver
        # that started a moment after us be taken for dead and its first trial re-queued.
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        beats = self.beats()
        others_alive = any(self.alive(d, beats) for d in beats if d != self.driver["id"])
        for t in running:
            owner = t.user_attrs.get("driver")
            # A trial without an owner was just asked by a driver that has not labelled it yet.
            if self.alive(owner.get("id"), beats) if isinstance(owner, dict) else others_alive:
                continue
            who = f"{owner.get('host')}:{owner.get('pid')}" if isinstance(owner, dict) else "an unknown process"
            # An enqueued config (a seed, a retry) may die before all of it was drawn: keep it whole.
            params = {**t.system_attrs.get("fixed_params", {}), **t.params}
            self.requeue(t.number, params, t.user_attrs, f"driver {who} stopped while the trial ran")
            self.stats.re_queued.append(t.number)

    def beats(self) -> dict[str, Any]:
        return {k[len(HEARTBEAT_KEY):]: v for k, v in self.storage.get_study_system_attrs(self.study_id).items()
                if k.startswith(HEARTBEAT_KEY)}

    def alive(self, driver_id: Any, beats: dict[str, Any]) -> bool:
        """Whether a driver still runs: its process when it is on this host, else a recent heartbeat."""
        if driver_id == self.driver["id"]:
            return True
        beat = beats.get(driver_id)
        if not isinstance(beat, dict):
            return False
        if beat.get("host") == self.host:
            pid = int(beat.get("pid") or 0)
            return pid > 0 and _pid_alive(pid)
        return time.time() - float(beat.get("time", 0)) <= self.s.stale_after_s

    def heartbeat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last_beat >= HEARTBEAT_EVERY_S:
            self.storage.set_study_system_attr(self.study_id, HEARTBEAT_KEY + self.driver["id"],
                                               {"time": now, "host": self.host, "pid": self.pid})
            self.last_beat = now

    # ---------------------------------------------------------------------------- loop
    def run(self, base_ref: Any) -> RunStats:
        import ray

        from .worker import evaluate

        self.task = ray.remote(evaluate).options(num_cpus=self.s.cpus_per_trial, num_gpus=self.s.gpus_per_trial,
                                                 max_retries=TASK_RETRIES)
        self.base_ref = base_ref
        self.recover()
        self.progress.update(running=0)
        try:
            while True:
                while (self.stats.failed < self.s.max_failures and len(self.flights) < self.s.workers
                       and self.taken() < self.s.n_trials):
                    self.launch()
                if not self.flights and not self.foreign:
                    break
                if self.flights:
                    ready, _ = ray.wait(list(self.flights), num_returns=1, timeout=self.wait_s())
                    for ref in ready:
                        self.land(ref, self.flights.pop(ref))
                else:
                    time.sleep(POLL_S)
                self.expire()
                self.poll_foreign()
                self.heartbeat()
        except BaseException as e:
            self.abandon(f"driver stopped ({type(e).__name__})")
            raise
        finally:
            self.progress.close()
        return self.stats

    def taken(self) -> int:
        """Trials of the study that are finished or being evaluated, by any driver."""
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))

    def wait_s(self) -> float:
        """How long ``ray.wait`` may block: until the next heartbeat, foreign poll or trial deadline."""
        wait = POLL_S if self.foreign else HEARTBEAT_EVERY_S
        if self.s.trial_timeout:
            now = time.monotonic()
            wait = min([wait] + [f.started + self.s.trial_timeout - now for f in self.flights.values()])
        return max(0.0, wait)

    def launch(self) -> None:
        """Ask for a trial and start it, or let it follow a trial with the same parameters."""
        trial = self.study.ask()
        trial.set_user_attr("driver", self.driver)
        if self.surplus(trial):
            return
        seeded = bool(trial.user_attrs.get("seeded"))
        try:
            config = self.space.suggest(trial).resolve(self.model)
        except SpikepruneError as e:
            trial.set_user_attr("error", str(e))
            self.study.tell(trial, state=TrialState.FAIL)
            self.stats.failed += 1
            return
        trial.set_user_attr("compression", config.to_dict())
        leader = self.twin(trial.number, trial.params)
        if leader is not None:
            self.follow(trial, leader)
            return
        self.submit(_Flight(trial, config, seeded))

    def surplus(self, trial: optuna.Trial) -> bool:
        """With several drivers, two may start the last trial at once: the one asked later (higher
        number) steps back, PRUNED without parameters, and a queued config it took is queued again."""
        ahead = sum(1 for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                    if t.state == TrialState.COMPLETE or t.number < trial.number)
        if ahead < self.s.n_trials:
            return False
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        fixed = self.storage.get_trial(trial_id).system_attrs.get("fixed_params")
        if fixed:
            flags = {k: v for k, v in trial.user_attrs.items() if k in ("seeded", "baseline", "retry_of")}
            self.study.enqueue_trial(fixed, user_attrs=flags)
        trial.set_user_attr("skipped", f"not needed: {ahead} trials were finished or running when it started")
        self.study.tell(trial, state=TrialState.PRUNED)
        return True

    def twin(self, number: int, params: dict[str, Any]) -> FrozenTrial | None:
        """The trial whose result stands for trial ``number``: the first complete evaluation of the
        same parameters, else an earlier trial (lower number) still running with them."""
        running = None
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.number == number or t.params != params:
                continue
            if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs:
                return t
            if t.state == TrialState.RUNNING and t.number < number and running is None:
                running = t
        return running

    def follow(self, trial: optuna.Trial, leader: FrozenTrial, waiting: list[optuna.Trial] | None = None) -> None:
        """Give ``trial`` (and the trials ``waiting`` for it) ``leader``'s result, now or when it has one."""
        group = [trial, *(waiting or [])]
        if leader.state == TrialState.COMPLETE:
            for t in group:
                self.copy_result(t, leader)
            return
        local = next((f for f in self.flights.values() if f.trial.number == leader.number), None)
        if local is not None:
            local.followers.extend(group)
        else:
            self.foreign.setdefault(leader.number, []).extend(group)

    def poll_foreign(self) -> None:
        """Settle our trials that follow another driver's trial once it has finished; re-queue it if
        its driver is gone."""
        for number, group in list(self.foreign.items()):
            leader = self.storage.get_trial(self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number))
            if leader.state == TrialState.RUNNING:
                owner = leader.user_attrs.get("driver") or {}
                if not self.alive(owner.get("id"), self.beats()):
                    self.requeue(number, leader.params, leader.user_attrs,
                                 f"driver {owner.get('host')}:{owner.get('pid')} stopped while the trial ran")
                    self.stats.re_queued.append(number)
                continue
            del self.foreign[number]
            for t in group:
                if leader.state == TrialState.COMPLETE:
                    self.copy_result(t, leader)
                else:
                    t.set_user_attr("error", f"same parameters as trial #{number}, which failed")
                    self.study.tell(t, state=TrialState.FAIL)

    def copy_result(self, trial: optuna.Trial, earlier: FrozenTrial) -> None:
        """Tell ``trial`` the result of an earlier trial with the same parameters."""
        for key in RESULT_ATTRS:
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        original = earlier.user_attrs.get("duplicate_of", earlier.number)
        trial.set_user_attr("duplicate_of", original)
        self.tell(trial, earlier.values, earlier.constraints)
        self.stats.duplicates += 1
        self.progress.update(running=len(self.flights), last=f"#{trial.number} = #{original}")

    def early_stop(self, flight: _Flight) -> EarlyStop | None:
        """The look this trial's task takes, with the looks of the study's other trials so far
        (a seed compares with nothing: it always runs in full)."""
        if self.partial_examples is None:
            return None
        others = () if flight.seeded else tuple(
            tuple(t.user_attrs["partial"]["values"]) for t in self.study.get_trials(deepcopy=False)
            if t.number != flight.trial.number
            and (t.user_attrs.get("partial") or {}).get("examples") == self.partial_examples)
        return EarlyStop(examples=self.partial_examples, objectives=tuple(self.space.objective_names),
                         directions=tuple(self.space.directions), metric=self.metric_index, margin=self.margin,
                         floor=None if flight.seeded else self.space.constraints.get("metric_min"), others=others)

    def submit(self, flight: _Flight) -> None:
        ref = self.task.remote(self.base_ref, flight.config.to_dict(), kernel=self.s.kernel,
                               max_examples=None if self.full_examples >= self.dev_size else self.full_examples,
                               seed=self.s.seed, energy=self.energy, threads=max(1, int(self.s.cpus_per_trial)),
                               early_stop=self.early_stop(flight))
        self.flights[ref] = flight
        self.progress.update(running=len(self.flights))

    def expire(self) -> None:
        """Kill the tasks of trials past ``trial_timeout`` and fail those trials."""
        if not self.s.trial_timeout:
            return
        import ray

        now = time.monotonic()
        for ref, flight in list(self.flights.items()):
            if now - flight.started < self.s.trial_timeout:
                continue
            del self.flights[ref]
            if ray.wait([ref], timeout=0)[0]:  # finished just in time
                self.land(ref, flight)
                continue
            ray.cancel(ref, force=True)
            self.fail(flight, {"error": f"timed out after {self.s.trial_timeout:g} s; raise --trial-timeout "
                                        f"if trials need longer"})

    def land(self, ref: Any, flight: _Flight) -> None:
        """Handle a finished task: record a failure, decide on early stopping, or tell the result."""
        import ray

        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as e:
            result = {"error": task_error(e)}
        if "error" not in result:
            broken = {k: v for k, v in result["objectives"].items() if not math.isfinite(float(v))}
            if broken:
                shown = ", ".join(f"{k} = {v}" for k, v in broken.items())
                result = {"error": f"the trial measured {shown}; a non-finite value cannot be ranked "
                                   f"(the compressed model is degenerate or the kernel is wrong)",
                          "worker": result.get("worker")}
        if "error" in result:
            self.fail(flight, result)
            return
        self.stats.examples += result["examples"]
        look = result.get("partial")
        if look:
            flight.trial.set_user_attr("partial", {"examples": look["examples"], "metrics": look["metrics"],
                                                   "values": self.space.objective_values(look["objectives"])})
        self.finish(flight, result)

    def fail(self, flight: _Flight, result: dict[str, Any]) -> None:
        """Record a failed evaluation on the trial (FAIL with its error) and on its followers."""
        trial = flight.trial
        for key in ("error", "traceback", "worker"):
            if result.get(key) is not None:
                trial.set_user_attr(key, result[key])
        self.study.tell(trial, state=TrialState.FAIL)
        self.stats.failed += 1
        for follower in flight.followers:
            follower.set_user_attr("error", f"same parameters as trial #{trial.number}, which failed")
            self.study.tell(follower, state=TrialState.FAIL)
        self.progress.update(running=len(self.flights), last=f"#{trial.number} failed: {result['error'][:80]}")

    def finish(self, flight: _Flight, result: dict[str, Any]) -> None:
        trial = flight.trial
        # Another driver may have started the same config just before us without our seeing it:
        # the earlier trial's result stands for both (rare; it costs one evaluation, not a duplicate).
        leader = self.twin(trial.number, trial.params)
        if leader is not None:
            self.follow(trial, leader, flight.followers)
            return
        stopped = bool(result.get("early_stopped"))
        for key in ("metrics", "metric_ci", "report", "timing", "worker", "examples"):
            trial.set_user_attr(key, result[key])
        trial.set_user_attr("fidelity", result["examples"] / self.dev_size)
        trial.set_user_attr("early_stopped", stopped)
        values = self.space.objective_values(result["objectives"])
        self.tell(trial, values, self.space.constraint_values(result["objectives"]))
        self.stats.early_stopped += stopped
        self.stats.examples_without_stopping += self.full_examples
        if trial.user_attrs.get("baseline") and not stopped:
            meta = dict(self.study.user_attrs["spikeprune"])
            meta["reference"] = dict(zip(self.space.objective_names, values))
            self.study.set_user_attr("spikeprune", meta)
        shown = ", ".join(f"{n} {v:.4g}" for n, v in zip(self.space.objective_names, values))
        note = " (stopped early)" if stopped else ""
        self.progress.update(running=len(self.flights),
                             last=f"#{trial.number} {shown}{note} in {result['timing'].get('total_s', 0):.1f}s")
        if flight.followers:
            told = self.storage.get_trial(self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number))
            for follower in flight.followers:
                self.copy_result(follower, told)

    def tell(self, trial: optuna.Trial, values: list[float], constraints: dict[str, float]) -> None:
        """Constraints go on the trial before ``tell`` so samplers, the front and plots see feasibility."""
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        self.study.tell(trial, values)
        self.stats.finished += 1

    def abandon(self, reason: str) -> None:
        """On the way out (Ctrl-C, an error): fail the trials in flight and queue them again."""
        import ray

        for ref, flight in list(self.flights.items()):
            try:
                ray.cancel(ref, force=True)
                self.requeue(flight.trial.number, flight.trial.params, flight.trial.user_attrs, reason)
                for follower in flight.followers:  # the leader's re-queued parameters cover them
                    follower.set_user_attr("error", f"{reason}; same parameters as trial #{flight.trial.number}")
                    self.study.tell(follower, state=TrialState.FAIL)
            except Exception as e:  # storage gone too: the next run's recover() cleans up
                LOG.warning("could not re-queue trial %d: %s", flight.trial.number, e)
        for number, group in self.foreign.items():
            for follower in group:
                try:
                    follower.set_user_attr("error", f"{reason}; same parameters as trial #{number}")
                    self.study.tell(follower, state=TrialState.FAIL)
                except Exception as e:
                    LOG.warning("could not fail trial %d: %s", follower.number, e)
        self.flights.clear()
        self.foreign.clear()

    def requeue(self, number: int, params: dict[str, Any], attrs: dict[str, Any], reason: str) -> None:
        """Fail a RUNNING trial and enqueue its parameters again (keeping its seed flags)."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.set_trial_user_attr(trial_id, "error", f"{reason}; re-queued")
        self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        if params:
            flags = {k: attrs[k] for k in ("seeded", "baseline") if k in attrs}
            self.study.enqueue_trial(params, user_attrs={**flags, "retry_of": number})


# ------------------------------------------------------------------------------ study
def open_study(settings: SearchSettings, space: SearchSpace, storage: optuna.storages.BaseStorage,
               task: str, prepared: Path, model: SpikingBertConfig, energy: str, dev_size: int) -> optuna.Study:
    """Create the study (directions, metric names, seeds, then metadata) or check and load it.

    Of several drivers starting together, only the one whose ``create_new_study`` succeeded sets the
    study up; the others wait for its metadata, which it writes last, so seeds are queued once.
    """
    sampler = make_sampler(settings.sampler, settings.seed, settings.population_size)
    try:
        storage.create_new_study([StudyDirection[d.upper()] for d in space.directions], settings.study_name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler)
    wanted = {"task": task, "objectives": [{"name": o.name, "direction": o.direction} for o in space.objectives],
              "space": space.to_dict(), "prepared": str(prepared), "energy": energy, "reference": None,
              "dev_examples": dev_size, "max_examples": settings.max_examples}
    meta = study.user_attrs.get("spikeprune")
    deadline = time.monotonic() + SETUP_WAIT_S
    while meta is None and not created and time.monotonic() < deadline:
        time.sleep(POLL_S / 5)  # another driver created the study a moment ago and is setting it up
        meta = study.user_attrs.get("spikeprune")
    if meta is None:
        trials = study.get_trials(deepcopy=False)
        if trials and not any(t.user_attrs.get("seeded") for t in trials):
            raise SpikepruneError(f"study {settings.study_name!r} exists but was not made by spikeprune search; "
                                  f"pick another --study name")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(space.objective_names)
        for i, config in enumerate([] if trials else space.seed_configs(model)):  # queued unless a setup broke off
            flags = {"seeded": True, **({"baseline": True} if i == 0 else {})}
            study.enqueue_trial(space.params(config, model), user_attrs=flags)
        study.set_user_attr("spikeprune", wanted)
        return study
    _check_same_study(settings.study_name, meta, wanted)
    return study


def _check_same_study(name: str, meta: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Resuming with another task, base, space or energy model would mix incomparable trials."""
    def core(space: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in space.items() if k not in ("name", "description", "early_stopping")}

    for key, same in (("task", meta.get("task") == wanted["task"]),
                      ("prepared", meta.get("prepared") == wanted["prepared"]),
                      ("space", core(meta.get("space", {})) == core(wanted["space"])),
                      ("energy", meta.get("energy") == wanted["energy"]),
                      ("max_examples", meta.get("max_examples") == wanted["max_examples"])):
        if not same:
            raise SpikepruneError(f"study {name!r} was made with another {key} ({json.dumps(meta.get(key))[:120]}); "
                                  f"resume with the same settings or pick a new --study name")


def run_search(settings: SearchSettings) -> optuna.Study:
    """Run (or resume) a search until the study holds ``n_trials`` COMPLETE trials."""
    settings.check()
    space = settings.space if isinstance(settings.space, SearchSpace) else SearchSpace.load(settings.space)
    energy = settings.energy or space.energy
    if settings.energy:
        from spikeprune.models.ops import resolve_energy
        resolve_energy(energy)
    load_kernel(settings.kernel)  # torch and the model code: after the cheap checks
    from spikeprune.models.trial import BaseBundle

    base = BaseBundle.load(settings.prepared, settings.glue_dir)
    if settings.task and settings.task != base.task:
        raise SpikepruneError(f"--task {settings.task} but {settings.prepared} was prepared for {base.task}")
    model = base.student.config
    space.check(model)
    # Last, as a journal is created on opening: a search refused for bad input leaves no files.
    location = settings.storage or default_storage(settings.run_dir, settings.study_name)
    storage = RetryingStorage(optuna.storages.get_storage(open_storage(location)), describe(location),
                              settings.storage_patience)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = open_study(settings, space, storage, base.task, Path(settings.prepared).resolve(), model,
                           energy, base.dev_size)
        driver = Driver(settings, space, study, storage, model, base.dev_size, energy)
        with ray_session(settings):
            import ray

            base_ref = ray.put(base)
            del base
            stats = driver.run(base_ref)
    finally:
        optuna.logging.set_verbosity(verbosity)
    print(summary(study, stats, describe(location)))
    return study


def summary(study: optuna.Study, stats: RunStats, location: str) -> str:
    lines = [f"study {study.study_name} ({location}): this run finished {stats.finished} trials "
             f"({stats.early_stopped} stopped early, {stats.duplicates} duplicates), {stats.failed} failed"]
    if stats.re_queued:
        lines.append(f"re-queued trials left running by a stopped driver: {stats.re_queued}")
    if stats.examples_without_stopping:
        lines.append(f"dev examples evaluated: {stats.examples}, {stats.examples / stats.examples_without_stopping:.0%} "
                     f"of the {stats.examples_without_stopping} that full evaluations of the same trials take")
    return "\n".join(lines)
