"""The search driver: one process owns the study, Ray runs the evaluations.

The driver asks Optuna for a trial, turns its parameters into a CompressionConfig and submits the
evaluation as a Ray task (_worker.py); it keeps ``workers`` tasks in flight with ``ray.wait`` and is
the only process that writes the study. The base (student, importance scores, encoded dev set)
goes into the object store once and every task gets it by reference. The same code runs on a
local ``ray.init`` or on a cluster (``ray_address``, _cluster.py).

Counting: ``n_trials`` is the number of COMPLETE trials the study should hold, whoever ran them,
so re-running the same command after a crash finishes the job. Early-stopped trials are COMPLETE
(told their partial values); failed ones do not count and make room for another.

Early stopping (Optuna's pruners do not support several objectives): each task first evaluates
the space's ``early_stopping.fraction`` of the dev set (the look) and stops there when another
trial's look on the same examples clearly beats it, when the upper bound of its metric's
bootstrap interval is below the metric floor (``metric_floor``: the constraint, or the
hypervolume reference), or when a fully evaluated trial on the front costs no more and scores
above that upper bound; later looks (``early_stopping.later``) check the floor and the front
again (``trial._run.EarlyStop``); otherwise it goes on with the rest of the dev set. The
baseline always runs in full; the uniform seeds stop like any trial (the deepest of them usually
collapses, and its first look says so).

Resume (_resume.py): trials left RUNNING by a driver that is gone are failed and their parameters
enqueued again; finished trials are never re-run. A config equal to one already finished, or being
evaluated, is not evaluated again either: the trial is told that trial's values (``duplicate_of``).

Faults: an error of the trial function, a non-finite measurement or a trial past ``trial_timeout`` (its task is
killed) fails the trial with the reason in its ``error`` and the search goes on, up to
``max_failures`` per run; a worker that dies mid-trial makes Ray run the task once more
(``TASK_RETRIES``); storage outages are retried for ``storage_patience`` seconds
(``storage.RetryingStorage``) while finished results wait in memory. Several drivers may share one
study: seeds are queued once, queued trials are taken atomically, a config another driver is
evaluating is followed rather than re-run, and ``n_trials`` counts every driver's trials.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from spikeprune.models._config import CompressionConfig, SpikingBertConfig
from spikeprune.spaces._schema import SearchSpace
from spikeprune.trial._run import EarlyStop
from spikeprune.errors import SpikepruneError
from spikeprune.objectives import METRIC
from spikeprune.pareto import reference_of, split_trials, study_objectives
from spikeprune.records import FORMAT, StudyRecord, TrialRecord

from spikeprune.search._progress import Progress
from spikeprune.search._resume import HEARTBEAT_EVERY_S, Resume
from spikeprune.search._settings import SearchSettings
from spikeprune.search._storage import StorageOutage

#: Times Ray re-runs a task whose worker process died before the trial fails (see the module doc).
TASK_RETRIES = 1
#: How often a driver looks at a trial another driver evaluates for it.
POLL_S = 1.0
LOG = logging.getLogger(__name__)


def task_error(error: Exception) -> str:
    """One line for a Ray failure of the task itself (the trial function's own errors come back as data)."""
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
    baseline: bool
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
                 storage: optuna.storages.BaseStorage, model: SpikingBertConfig, dev_size: int, energy: str,
                 resume: Resume) -> None:
        self.s, self.space, self.study, self.storage = settings, space, study, storage
        self.model, self.dev_size, self.energy = model, dev_size, energy
        self.full_examples = min(settings.max_examples or dev_size, dev_size)
        es = space.early_stopping if settings.early_stopping and METRIC in space.objective_names else None
        self.margin = es.margin if es else 0.0
        self.partial_examples = max(1, round(es.fraction * self.full_examples)) if es else None
        if self.partial_examples is not None and self.partial_examples >= self.full_examples:
            self.partial_examples = None
        self.later_examples = tuple(round(f * self.full_examples) for f in es.later) if es else ()
        self.metric_index = space.objective_names.index(METRIC) if METRIC in space.objective_names else None
        #: The objectives as the progress line names them (the task's metric by its own name).
        self.shown = [o.shown for o in StudyRecord.read(study).objective_list]
        self.resume = resume
        self.study_id = self.resume.study_id
        self.flights: dict[Any, _Flight] = {}
        #: Our trials waiting for a trial another driver evaluates, by that trial's number.
        self.foreign: dict[int, list[optuna.Trial]] = {}
        self.stats = RunStats()
        self.progress = Progress(study, settings.n_trials, enabled=settings.progress)

    # ---------------------------------------------------------------------------- loop
    def run(self, base_ref: Any) -> RunStats:
        import ray

        from spikeprune.search._worker import evaluate
        from spikeprune.threads import trial_wait_policy

        env = trial_wait_policy(self.s.cpus_per_trial)
        self.task = ray.remote(evaluate).options(num_cpus=self.s.cpus_per_trial, num_gpus=self.s.gpus_per_trial,
                                                 max_retries=TASK_RETRIES,
                                                 **({"runtime_env": {"env_vars": env}} if env else {}))
        self.base_ref = base_ref
        self.stats.re_queued.extend(self.resume.recover())
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
                self.resume.heartbeat()
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
        TrialRecord.set(trial, driver=self.resume.identity)
        if self.surplus(trial):
            return
        baseline = TrialRecord.of(trial).baseline
        try:
            config = self.space.suggest(trial).resolve(self.model)
        except StorageOutage:   # not the config's fault, and there is nowhere to record it
            raise
        except SpikepruneError as e:
            TrialRecord.set(trial, error=str(e))
            self.study.tell(trial, state=TrialState.FAIL)
            self.stats.failed += 1
            return
        TrialRecord.set(trial, compression=config.to_dict())
        leader = self.twin(trial.number, trial.params)
        if leader is not None:
            self.follow(trial, leader)
            return
        self.submit(_Flight(trial, config, baseline))

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
        TrialRecord.set(trial, skipped=f"not needed: {ahead} trials were finished or running when it started")
        self.study.tell(trial, state=TrialState.PRUNED)
        return True

    def twin(self, number: int, params: dict[str, Any]) -> FrozenTrial | None:
        """The trial whose result stands for trial ``number``: the first complete evaluation of the
        same parameters, else an earlier trial (lower number) still running with them."""
        running = None
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.number == number or t.params != params:
                continue
            if t.state == TrialState.COMPLETE and TrialRecord.of(t).fresh:
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
                owner = TrialRecord.of(leader).driver or {}
                gone = not self.resume.alive(owner.get("id"), self.resume.beats())
                reason = f"driver {self.resume.who(owner)} stopped while the trial ran"
                if gone and self.resume.requeue(number, leader.params, leader.user_attrs, reason):
                    self.stats.re_queued.append(number)
                continue
            del self.foreign[number]
            for t in group:
                if leader.state == TrialState.COMPLETE:
                    self.copy_result(t, leader)
                else:
                    TrialRecord.set(t, error=f"same parameters as trial #{number}, which failed")
                    self.study.tell(t, state=TrialState.FAIL)

    def copy_result(self, trial: optuna.Trial, earlier: FrozenTrial) -> None:
        """Tell ``trial`` the result of an earlier trial with the same parameters."""
        TrialRecord.set(trial, **{k: v for k, v in earlier.user_attrs.items() if k in TrialRecord.RESULT})
        record = TrialRecord.of(earlier)
        original = earlier.number if record.fresh else record.duplicate_of
        TrialRecord.set(trial, duplicate_of=original, format=FORMAT)
        self.tell(trial, earlier.values, earlier.constraints)
        self.stats.duplicates += 1
        self.progress.update(running=len(self.flights), last=f"#{trial.number} = #{original}")

    def early_stop(self, flight: _Flight) -> EarlyStop | None:
        """The look this trial's task takes, with the looks of the study's other trials so far (the
        baseline compares with nothing: it always runs in full, as the reference the others are
        judged against)."""
        if self.partial_examples is None:
            return None
        others = () if flight.baseline else tuple(
            tuple(record.partial["values"]) for t in self.study.get_trials(deepcopy=False)
            if t.number != flight.trial.number
            and ((record := TrialRecord.of(t)).partial or {}).get("examples") == self.partial_examples)
        return EarlyStop(examples=self.partial_examples, objectives=tuple(self.space.objective_names),
                         directions=tuple(self.space.directions), metric=self.metric_index, margin=self.margin,
                         floor=None if flight.baseline else self.metric_floor(), others=others,
                         later=self.later_examples, front=() if flight.baseline else self.front())

    def front(self) -> tuple[tuple[float, ...], ...]:
        """The values of the fully evaluated, feasible trials that no other one dominates: what a
        trial's looks race against."""
        split = split_trials(self.study.get_trials(deepcopy=False), study_objectives(self.study), noise=None)
        return tuple(tuple(t.values) for t in split.front)

    def metric_floor(self) -> float | None:
        """The metric a trial must reach to matter: the higher of the space's ``metric_min`` and
        the hypervolume reference's metric (a trial below the reference adds no volume, and the
        user set or accepted that reference as the worst model worth counting)."""
        floors = [self.space.constraints.get("metric_min")]
        reference = reference_of(self.study, self.study.get_trials(deepcopy=False))
        if reference is not None:
            floors += [w for o, w in zip(reference.objectives, reference.worst) if o.name == METRIC]
        floors = [f for f in floors if f is not None]
        return max(floors) if floors else None

    def submit(self, flight: _Flight) -> None:
        ref = self.task.remote(self.base_ref, flight.config.to_dict(), trial_function=self.s.trial_function,
                               max_examples=None if self.full_examples >= self.dev_size else self.full_examples,
                               seed=self.s.seed, energy=self.energy, threads=max(1, int(self.s.cpus_per_trial)),
                               early_stop=self.early_stop(flight), submitted_at=time.time())
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
                                   f"(the compressed model is degenerate or the trial function is wrong)",
                          "worker": result.get("worker")}
        if "error" in result:
            self.fail(flight, result)
            return
        self.stats.examples += result["examples"]
        look = result.get("partial")
        if look:
            TrialRecord.set(flight.trial, partial={"examples": look["examples"], "metrics": look["metrics"],
                                                   "values": self.space.objective_values(look["objectives"])})
        self.finish(flight, result)

    def fail(self, flight: _Flight, result: dict[str, Any]) -> None:
        """Record a failed evaluation on the trial (FAIL with its error) and on its followers."""
        trial = flight.trial
        TrialRecord.set(trial, **{k: result[k] for k in ("error", "traceback", "worker", "node", "device")
                                  if result.get(k) is not None})
        self.study.tell(trial, state=TrialState.FAIL)
        self.stats.failed += 1
        for follower in flight.followers:
            TrialRecord.set(follower, error=f"same parameters as trial #{trial.number}, which failed")
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
        TrialRecord.set(trial, **{k: result[k] for k in ("metrics", "metric_ci", "report", "ann", "timing", "worker",
                                                         "node", "device", "examples")},
                        fidelity=result["examples"] / self.dev_size, early_stopped=stopped, format=FORMAT)
        values = self.space.objective_values(result["objectives"])
        # The reference is written before the tell: a driver killed between the two then leaves a
        # RUNNING baseline that is re-queued and re-measured, never a finished one without its reference.
        if TrialRecord.of(trial).baseline and not stopped:
            record = StudyRecord.read(self.study)
            record.reference = dict(zip(self.space.objective_names, values))
            record.write(self.study)
        self.tell(trial, values, self.space.constraint_values(result["objectives"]))
        self.stats.early_stopped += stopped
        self.stats.examples_without_stopping += self.full_examples
        shown = ", ".join(f"{n} {v:.4g}" for n, v in zip(self.shown, values))
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
        """On the way out (Ctrl-C, an error): fail the trials in flight and queue them again. Not
        when the storage is out of reach for good: the next run's ``recover`` does it then."""
        import ray

        reachable = not getattr(self.storage, "gave_up", False)
        for ref, flight in list(self.flights.items()):
            try:
                ray.cancel(ref, force=True)
                if reachable:
                    self.resume.requeue(flight.trial.number, flight.trial.params, flight.trial.user_attrs, reason)
                    for follower in flight.followers:  # the leader's re-queued parameters cover them
                        TrialRecord.set(follower, error=f"{reason}; same parameters as trial #{flight.trial.number}")
                        self.study.tell(follower, state=TrialState.FAIL)
            except Exception as e:  # storage gone too: the next run's recover() cleans up
                LOG.warning("could not re-queue trial %d: %s", flight.trial.number, e)
        for number, group in self.foreign.items() if reachable else ():
            for follower in group:
                try:
                    TrialRecord.set(follower, error=f"{reason}; same parameters as trial #{number}")
                    self.study.tell(follower, state=TrialState.FAIL)
                except Exception as e:
                    LOG.warning("could not fail trial %d: %s", follower.number, e)
        self.flights.clear()
        self.foreign.clear()
