"""The search driver: one process owns the study, Ray runs the evaluations.

Shape (DESIGN.md §6): the driver asks Optuna for a trial, turns its parameters into a
CompressionConfig, and submits the evaluation as a Ray task; it keeps ``workers`` tasks in flight
with ``ray.wait`` and is the only process that writes the study. The base bundle (student,
importance scores, encoded dev set) goes into the object store once and every task gets it by
reference. The same code runs on a local ``ray.init`` or on a cluster (``ray_address``).

Counting: ``n_trials`` is the number of COMPLETE trials the study should hold, whoever ran them,
so re-running the same command after a crash finishes the job instead of starting a new one.
Early-stopped trials are COMPLETE (told with their partial values); failed ones do not count.

Early stopping (Optuna's pruners do not support several objectives): with the space's
``early_stopping`` set, each trial is first evaluated on ``fraction`` of the dev set. If that
partial result is beaten by another trial's partial result on the same examples — no worse in
every objective and better in the metric by more than ``margin`` — or misses the metric floor by
more than ``margin``, the trial stops there, told with its partial values and marked
``early_stopped`` (fidelity < 1). Otherwise it is evaluated on the whole dev set. Seeds (the
baseline and the uniform configs) always run in full.

Resume: trials left RUNNING by a driver that is gone (same host and its process is dead, or no
heartbeat for ``stale_after_s``) are marked FAIL and their parameters enqueued again; finished
trials are never re-run. A config equal to one already finished, or being evaluated, is not
evaluated again either: the trial is told that trial's values (user attr ``duplicate_of``).
"""
from __future__ import annotations

import json
import logging
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
from optuna.trial import FrozenTrial, TrialState

from spikeprune.models.config import CompressionConfig, SpikingBertConfig
from spikeprune.models.errors import SpikepruneError
from spikeprune.spaces.schema import SearchSpace

from .progress import Progress
from .storage import check_study_name, default_storage, describe, open_storage

SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "nsga3", "gp", "random")
#: Trial user attrs copied from an earlier identical trial to a duplicate.
RESULT_ATTRS: tuple[str, ...] = ("metrics", "metric_ci", "report", "timing", "worker", "examples",
                                 "fidelity", "early_stopped", "partial")
HEARTBEAT_KEY = "spikeprune:driver:"
HEARTBEAT_EVERY_S = 30.0
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


def clearly_beaten(values: list[float], others: list[list[float]], directions: list[str], metric: int,
                   margin: float, floor: float | None = None) -> bool:
    """Whether a partial result is clearly worse than another on the same examples: some other
    point is no worse in every objective and better in the metric (index ``metric``) by more than
    ``margin``; or the metric misses the ``floor`` constraint by more than ``margin``."""
    if floor is not None and values[metric] < floor - margin:
        return True
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    mine = [s * v for s, v in zip(signs, values)]
    for point in others:
        other = [s * v for s, v in zip(signs, point)]
        if all(o <= x for o, x in zip(other, mine)) and other[metric] < mine[metric] - margin:
            return True
    return False


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


@dataclass
class _Flight:
    """One trial being evaluated; ``phase`` is "partial" (the early look) or "full"."""

    trial: optuna.Trial
    config: CompressionConfig
    phase: str
    seeded: bool
    examples: int = 0            # dev examples evaluated so far for this trial
    #: Trials the sampler proposed with the same parameters while this one ran: told its result.
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
        self.stats = RunStats()
        self.last_beat = 0.0
        self.progress = Progress(study, settings.n_trials, enabled=settings.progress)

    # ------------------------------------------------------------------------- resume
    def recover(self) -> None:
        """Fail trials left RUNNING by dead drivers and enqueue their parameters again."""
        self.heartbeat(force=True)
        beats = {k[len(HEARTBEAT_KEY):]: v for k, v in self.storage.get_study_system_attrs(self.study_id).items()
                 if k.startswith(HEARTBEAT_KEY)}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("driver")
            if isinstance(owner, dict) and owner.get("id") in beats:
                local_dead = owner.get("host") == self.host and not _pid_alive(int(owner.get("pid", 0)))
                silent = time.time() - float(beats[owner["id"]]) > self.s.stale_after_s
                if not (local_dead or silent):
                    continue  # another live driver's trial
            who = f"{owner.get('host')}:{owner.get('pid')}" if isinstance(owner, dict) else "an unknown process"
            self.requeue(t.number, t.params, t.user_attrs, f"driver {who} stopped while the trial ran")
            self.stats.re_queued.append(t.number)

    def heartbeat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last_beat >= HEARTBEAT_EVERY_S:
            self.storage.set_study_system_attr(self.study_id, HEARTBEAT_KEY + self.driver["id"], now)
            self.last_beat = now

    # ---------------------------------------------------------------------------- loop
    def run(self, base_ref: Any) -> RunStats:
        import ray

        from .worker import evaluate

        self.task = ray.remote(evaluate).options(num_cpus=self.s.cpus_per_trial, num_gpus=self.s.gpus_per_trial,
                                                 max_retries=1)
        self.base_ref = base_ref
        self.recover()
        self.progress.update(running=0)
        try:
            while True:
                complete = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                while (self.stats.failed < self.s.max_failures and len(self.flights) < self.s.workers
                       and complete + self.pending() < self.s.n_trials):
                    complete += self.launch()
                if not self.flights:
                    break
                ready, _ = ray.wait(list(self.flights), num_returns=1, timeout=HEARTBEAT_EVERY_S)
                for ref in ready:
                    self.land(ref, self.flights.pop(ref))
                self.heartbeat()
        except BaseException as e:
            self.abandon(f"driver stopped ({type(e).__name__})")
            raise
        finally:
            self.progress.close()
        return self.stats

    def launch(self) -> int:
        """Ask for a trial and start it; returns 1 when it finished at once (a duplicate)."""
        trial = self.study.ask()
        seeded = bool(trial.user_attrs.get("seeded"))
        try:
            config = self.space.suggest(trial).resolve(self.model)
        except SpikepruneError as e:
            trial.set_user_attr("error", str(e))
            self.study.tell(trial, state=TrialState.FAIL)
            self.stats.failed += 1
            return 0
        trial.set_user_attr("compression", config.to_dict())
        trial.set_user_attr("driver", self.driver)
        earlier = self.finished_twin(trial)
        if earlier is not None:
            self.copy_result(trial, earlier)
            return 1
        leader = next((f for f in self.flights.values() if f.trial.params == trial.params), None)
        if leader is not None:
            leader.followers.append(trial)
            return 0
        phase = "partial" if self.partial_examples is not None else "full"
        self.submit(_Flight(trial, config, phase, seeded))
        return 0

    def pending(self) -> int:
        """Trials started and not told yet: those in flight and their followers."""
        return sum(1 + len(f.followers) for f in self.flights.values())

    def copy_result(self, trial: optuna.Trial, earlier: FrozenTrial) -> None:
        """Tell ``trial`` the result of an earlier trial with the same parameters."""
        for key in RESULT_ATTRS:
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        trial.set_user_attr("duplicate_of", earlier.number)
        self.tell(trial, earlier.values, earlier.constraints)
        self.stats.duplicates += 1
        self.progress.update(running=len(self.flights), last=f"#{trial.number} = #{earlier.number}")

    def finished_twin(self, trial: optuna.Trial) -> FrozenTrial | None:
        params = trial.params
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == params and "duplicate_of" not in t.user_attrs:
                return t
        return None

    def submit(self, flight: _Flight) -> None:
        examples = self.partial_examples if flight.phase == "partial" else self.full_examples
        ref = self.task.remote(self.base_ref, flight.config.to_dict(),
                               max_examples=None if examples >= self.dev_size else examples,
                               seed=self.s.seed, energy=self.energy, threads=max(1, int(self.s.cpus_per_trial)))
        self.flights[ref] = flight
        self.progress.update(running=len(self.flights))

    def land(self, ref: Any, flight: _Flight) -> None:
        """Handle a finished task: record a failure, decide on early stopping, or tell the result."""
        import ray

        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as e:
            result = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"}
        trial = flight.trial
        if "error" in result:
            for key in ("error", "traceback", "worker"):
                if key in result:
                    trial.set_user_attr(key, result[key])
            self.study.tell(trial, state=TrialState.FAIL)
            self.stats.failed += 1
            for follower in flight.followers:
                follower.set_user_attr("error", f"same parameters as trial #{trial.number}, which failed")
                self.study.tell(follower, state=TrialState.FAIL)
            self.progress.update(running=len(self.flights), last=f"#{trial.number} failed: {result['error'][:80]}")
            return
        flight.examples += result["examples"]
        self.stats.examples += result["examples"]
        if flight.phase == "partial":
            values = self.space.objective_values(result["objectives"])
            trial.set_user_attr("partial", {"examples": result["examples"], "values": values,
                                            "metrics": result["metrics"]})
            if flight.seeded or not self.beaten(values, trial.number):
                flight.phase = "full"
                self.submit(flight)
                return
        self.finish(flight, result)

    def beaten(self, values: list[float], number: int) -> bool:
        others = [t.user_attrs["partial"]["values"] for t in self.study.get_trials(deepcopy=False)
                  if t.number != number and (t.user_attrs.get("partial") or {}).get("examples") == self.partial_examples]
        return clearly_beaten(values, others, self.space.directions, self.metric_index, self.margin,
                              self.space.constraints.get("metric_min"))

    def finish(self, flight: _Flight, result: dict[str, Any]) -> None:
        trial = flight.trial
        stopped = flight.phase == "partial"
        for key in ("metrics", "metric_ci", "report", "timing", "worker", "examples"):
            trial.set_user_attr(key, result[key])
        trial.set_user_attr("fidelity", result["examples"] / self.dev_size)
        trial.set_user_attr("early_stopped", stopped)
        trial.set_user_attr("examples_evaluated", flight.examples)
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
        self.flights.clear()

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
    """Create the study (directions, metric names, metadata, seeds) or check and load it."""
    sampler = make_sampler(settings.sampler, settings.seed, settings.population_size)
    study = optuna.create_study(storage=storage, study_name=settings.study_name, sampler=sampler,
                                directions=space.directions, load_if_exists=True)
    meta = study.user_attrs.get("spikeprune")
    wanted = {"task": task, "objectives": [{"name": o.name, "direction": o.direction} for o in space.objectives],
              "space": space.to_dict(), "prepared": str(prepared), "energy": energy, "reference": None,
              "dev_examples": dev_size, "max_examples": settings.max_examples}
    if meta is None:
        if study.get_trials(deepcopy=False):
            raise SpikepruneError(f"study {settings.study_name!r} exists but was not made by spikeprune search; "
                                  f"pick another --study name")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(space.objective_names)
        study.set_user_attr("spikeprune", wanted)
        for i, config in enumerate(space.seed_configs(model)):
            flags = {"seeded": True, **({"baseline": True} if i == 0 else {})}
            study.enqueue_trial(space.params(config, model), user_attrs=flags)
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
    location = settings.storage or default_storage(settings.run_dir, settings.study_name)
    storage = open_storage(location)
    from spikeprune.models.trial import BaseBundle  # torch and the model code: after the cheap checks

    base = BaseBundle.load(settings.prepared, settings.glue_dir)
    if settings.task and settings.task != base.task:
        raise SpikepruneError(f"--task {settings.task} but {settings.prepared} was prepared for {base.task}")
    model = base.student.config
    space.check(model)
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
