"""Orchestration and throughput: what Optuna, Ray and the storage add to each trial, and trials per
hour as the machine's CPUs are split between 1, 2 and 4 worker processes.

In one local Ray session it measures
- the pieces: loading the base bundle, putting it in the object store, a Ray task round trip
  that receives it (no-op body), and an Optuna ask + suggest + tell on a journal file (and on
  PostgreSQL with ``--storage-url``), each a median over repeats;
- fresh searches of the same ``--n-trials`` trials (random sampler, same seed, so the same
  configs) for each ``--layouts`` entry WORKERSxCPUS (default 1x1, then 2 CPUs split as 1x2, 2x1
  and 4x0.5; a worker with half a CPU runs one thread). Each search starts with that many warm
  Ray workers, as a long search has after its first trials. Per layout: trials per hour (from the
  wall time of ``run_search``), and per trial where the time goes: ``dispatch`` (submission to
  the task starting: scheduling, the base reaching the worker and being unpickled), the trial function's
  compress/recover/eval/count seconds, and the rest of the trial's Optuna duration (``driver``:
  ask, tell, storage, waiting for the driver's loop). Orchestration = dispatch + driver, as a
  share of the trial's duration. With ``--rounds R`` every layout runs R times, round r in an
  order rotated by r, and speedups are ratios within a round (medians over rounds).

    .venv/bin/python benchmarks/bench_orchestration.py --prepared runs/prepared/sst2-quick \\
        --n-trials 12 --max-examples 64
"""
from __future__ import annotations

import argparse
import sys
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from spikeprune.trial import BaseBundle  # noqa: E402
from spikeprune import SearchSettings, open_storage, run_search  # noqa: E402
from spikeprune.search import ray_session  # noqa: E402
from spikeprune.spaces import SearchSpace  # noqa: E402
from spikeprune.records import TrialRecord  # noqa: E402

NAME = "bench_orchestration"
#: The default layouts, WORKERSxCPUS_PER_TRIAL: one worker of one CPU (the baseline of earlier
#: runs), then the 2 CPUs split between 1, 2 and 4 workers.
LAYOUTS = ("1x1", "1x2", "2x1", "4x0.5")
#: Per-trial pieces, in the order a trial spends them.
PIECES = ("dispatch_s", "compress_s", "recover_s", "eval_s", "count_s", "driver_s")


def layout(text: str) -> tuple[int, float]:
    workers, sep, cpus = text.partition("x")
    try:
        out = int(workers), float(cpus)
    except ValueError:
        out = (0, 0.0)
    if not sep or out[0] < 1 or out[1] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not WORKERSxCPUS, e.g. 2x1 or 4x0.5")
    return out


def trial_pieces(trial: Any) -> dict[str, float]:
    """Where one trial's Optuna duration went (PIECES)."""
    timing = TrialRecord.of(trial).timing
    out = {k: float(timing.get(k, 0.0)) for k in PIECES[:-1]}
    out["driver_s"] = max(0.0, trial.duration.total_seconds() - float(timing["total_s"]) - out["dispatch_s"])
    return out


def timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def storage_round_trips(url: str, space: Any, model: Any, repeats: int) -> list[float]:
    """Seconds of ask + suggest the space + tell with two values, on a new study in ``url``."""
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=f"orchestration-{time.time_ns()}",
                                directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))

    def one() -> None:
        trial = study.ask()
        space.suggest(trial).resolve(model)
        study.tell(trial, [0.5, 1.0])

    seconds = timed(one, repeats)
    optuna.delete_study(study_name=study.study_name, storage=storage)
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = benchlib.search_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, required=True, help="the prepared base to search")
    p.add_argument("--space", default="joint", help="space preset or file (default joint)")
    p.add_argument("--n-trials", type=int, default=10, help="trials per search run (default 10)")
    p.add_argument("--max-examples", type=int, default=64, help="dev examples per trial (default 64)")
    p.add_argument("--layouts", type=layout, nargs="+", default=[layout(x) for x in LAYOUTS], metavar="WxC",
                   help=f"searches to run: workers x CPUs per trial (default {' '.join(LAYOUTS)})")
    p.add_argument("--rounds", type=int, default=1, help="rounds of all layouts, in rotated order (default 1)")
    p.add_argument("--repeats", type=int, default=20, help="repeats of each piece (default 20)")
    p.add_argument("--storage-url", default=None, help="also time Optuna on this database URL (e.g. PostgreSQL)")
    args = p.parse_args(argv)
    env = benchlib.search_setup(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scratch = Path(tempfile.mkdtemp(prefix="spikeprune-orchestration-"))
    figures: dict[str, Any] = {"pieces": {}, "searches": {}}
    try:
        t0 = time.perf_counter()
        cpus = max(w * c for w, c in args.layouts)
        with ray_session(SearchSettings(prepared=args.prepared, workers=1, cpus_per_trial=max(2.0, cpus))):
            import ray

            figures["pieces"]["ray_start_s"] = time.perf_counter() - t0
            load = timed(lambda: BaseBundle.load(args.prepared, args.glue_dir), 3)
            base = BaseBundle.load(args.prepared, args.glue_dir)
            put = timed(lambda: ray.put(base), 3)
            ref = ray.put(base)

            @ray.remote(num_cpus=1)
            def receive(bundle: BaseBundle) -> int:
                from spikeprune.trial import run_trial  # noqa: F401  (what a trial imports: torch, the model)
                return bundle.dev_size

            ray.get(receive.remote(ref))  # a warm worker, as in a search after its first trial
            trip = timed(lambda: ray.get(receive.remote(ref)), args.repeats)
            space, model = SearchSpace.load(args.space), base.student.config
            space.check(model)
            journal = storage_round_trips(str(scratch / "journal.log"), space, model, args.repeats)
            pieces = {"base_load_s": load, "ray_put_s": put, "ray_round_trip_s": trip, "journal_ask_tell_s": journal}
            if args.storage_url:
                pieces["database_ask_tell_s"] = storage_round_trips(args.storage_url, space, model, args.repeats)
            for key, values in pieces.items():
                figures["pieces"][key] = {"median": benchlib.median(values), "seconds": values}
            runs: dict[str, list[dict[str, Any]]] = {}
            for r in range(args.rounds):   # round r runs every layout once, in an order rotated by r
                for workers, cpus in args.layouts[r % len(args.layouts):] + args.layouts[:r % len(args.layouts)]:
                    label = f"{workers}x{cpus:g}"
                    ray.get([receive.options(num_cpus=cpus).remote(ref) for _ in range(workers)])  # warm workers
                    t0 = time.perf_counter()
                    study = run_search(SearchSettings(
                        prepared=args.prepared, space=args.space, study_name=f"orch-{label}-r{r}",
                        n_trials=args.n_trials, workers=workers, cpus_per_trial=cpus, run_dir=scratch,
                        sampler="random", seed=args.seed, glue_dir=args.glue_dir, max_examples=args.max_examples,
                        early_stopping=False, progress=not args.quiet)).study
                    wall = time.perf_counter() - t0
                    done = sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
                                   and TrialRecord.of(t).fresh), key=lambda t: t.number)
                    runs.setdefault(label, []).append({
                        "round": r, "workers": workers, "cpus_per_trial": cpus, "trials": len(done), "wall_s": wall,
                        "trials_per_hour": 3600 * len(done) / wall,
                        "kernel_s": sum(float(TrialRecord.of(t).timing["total_s"]) for t in done),
                        "durations": [t.duration.total_seconds() for t in done],
                        "pieces": [trial_pieces(t) for t in done], "configs": [t.params for t in done]})
            for label, done_runs in runs.items():
                per_trial = [p for run in done_runs for p in run["pieces"]]
                durations = [d for run in done_runs for d in run["durations"]]
                figures["searches"][label] = {
                    **{k: done_runs[0][k] for k in ("workers", "cpus_per_trial", "trials", "configs")},
                    "wall_s": benchlib.median([run["wall_s"] for run in done_runs]),
                    "trials_per_hour": benchlib.median([run["trials_per_hour"] for run in done_runs]),
                    "kernel_s": benchlib.median([run["kernel_s"] for run in done_runs]),
                    "trial_s": benchlib.median(durations),
                    "pieces": {k: benchlib.median([p[k] for p in per_trial]) for k in PIECES},
                    "orchestration_share": benchlib.median([(p["dispatch_s"] + p["driver_s"]) / d
                                                            for p, d in zip(per_trial, durations)]),
                    "rounds": [{k: run[k] for k in ("round", "wall_s", "trials_per_hour")} for run in done_runs],
                    "same_in_every_round": all(run["configs"] == done_runs[0]["configs"] for run in done_runs)}
            for base_label in ("1x1", "1x2"):   # speedups: ratios within a round, median over rounds
                if base_label in runs:
                    for label, done_runs in runs.items():
                        figures["searches"][label][f"vs_{base_label}"] = benchlib.median(
                            [run["trials_per_hour"] / other["trials_per_hour"]
                             for run, other in zip(done_runs, runs[base_label])])
            del ref, base
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    pieces = figures["pieces"]
    print(f"\nRay start {pieces['ray_start_s']:.1f} s; per search: base load {pieces['base_load_s']['median']:.2f} s, "
          f"object store put {pieces['ray_put_s']['median'] * 1e3:.0f} ms")
    rows = [["Ray task round trip (bundle by reference)", f"{pieces['ray_round_trip_s']['median'] * 1e3:.1f} ms"],
            ["Optuna ask + suggest + tell, journal file", f"{pieces['journal_ask_tell_s']['median'] * 1e3:.1f} ms"]]
    if "database_ask_tell_s" in pieces:
        rows.append(["Optuna ask + suggest + tell, database", f"{pieces['database_ask_tell_s']['median'] * 1e3:.1f} ms"])
    print(benchlib.table(["per trial", "median"], rows))
    searches = figures["searches"]
    print()
    print(benchlib.table(
        ["layout", "trials", "wall s", "trials/h", "vs 1x1", "vs 1x2", "trial s", *[k[:-2] for k in PIECES],
         "orchestration"],
        [[label, str(s["trials"]), f"{s['wall_s']:.1f}", f"{s['trials_per_hour']:.0f}",
          f"{s['vs_1x1']:.2f}x" if "vs_1x1" in s else "-", f"{s['vs_1x2']:.2f}x" if "vs_1x2" in s else "-",
          f"{s['trial_s']:.1f}",
          *[f"{s['pieces'][k]:.2f}" for k in PIECES], f"{s['orchestration_share']:.1%}"]
         for label, s in searches.items()]))
    print(f"(medians over {args.rounds} round(s): wall and trials/h over rounds, speedups of ratios within a "
          f"round, per-trial columns over every trial; orchestration = (dispatch + driver) / trial)")
    same = len({str(s["configs"]) for s in searches.values()}) == 1 and all(
        s["same_in_every_round"] for s in searches.values())
    figures["same_configs"] = same
    print(f"same configs in every layout: {same}")
    return benchlib.finish(args.out, NAME, env, args, figures)


if __name__ == "__main__":
    main()
