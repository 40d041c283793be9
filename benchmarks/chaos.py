"""Chaos: a real search under random faults, then invariants over its history.

Several ``spikeprune search`` drivers share one study (an Optuna journal, then PostgreSQL) on a
local multi-node Ray cluster (a head and worker nodes, each its own ``ray start``), on a tiny
prepared base. Meanwhile a seeded injector acts at random moments (exponential gaps, mean
``--fault-every`` seconds), picking among:

- ``worker``: SIGKILL a Ray worker process that is evaluating a trial;
- ``driver``: SIGKILL a driver, and rerun its command a moment later (as a user would);
- ``node``: SIGKILL a worker node's raylet (a machine lost), then start a new node in its place;
- ``postgres``: restart the PostgreSQL server (PostgreSQL storage only);
- ``disk``: fill the run folder's filesystem (a tmpfs of its own) and free it a while later;
- ``tear``: tear the journal's last write, as a writer killed inside ``write`` leaves it (journal only);
- ``stop``: SIGSTOP a driver for longer than the drivers' heartbeat, then SIGCONT it.

A driver that exits non-zero (killed, or stopped by a fault it reports as an error) is rerun with
the same command; its last line is kept. A poller reads the storage every second and records
every trial the moment it is COMPLETE. When the drivers are done, the checker asserts:

1. every trial ever seen COMPLETE is still COMPLETE with the same values and parameters;
2. nothing is RUNNING, and the study holds its ``--n-trials`` COMPLETE trials;
3. a config evaluated twice is a duplicate (``duplicate_of``) of the first, with its values, and
   no duplicate is on the Pareto front;
4. ``spikeprune check``, ``trials``, ``report`` and ``export --pareto`` work on the result;
5. no file of the run folder is half-written (journal intact, every JSON, YAML, CSV, HTML and
   safetensors file complete);
6. every driver's last run exited 0 and no driver printed a traceback.

The seed is printed first; the same ``--seed`` replays the same fault schedule (kinds, gaps,
targets; the moments they land in the search depend on timing). Figures go to ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))   # the cluster, driver and PostgreSQL helpers the tests use

import drivers as driver_procs  # noqa: E402
from pgserver import private_postgres  # noqa: E402
from raycluster import RayCluster, cluster_env  # noqa: E402
from smalldisk import FILL, SmallDisk  # noqa: E402

#: The tiny base's knobs (2 layers of 2 heads, FFN 64, T = 2) finely enough that random draws
#: almost never repeat a config (millions of them): a repeat in the history is a driver's doing.
SPACE = """
name: chaos
heads: {per_layer: true, min: 1, max: 2}
neurons: {per_layer: true, min: 4, max: 64, step: 1}
timesteps: {per_layer: true, min: 1, max: 2}
weight_bits: {per_layer: true, choices: [1, 1.58, 2, 4, 8, 32]}
objectives: [{name: metric, direction: maximize}, {name: sops, direction: minimize}]
sampler: random
"""
KINDS = ("worker", "driver", "node", "postgres", "disk", "tear", "stop")
#: Kinds that apply to one storage only.
ONLY = {"postgres": "postgres", "tear": "journal"}
#: Drivers write their heartbeat every 30 s: a stop must outlast it.
STOP_S = (35.0, 50.0)
DISK_FULL_S = (2.0, 40.0)
POSTGRES_DOWN_S = (1.0, 10.0)
RESTART_DELAY_S = (0.5, 5.0)
POLL_S = 1.0
MAX_RESTARTS = 200


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- drivers
@dataclass
class Slot:
    """One driver as a user runs it: the same command, rerun after each non-zero exit."""

    index: int
    args: list[str]
    log: Path
    process: subprocess.Popen | None = None
    stopped: bool = False
    restart_at: float | None = None
    runs: int = 0
    exits: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    def start(self) -> None:
        with open(self.log, "a") as f:
            f.write(f"=== run {self.runs + 1} at {time.strftime('%H:%M:%S')}\n")
        self.process = driver_procs.start(self.args, env=cluster_env(), log=self.log)
        self.runs += 1
        self.restart_at = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def last_line(self) -> str:
        lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
        return lines[-1] if lines else ""


class Drivers:
    """The driver slots and their supervision: reruns, exit codes, tracebacks."""

    def __init__(self, args: list[str], count: int, logs: Path) -> None:
        self.slots = [Slot(i, args, logs / f"driver-{i}.log") for i in range(count)]
        self.lock = threading.Lock()

    def start(self) -> None:
        for slot in self.slots:
            slot.start()

    def supervise(self) -> bool:
        """Rerun the drivers that exited non-zero (after their delay); True when all are done."""
        with self.lock:
            for slot in self.slots:
                if slot.done or slot.running:
                    continue
                if slot.restart_at is None:
                    code = slot.process.returncode
                    slot.exits.append({"code": code, "line": slot.last_line() if code and code > 0 else ""})
                    if code == 0:
                        slot.done = True
                        continue
                    if code > 0:
                        log(f"driver {slot.index} exited {code}: {slot.last_line()[:160]}")
                    slot.restart_at = time.monotonic() + 2.0
                if time.monotonic() >= slot.restart_at and slot.runs < MAX_RESTARTS:
                    slot.start()
            return all(s.done for s in self.slots)

    def pick(self, rng: random.Random) -> Slot | None:
        with self.lock:
            live = [s for s in self.slots if s.running and not s.stopped]
            return rng.choice(live) if live else None

    def kill(self, slot: Slot, delay: float) -> None:
        with self.lock:
            if slot.running:
                slot.process.send_signal(signal.SIGKILL)
                slot.process.wait()
                slot.exits.append({"code": slot.process.returncode, "line": "killed by the injector"})
                slot.restart_at = time.monotonic() + delay

    def end(self) -> None:
        """Kill the drivers still running (stopped ones included): the run is over or interrupted."""
        with self.lock:
            for slot in self.slots:
                if slot.running:
                    slot.process.send_signal(signal.SIGCONT)
                    slot.process.kill()
                    slot.process.wait()

    def tracebacks(self) -> list[str]:
        return [s.log.name for s in self.slots if "Traceback" in s.log.read_text(errors="replace")]


# --------------------------------------------------------------------------- history
class History(threading.Thread):
    """Reads the study every second and keeps every trial as it was when first seen COMPLETE."""

    def __init__(self, location: str, study: str) -> None:
        super().__init__(daemon=True)
        self.location, self.study_name = location, study
        self.complete: dict[int, dict[str, Any]] = {}
        self.changed: list[str] = []
        self.errors: Counter[str] = Counter()
        self.polls = 0
        self.stopped = threading.Event()
        self.storage = None

    def run(self) -> None:
        while not self.stopped.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        import optuna
        from optuna.trial import TrialState

        from spikeprune import open_storage

        try:
            if self.storage is None:
                if "://" not in self.location and not Path(self.location).is_file():
                    return
                self.storage = open_storage(self.location)
            study_id = self.storage.get_study_id_from_name(self.study_name)
            trials = self.storage.get_all_trials(study_id, deepcopy=False)
        except KeyError:
            return   # the study is not created yet
        except Exception as e:  # an outage the faults cause: the next poll tries again
            self.errors[f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"] += 1
            if isinstance(e, optuna.exceptions.StorageInternalError):
                self.storage = None
            return
        self.polls += 1
        for t in trials:
            seen = self.complete.get(t.number)
            if seen is None:
                if t.state == TrialState.COMPLETE:
                    self.complete[t.number] = {"values": list(t.values), "params": dict(t.params),
                                               "duplicate_of": t.user_attrs.get("duplicate_of")}
            elif t.state != TrialState.COMPLETE or list(t.values) != seen["values"] or dict(t.params) != seen["params"]:
                self.changed.append(f"trial {t.number}: {seen['values']} -> {t.state.name} {t.values}")


# --------------------------------------------------------------------------- faults
class Injector(threading.Thread):
    """Injects the faults of ``kinds`` at random moments, from one seeded generator."""

    def __init__(self, rng: random.Random, kinds: list[str], every: float, phase: "Phase") -> None:
        super().__init__(daemon=True)
        self.rng, self.kinds, self.every, self.phase = rng, kinds, every, phase
        self.done: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []
        self.stopped = threading.Event()
        self.timers: list[threading.Thread] = []

    def run(self) -> None:
        while not self.stopped.wait(self.rng.expovariate(1.0 / self.every)):
            kind = self.rng.choice(self.kinds)
            try:
                what = getattr(self, f"fault_{kind}")()
            except Exception as e:  # the harness's own trouble: recorded, the run goes on
                what, self.skipped[f"{kind} (harness error)"] = None, self.skipped[f"{kind} (harness error)"] + 1
                log(f"fault {kind} could not be injected: {type(e).__name__}: {e}")
            if what is None:
                self.skipped[kind] += 1
                continue
            self.done[kind] += 1
            self.events.append({"t": round(time.monotonic() - self.phase.started, 1), "kind": kind, "what": what})
            log(f"fault {sum(self.done.values())}: {kind}: {what}")

    def later(self, seconds: float, action: Callable[[], None]) -> None:
        """Undo a fault after ``seconds`` (or at once when the injector stops)."""
        def wait_then() -> None:
            self.stopped.wait(seconds)
            action()
        thread = threading.Thread(target=wait_then, daemon=True)
        thread.start()
        self.timers.append(thread)

    def finish(self) -> None:
        self.stopped.set()
        self.join()
        for thread in self.timers:
            thread.join()

    # each returns what it did, or None when there was nothing to act on
    def fault_worker(self) -> str | None:
        busy = sorted(pid for node in list(self.phase.cluster.nodes.values()) for pid in node.pids if _evaluating(pid))
        if not busy:
            return None
        pid = self.rng.choice(busy)
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL Ray worker {pid}"

    def fault_driver(self) -> str | None:
        slot = self.phase.drivers.pick(self.rng)
        delay = self.rng.uniform(*RESTART_DELAY_S)
        if slot is None:
            return None
        pid = slot.process.pid
        self.phase.drivers.kill(slot, delay)
        return f"SIGKILL driver {slot.index} (pid {pid}), rerun in {delay:.1f} s"

    def fault_node(self) -> str | None:
        workers = sorted(n for n in self.phase.cluster.nodes if n != "head")
        if not workers:
            return None
        name = self.rng.choice(workers)
        node = self.phase.cluster.nodes.pop(name)
        raylet = node.kill_raylet()
        node.stop()
        self.phase.replace_node()
        return f"SIGKILL raylet {raylet} of node {name}; a new node joins"

    def fault_postgres(self) -> str | None:
        down = self.rng.uniform(*POSTGRES_DOWN_S)
        self.phase.postgres.stop()
        self.stopped.wait(down)
        self.phase.postgres.start()
        return f"PostgreSQL stopped for {down:.1f} s and started again"

    def fault_disk(self) -> str | None:
        hold = self.rng.uniform(*DISK_FULL_S)
        if self.phase.disk.full:
            return None
        taken = self.phase.disk.fill()
        self.later(hold, self.phase.disk.free)
        return f"filled the run folder's disk ({taken / 2**20:.1f} MB) for {hold:.1f} s"

    def fault_tear(self) -> str | None:
        from spikeprune.search import FlockLock

        journal = Path(self.phase.location)
        fraction = self.rng.random()
        if self.phase.disk.full or not journal.is_file():
            return None
        lock = FlockLock(journal)
        if not lock.acquire(timeout=10.0):
            return None
        try:
            data = journal.read_bytes()
            if not data.endswith(b"\n"):
                return None
            last = data[data.rstrip(b"\n").rfind(b"\n") + 1:].rstrip(b"\n")
            cut = 1 + int(fraction * (len(last) - 2))   # never the closing brace: not a whole record
            with open(journal, "ab") as f:
                f.write(last[:cut])
        finally:
            lock.release()
        return f"tore the journal's last write ({cut} of {len(last)} bytes of a record)"

    def fault_stop(self) -> str | None:
        slot = self.phase.drivers.pick(self.rng)
        seconds = self.rng.uniform(*STOP_S)
        if slot is None:
            return None
        slot.stopped = True
        slot.process.send_signal(signal.SIGSTOP)

        def resume() -> None:
            with self.phase.drivers.lock:
                if slot.running:
                    slot.process.send_signal(signal.SIGCONT)
                slot.stopped = False
        self.later(seconds, resume)
        return f"SIGSTOP driver {slot.index} (pid {slot.process.pid}) for {seconds:.1f} s"


def _evaluating(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::evaluate")
    except OSError:
        return False


# --------------------------------------------------------------------------- one storage
@dataclass
class Phase:
    """A search on one storage under faults."""

    storage: str                 # "journal" or "postgres"
    location: str
    study: str
    cluster: RayCluster
    disk: SmallDisk
    postgres: Any
    node_names: Iterator[int]    # numbers for new worker nodes, unique over the cluster's life
    drivers: Drivers = None      # type: ignore[assignment]
    started: float = 0.0

    def replace_node(self) -> None:
        """Start a worker node in place of a lost one, in the background (joining takes seconds)."""
        name = f"w{next(self.node_names)}"
        threading.Thread(target=self.cluster.start, args=(name,), kwargs={"cpus": 1}, daemon=True).start()


def run_phase(opts: argparse.Namespace, storage: str, rng: random.Random, cluster: RayCluster, disk: SmallDisk,
              postgres: Any, base: Path, logs: Path, node_names: Iterator[int]) -> dict[str, Any]:
    study = f"chaos-{storage}-{opts.seed}"
    location = postgres.url if storage == "postgres" else str(disk.path / study / "journal.log")
    space = disk.path / f"{study}.yaml"
    space.write_text(SPACE)
    args = ["--prepared", str(base), "--space", str(space), "--study", study, "--n-trials", str(opts.n_trials),
            "--workers", str(opts.workers), "--run-dir", str(disk.path), "--max-examples", str(opts.max_examples),
            "--ray-address", cluster.address, "--quiet", "--no-early-stopping", "--max-failures", "100000",
            "--storage-patience", str(opts.storage_patience), "--seed", str(opts.seed)]
    if storage == "postgres":
        args += ["--storage", postgres.url]
    phase = Phase(storage, location, study, cluster, disk, postgres, node_names)
    phase.drivers = Drivers(args, opts.drivers, logs)
    kinds = [k for k in opts.kinds if ONLY.get(k, storage) == storage]
    history = History(location, study)
    injector = Injector(rng, kinds, opts.fault_every, phase)
    log(f"{storage}: study {study}, {opts.drivers} drivers x {opts.workers} workers, {opts.n_trials} trials, "
        f"faults {', '.join(kinds)} every {opts.fault_every:g} s on average")
    phase.started = time.monotonic()
    deadline = phase.started + opts.deadline
    try:
        phase.drivers.start()
        history.start()
        injector.start()
        while not phase.drivers.supervise():
            if time.monotonic() > deadline:
                log(f"{storage}: deadline of {opts.deadline:g} s passed; stopping the drivers")
                break
            if injector.is_alive() and len(history.complete) >= opts.n_trials:
                injector.stopped.set()   # the study is complete: let the drivers finish in peace
            time.sleep(0.5)
        injector.finish()
        while not phase.drivers.supervise() and time.monotonic() < deadline + 300:
            time.sleep(0.5)
    finally:
        injector.stopped.set()
        phase.drivers.end()
        history.stopped.set()
    history.join()
    history.poll()
    seconds = time.monotonic() - phase.started
    checks = check(phase, history, opts, base)
    return {"storage": storage, "study": study, "seconds": round(seconds, 1), "faults": dict(injector.done),
            "faults_total": sum(injector.done.values()), "not_applicable": dict(injector.skipped),
            "events": injector.events, "driver_runs": sum(s.runs for s in phase.drivers.slots),
            "driver_exits": Counter(str(e["code"]) for s in phase.drivers.slots for e in s.exits),
            "driver_errors": sorted({e["line"] for s in phase.drivers.slots for e in s.exits if e["line"]}),
            "history_polls": history.polls, "poll_errors": dict(history.errors), **checks}


# --------------------------------------------------------------------------- invariants
def check(phase: Phase, history: History, opts: argparse.Namespace, base: Path) -> dict[str, Any]:
    """The invariants over the history and the final study (the module doc lists them)."""
    import optuna
    from optuna.trial import TrialState

    from spikeprune import analyse_study, open_storage

    study = optuna.load_study(study_name=phase.study, storage=open_storage(phase.location))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    lost = [n for n in history.complete if n not in trials or trials[n].state != TrialState.COMPLETE]
    altered = [n for n, seen in history.complete.items() if n in trials and trials[n].state == TrialState.COMPLETE
               and (list(trials[n].values) != seen["values"] or dict(trials[n].params) != seen["params"])]
    running = [t.number for t in trials.values() if t.state == TrialState.RUNNING]
    fresh = [t for t in complete if "duplicate_of" not in t.user_attrs]
    duplicates = [t for t in complete if "duplicate_of" in t.user_attrs]
    configs = Counter(tuple(sorted(t.params.items())) for t in fresh)
    twice = [dict(c) for c, n in configs.items() if n > 1]
    bad_duplicates = []
    for t in duplicates:
        first = trials.get(t.user_attrs["duplicate_of"])
        if (first is None or first.state != TrialState.COMPLETE or "duplicate_of" in first.user_attrs
                or first.params != t.params or first.values != t.values):
            bad_duplicates.append(t.number)
    front = analyse_study(study).split.front
    front_repeats = [t.number for t in front if "duplicate_of" in t.user_attrs]
    front_configs = Counter(tuple(sorted(t.params.items())) for t in front)
    front_repeats += [n for c, n in front_configs.items() if n > 1]
    commands = run_commands(phase, base)
    files = half_written(phase.disk.path)
    invariants = {
        "no COMPLETE trial lost": not lost,
        "no COMPLETE trial altered": not altered and not history.changed,
        "nothing left RUNNING": not running,
        f"the study holds its {opts.n_trials} COMPLETE trials": len(complete) == opts.n_trials,
        "no config evaluated twice": not twice,
        "duplicates point at the first evaluation, with its values": not bad_duplicates,
        "no duplicate on the Pareto front": not front_repeats,
        "check, trials, report and export --pareto work": all(c["code"] == 0 for c in commands.values()),
        "no file of the run folder half-written": not files["bad"],
        "every driver's last run exited 0": all(s.exits and s.exits[-1]["code"] == 0 for s in phase.drivers.slots),
        "no driver printed a traceback": not phase.drivers.tracebacks(),
    }
    states = Counter(t.state.name for t in trials.values())
    return {"trials": dict(states), "complete": len(complete), "fresh": len(fresh), "duplicates": len(duplicates),
            "duplicate_share": round(len(duplicates) / max(1, len(complete)), 4),
            "seen_complete": len(history.complete), "lost": lost, "altered": altered, "changes": history.changed,
            "running": running, "evaluated_twice": twice, "bad_duplicates": bad_duplicates,
            "front": len(front), "front_repeats": front_repeats, "commands": commands, "files": files,
            "failed_reasons": dict(Counter(_reason(t.user_attrs.get("error", "")) for t in trials.values()
                                           if t.state == TrialState.FAIL)),
            "invariants": invariants, "ok": all(invariants.values())}


def _reason(error: str) -> str:
    """A failed trial's error without its particulars (host:pid, numbers), to count them by kind."""
    return re.sub(r"\S+:\d+|#?\d+", "N", error.split(";")[0])[:80] if error else "(no error recorded)"


def run_commands(phase: Phase, base: Path) -> dict[str, dict[str, Any]]:
    """``check``, ``trials``, ``report`` and ``export --pareto`` on the result, into the run folder."""
    where = ["--storage", phase.location]
    folder = phase.disk.path / phase.study
    commands = {
        "check": ["check", phase.study, *where],
        "trials": ["trials", phase.study, *where, "--out", str(folder / "trials.csv")],
        "report": ["report", phase.study, *where, "--out", str(folder / "report.html")],
        "export": ["export", phase.study, *where, "--pareto", "--out", str(folder / "export"), "--prepared", str(base)],
    }
    out = {}
    for name, args in commands.items():
        done = subprocess.run([sys.executable, "-m", "spikeprune", *args], cwd=REPO, env=cluster_env(),
                              capture_output=True, text=True)
        text = (done.stdout + done.stderr).strip().splitlines()
        out[name] = {"code": done.returncode, "last": text[-1][:200] if text else ""}
        log(f"{phase.storage}: spikeprune {name}: exit {done.returncode}: {out[name]['last'][:120]}")
    return out


def half_written(root: Path) -> dict[str, Any]:
    """Every file of the run folder, read whole by its kind; the ones that are not complete."""
    import yaml
    from safetensors import safe_open

    from spikeprune.search import check_storage

    bad, kinds, backups = [], Counter(), []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.name
        kinds[path.suffix or name] += 1
        try:
            if name.endswith(".partial") or (".torn-" in name or ".corrupt-" in name) and not path.stat().st_size:
                raise ValueError("a recovery backup that was not written whole")
            if ".torn-" in name or ".corrupt-" in name:
                backups.append(str(path.relative_to(root)))   # what recovery cut, kept on purpose
            elif name == FILL:
                raise ValueError("the disk filler is still there")
            elif name == "journal.log":
                result = check_storage(str(path), None)
                if not result.ok:
                    raise ValueError("; ".join(result.lines))
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix in (".yaml", ".yml"):
                yaml.safe_load(path.read_text())
            elif path.suffix == ".csv":
                rows = list(csv.reader(path.open(newline="")))
                if not rows or any(len(r) != len(rows[0]) for r in rows):
                    raise ValueError("rows of unequal length")
            elif path.suffix == ".html":
                if not path.read_text().rstrip().endswith("</html>"):
                    raise ValueError("no closing </html>")
            elif path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as f:
                    for key in f.keys():
                        f.get_tensor(key)
        except Exception as e:
            bad.append(f"{path.relative_to(root)}: {type(e).__name__}: {str(e)[:200]}")
    return {"bad": bad, "kinds": dict(kinds), "backups": backups}


# --------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/chaos.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="fault schedule seed (default: a random one, printed)")
    p.add_argument("--storages", nargs="+", choices=("journal", "postgres"), default=["journal", "postgres"])
    p.add_argument("--n-trials", type=int, default=200, help="COMPLETE trials per study (default 200)")
    p.add_argument("--drivers", type=int, default=3, help="drivers sharing each study (default 3)")
    p.add_argument("--workers", type=int, default=1, help="trials in flight per driver (default 1)")
    p.add_argument("--nodes", type=int, default=2, help="Ray worker nodes besides the head, 1 CPU each (default 2)")
    p.add_argument("--fault-every", type=float, default=12.0, help="mean seconds between faults (default 12)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="fault kinds to inject")
    p.add_argument("--storage-patience", type=float, default=20.0,
                   help="the drivers' --storage-patience: a longer outage stops them (default 20 s)")
    p.add_argument("--max-examples", type=int, default=16, help="dev examples per trial (default 16)")
    p.add_argument("--disk-mb", type=int, default=64, help="size of the run folder's tmpfs (default 64 MB)")
    p.add_argument("--deadline", type=float, default=3600.0, help="seconds per storage before giving up")
    p.add_argument("--prepared", type=Path, default=None, help="a prepared base (default: the tiny preset, made here)")
    p.add_argument("--glue-dir", type=Path, default=os.environ.get("SPIKEPRUNE_GLUE_DIR"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/chaos"), help="logs, base and results (default runs/chaos)")
    p.add_argument("--out", type=Path, default=None, help="JSON of the figures (default WORK_DIR/chaos-SEED.json)")
    opts = p.parse_args(argv)
    if opts.seed is None:
        opts.seed = secrets.randbelow(2**31)
    return opts


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)   # clean up drivers, nodes and the mount
    log(f"seed {opts.seed} (replay: benchmarks/chaos.py --seed {opts.seed} ...)")
    from spikeprune import prepare

    work = (opts.work_dir / f"seed-{opts.seed}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = opts.prepared or prepare("sst2", opts.glue_dir, work / "base", preset="tiny")
    rng = random.Random(opts.seed)
    node_names = itertools.count(opts.nodes)
    out = opts.out or work.parent / f"chaos-{opts.seed}.json"
    disk = SmallDisk(work / "run", opts.disk_mb)
    cluster = RayCluster(work)
    results: dict[str, Any] = {"seed": opts.seed, "options": {k: str(v) if isinstance(v, Path) else v
                                                            for k, v in vars(opts).items()}, "phases": []}
    try:
        disk.mount()
    except RuntimeError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        cluster.start("head", cpus=1, head=True)
        for i in range(opts.nodes):
            cluster.start(f"w{i}", cpus=1)
        for storage in opts.storages:
            logs = work / f"logs-{storage}"
            logs.mkdir(exist_ok=True)
            if storage == "postgres":
                with private_postgres("chaos") as pg:
                    results["phases"].append(run_phase(opts, storage, rng, cluster, disk, pg, Path(base), logs, node_names))
            else:
                results["phases"].append(run_phase(opts, storage, rng, cluster, disk, None, Path(base), logs, node_names))
            out.write_text(json.dumps(results, indent=2, default=str))   # each storage's figures as soon as they exist
    finally:
        cluster.stop()
        subprocess.run(["cp", "-a", str(disk.path), str(work / "run-copy")], capture_output=True)
        disk.unmount()
    results["ok"] = all(p["ok"] for p in results["phases"])
    out.write_text(json.dumps(results, indent=2, default=str))
    print_summary(results)
    print(f"figures: {out}")
    return results


def print_summary(results: dict[str, Any]) -> None:
    print(f"\nseed {results['seed']}")
    for p in results["phases"]:
        print(f"\n{p['storage']}: {p['complete']} COMPLETE trials ({p['fresh']} evaluated, {p['duplicates']} duplicates "
              f"= {p['duplicate_share']:.1%}), states {p['trials']}, {p['seconds']:.0f} s, "
              f"{p['driver_runs']} driver runs")
        print(f"  faults injected: {p['faults_total']} ({', '.join(f'{k} {n}' for k, n in sorted(p['faults'].items()))})")
        print(f"  lost {len(p['lost'])}, altered {len(p['altered']) + len(p['changes'])}, left RUNNING {len(p['running'])}")
        for name, ok in p["invariants"].items():
            print(f"  [{'ok' if ok else 'FAILED'}] {name}")
        for line in p["driver_errors"]:
            print(f"  driver said: {line[:200]}")
        for line in p["files"]["bad"]:
            print(f"  half-written: {line}")
    verdict = "all invariants hold" if results["ok"] else f"INVARIANTS FAILED: replay with --seed {results['seed']}"
    print(f"\n{verdict}")


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
