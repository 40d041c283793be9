"""Orchestration: what Optuna, Ray and the storage add to each trial, and 2 workers against 1.

In one local Ray session it measures
- the pieces: loading the base bundle, putting it in the object store, a Ray task round trip
  that receives it (no-op body), and an Optuna ask + suggest + tell on a journal file (and on
  PostgreSQL with ``--storage-url``), each a median over repeats;
- fresh searches of the same ``--n-trials`` trials (random sampler, same seed, so the same
  configs) with 1 worker of 1 CPU, 1 worker of 2 CPUs and 2 workers of 1 CPU: the wall time of
  ``run_search``, the seconds the trials spent in the kernel, and per trial the overhead
  (wall - kernel seconds / workers) / trials, which includes the per-search setup.

    .venv/bin/python benchmarks/bench_orchestration.py --prepared runs/study/prepared/sst2-quick \\
        --n-trials 10 --max-examples 64
"""
from __future__ import annotations

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

from spikeprune._trial.base import BaseBundle  # noqa: E402
from spikeprune import SearchSettings, open_storage, run_search  # noqa: E402
from spikeprune._search.cluster import ray_session  # noqa: E402
from spikeprune._spaces.schema import SearchSpace  # noqa: E402
from spikeprune.records import TrialRecord  # noqa: E402

NAME = "bench_orchestration"
#: (label, workers, CPUs per trial) of the search runs, in the order they run.
LAYOUTS: tuple[tuple[str, int, int], ...] = (("1 worker x 1 CPU", 1, 1), ("1 worker x 2 CPUs", 1, 2),
                                             ("2 workers x 1 CPU", 2, 1))


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
    p.add_argument("--repeats", type=int, default=20, help="repeats of each piece (default 20)")
    p.add_argument("--storage-url", default=None, help="also time Optuna on this database URL (e.g. PostgreSQL)")
    args = p.parse_args(argv)
    env = benchlib.search_setup(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scratch = Path(tempfile.mkdtemp(prefix="spikeprune-orchestration-"))
    figures: dict[str, Any] = {"pieces": {}, "searches": {}}
    try:
        t0 = time.perf_counter()
        with ray_session(SearchSettings(prepared=args.prepared, workers=2)):
            import ray

            figures["pieces"]["ray_start_s"] = time.perf_counter() - t0
            load = timed(lambda: BaseBundle.load(args.prepared, args.glue_dir), 3)
            base = BaseBundle.load(args.prepared, args.glue_dir)
            put = timed(lambda: ray.put(base), 3)
            ref = ray.put(base)

            @ray.remote(num_cpus=1)
            def receive(bundle: BaseBundle) -> int:
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
            del ref, base
            for label, workers, cpus in LAYOUTS:
                t0 = time.perf_counter()
                study = run_search(SearchSettings(
                    prepared=args.prepared, space=args.space, study_name=f"orch-w{workers}-c{cpus}",
                    n_trials=args.n_trials, workers=workers, cpus_per_trial=cpus, run_dir=scratch, sampler="random",
                    seed=args.seed, glue_dir=args.glue_dir, max_examples=args.max_examples, early_stopping=False,
                    progress=not args.quiet))
                wall = time.perf_counter() - t0
                done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
                kernel = sum(float(TrialRecord.of(t).timing["total_s"]) for t in done)
                figures["searches"][label] = {
                    "workers": workers, "cpus_per_trial": cpus, "trials": len(done), "wall_s": wall, "kernel_s": kernel,
                    "overhead_per_trial_s": (wall - kernel / workers) / len(done),
                    "configs": [t.params for t in sorted(done, key=lambda t: t.number)]}
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
    one = searches[LAYOUTS[0][0]]["wall_s"]
    header = ["layout", "trials", "wall s", "kernel s", "overhead/trial s", "mean trial s", "speedup vs 1x1"]
    print()
    print(benchlib.table(header, [[label, str(s["trials"]), f"{s['wall_s']:.1f}", f"{s['kernel_s']:.1f}",
                                   f"{s['overhead_per_trial_s']:.2f}", f"{s['kernel_s'] / s['trials']:.1f}",
                                   f"{one / s['wall_s']:.2f}x"] for label, s in searches.items()]))
    same = len({str(s["configs"]) for s in searches.values()}) == 1
    figures["same_configs"] = same
    print(f"same configs in every layout: {same}")
    return benchlib.finish(args.out, NAME, env, args, figures)


if __name__ == "__main__":
    main()
