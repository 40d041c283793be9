"""The GLUE table: per task, the prepared base, a joint search and its cheapest config within a drop.

For each task of ``--tasks`` it prepares the base (``spikeprune prepare``'s cache: a finished base
is reused), runs (or resumes) a joint search of ``--n-trials`` trials with the space's sampler and
early stopping as shipped (the ``joint`` preset: the guided sampler), and prints one row per task:

- the teacher's dev metric as prepare measured it (the whole dev set with the quick preset), and
  the dense spiking student's and the majority class's (the constant predictor: the mean score for
  STS-B) on the dev examples the search evaluates;
- the config with the fewest synaptic operations whose metric is at most ``--max-drop`` below the
  dense student's (``spikeprune.cheapest_within``): its metric, and its SOPs, Σ T and energy as
  ratios to the dense student's, with whether it needs at least 2× fewer SOPs and by how much it
  falls short when not;
- the energy of the dense student and of that config against the fp32 ANN teacher's on the same
  tokens (the trials' stored ANN references).

Each row is written to ``<out>/rows/<task>.json`` (``--out`` without its suffix) as soon as its task
finishes, and a re-run skips tasks whose row was made with the same settings (prepare and the
search resume on their own otherwise). ``--out`` holds every row, this run's wall time and the
machine; the same name with ``.html`` puts the tasks' fronts side by side, each relative to its
dense student.

    .venv/bin/python benchmarks/glue_table.py --tasks cola sst2 mrpc stsb rte wnli \\
        --glue-dir ../shared/glue --run-dir runs/glue-table
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

from spikeprune import (BaseBundle, PreparedRecord, SearchSettings, SpikepruneError, TrialRecord,  # noqa: E402
                        cheapest_within, compare_fronts, load_study, open_storage, prepare, run_search)
from spikeprune.data import get_task  # noqa: E402
from spikeprune.search import default_storage  # noqa: E402

NAME = "glue_table"
TASKS = ("cola", "sst2", "mrpc", "stsb", "rte", "wnli")
#: The issue's bar for a row: the cheapest config within the drop needs at most this share of the SOPs.
SOPS_TARGET = 0.5


def study_name(task: str, preset: str) -> str:
    return f"glue-{task}-{preset}"


def settings_of(args: Any) -> dict[str, Any]:
    """What makes a row: a stored row made with other settings is measured again."""
    return {"preset": args.preset, "space": str(args.space), "n_trials": args.n_trials,
            "max_examples": args.max_examples, "max_drop": args.max_drop, "seed": args.seed}


def ann_energy(study: Any, numbers: dict[str, int]) -> dict[str, float]:
    """Each named trial's energy as a multiple of the fp32 ANN teacher's on the same tokens."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    ratios = {name: TrialRecord.of(trials[n]).ann_ratios for name, n in numbers.items()}
    missing = [name for name, r in ratios.items() if r is None]
    if missing:
        raise SpikepruneError(f"study {study.study_name}: the {' and '.join(missing)} trial holds no ANN reference; "
                              "delete its row and study to measure them again")
    return {name: r["teacher"] for name, r in ratios.items()}


def measure(task: str, args: Any) -> dict[str, Any]:
    """Prepare (or reuse) the task's base, run (or resume) its search and build its row."""
    started = time.perf_counter()
    print(f"\n== {task}: prepare ({args.preset})", flush=True)
    prepared = prepare(task, args.glue_dir, args.run_dir, preset=args.preset, seed=args.seed)
    record = PreparedRecord.read(prepared)
    print(f"== {task}: joint search, {args.n_trials} trials", flush=True)
    study = run_search(SearchSettings(
        prepared=prepared, space=args.space, study_name=study_name(task, args.preset), n_trials=args.n_trials,
        workers=args.workers, run_dir=args.run_dir, seed=args.seed, glue_dir=args.glue_dir,
        max_examples=args.max_examples, profile_examples=args.profile_examples, progress=not args.quiet)).study
    base = BaseBundle.load(prepared, args.glue_dir)
    dense, best = cheapest_within(study, args.max_drop)
    examples = min(args.max_examples or base.dev_size, base.dev_size)
    name = get_task(task).main_metric
    trials = study.get_trials(deepcopy=False)
    full = [t for t in trials if benchlib.trial_point(t) is not None]
    return {
        "task": task, "settings": settings_of(args), "prepared": str(prepared), "study": study.study_name,
        "metric": name, "dev_examples": examples,
        "teacher": record.teacher_metrics[name], "student_prepared": record.student_metrics[name],
        "dense": dense.metric, "majority": benchlib.majority(base, examples)[name],
        "dense_trial": dense.number, "dense_costs": dense.costs,
        "x_ann_fp32": ann_energy(study, {"dense": dense.number, "best": best.number}),
        "best": {"trial": best.number, "metric": best.metric, "delta_points": best.delta * 100,
                 "costs": best.costs, "ratios": best.ratios,
                 "config": next(t.params for t in trials if t.number == best.number)},
        "sops_target_met": best.ratios["sops"] <= SOPS_TARGET,
        "full_trials": len(full), "early_stopped": sum(1 for t in trials if TrialRecord.of(t).early_stopped),
        "prepare_s": {k: v for k, v in record.timings.items() if k != "this_run_s"},
        "search_s": benchlib.span_s(trials), "wall_s": time.perf_counter() - started,
    }


def verdict(row: dict[str, Any]) -> str:
    """The bar in words: at least 2× fewer SOPs within the drop (met), or how far short."""
    saved = 1 / row["best"]["ratios"]["sops"]
    return f"{saved:.2f}× " + ("(met)" if row["sops_target_met"] else f"(short by {1 / SOPS_TARGET - saved:.2f}×)")


def print_table(rows: list[dict[str, Any]], max_drop: float) -> list[list[str]]:
    header = ["task", "metric", "teacher", "dense student", "majority", "dense / ANN energy", "best trial",
              "its metric (Δ points)", "SOPs / dense", "Σ T / dense", "energy / dense", "best / ANN energy",
              "SOPs saved (target 2×)"]
    lines = []
    for r in rows:
        b, ann = r["best"], r["x_ann_fp32"]
        lines.append([r["task"], r["metric"], f"{r['teacher']:.4f}", f"{r['dense']:.4f}", f"{r['majority']:.4f}",
                      f"{ann['dense']:.2f}", f"#{b['trial']}", f"{b['metric']:.4f} ({b['delta_points']:+.2f})",
                      f"{b['ratios']['sops']:.3f}", f"{b['ratios']['sum_t']:.3f}", f"{b['ratios']['energy_uj']:.3f}",
                      f"{ann['best']:.3f}", verdict(r)])
    print(f"\nbest config: the fewest SOPs with a metric at most {max_drop * 100:g} point(s) below the dense student")
    print(benchlib.table(header, lines))
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"benchmarks/{NAME}.py", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"GLUE tasks (default {' '.join(TASKS)})")
    p.add_argument("--glue-dir", type=Path, default=None,
                   help="GLUE data for prepare and the searches (default: the Hugging Face hub)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/glue-table"),
                   help="where the bases (prepared/) and the studies go (default runs/glue-table); re-running resumes")
    p.add_argument("--preset", default="quick", help="prepare preset (default quick)")
    p.add_argument("--space", default="joint", help="search space preset or file (default joint)")
    p.add_argument("--n-trials", type=int, default=24, help="COMPLETE trials per task (default 24)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers, one CPU each (default 2)")
    p.add_argument("--seed", type=int, default=0, help="prepare and search seed (default 0)")
    p.add_argument("--max-examples", type=int, default=None, help="every trial on the first N dev examples (default: all)")
    p.add_argument("--profile-examples", type=int, default=64,
                   help="dev examples per sensitivity probe of the guided sampler (default 64)")
    p.add_argument("--max-drop", type=float, default=0.01, help="allowed metric drop from the dense student (default 0.01)")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks") / f"{NAME}.json",
                   help=f"JSON file of the table (default runs/benchmarks/{NAME}.json); the rows go to "
                        "OUT-without-suffix/rows/, the fronts page to OUT with .html")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    for task in args.tasks:
        get_task(task)  # an unknown task is refused before any work
    env = benchlib.search_setup(args)
    started = time.perf_counter()
    rows, studies = [], []
    for i, task in enumerate(args.tasks, start=1):
        path = args.out.with_suffix("") / "rows" / f"{task}.json"
        row = json.loads(path.read_text()) if path.is_file() else None
        if row is not None and row.get("settings") == settings_of(args):
            print(f"\n== {task} ({i}/{len(args.tasks)}): measured before, {path}")
        else:
            row = measure(task, args)
            benchlib.write_json(path, row)
            print(f"== {task} ({i}/{len(args.tasks)}): row written to {path}")
        rows.append(row)
        studies.append(load_study(row["study"], open_storage(default_storage(args.run_dir, row["study"]))))
    wall = time.perf_counter() - started
    print_table(rows, args.max_drop)
    fronts = compare_fronts(studies, args.out.with_suffix(".html"), labels=[r["task"] for r in rows],
                            relative_to_dense=True, max_drop=args.max_drop)
    print(f"fronts side by side: {fronts}\nwall time of this run: {wall:.0f} s")
    return benchlib.finish(args.out, NAME, env, args, {"rows": rows, "wall_s": wall})


if __name__ == "__main__":
    try:
        main()
    except SpikepruneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
