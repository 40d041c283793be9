"""A search judged on the full dev set: a guided joint search on a subset, its front re-measured.

Runs (or resumes) one search of ``--n-trials`` trials on the first ``--max-examples`` dev examples
(the space's sampler and early stopping, as shipped), then measures every trial of its Pareto front
and the dense student again on the whole dev set (trials of an elastic base through the exact
twin). Of the front configs within ``--max-drop`` of the dense student on the full dev set, the
one with the fewest SOPs is judged against the issue's gate: ≤ 0.25× the dense student's SOPs,
≤ 0.5× its Σ T and ≤ 0.15× the fp32 ANN teacher's energy (int45nm, on the same tokens).

    python benchmarks/judged_search.py --prepared runs/prepared/sst2-quick --run-dir runs/judged
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

from spikeprune import BaseBundle, CompressionConfig, SearchSettings, TrialRecord, run_search  # noqa: E402
from spikeprune.data import main_metric  # noqa: E402
from spikeprune.pareto import split_trials, study_objectives  # noqa: E402
from spikeprune.trial import build_compressed, measure  # noqa: E402

#: The gate on the chosen config, as multiples of the dense student's SOPs and Σ T and of the ANN's energy.
GATE = {"sops": 0.25, "sum_t": 0.5, "energy_x_ann": 0.15}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks/judged_search.py", description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, required=True, help="the prepared base to search")
    p.add_argument("--space", default="joint", help="space preset or file (default joint)")
    p.add_argument("--n-trials", type=int, default=40, help="COMPLETE trials (default 40)")
    p.add_argument("--max-examples", type=int, default=400, help="dev examples per trial of the search (default 400)")
    p.add_argument("--sampler", default=None, help="sampler (default: the space's, guided for joint)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--workers", type=int, default=2, help="trials in flight (default 2)")
    p.add_argument("--max-drop", type=float, default=0.01, help="metric drop allowed from the dense student (default 0.01)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/judged"), help="the study's run folder")
    p.add_argument("--glue-dir", default=None, help="GLUE folder (default: the one the base recorded)")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/judged_search.json"))
    args = p.parse_args(argv)

    start = time.perf_counter()
    # A space given as a file is named by its stem, so the study name stays a valid one.
    name = f"judged-{Path(args.space).stem}-{args.sampler or 'default'}-{args.seed}"
    study = run_search(SearchSettings(prepared=args.prepared, space=args.space, study_name=name, n_trials=args.n_trials,
                                      workers=args.workers, run_dir=args.run_dir, seed=args.seed, sampler=args.sampler,
                                      glue_dir=args.glue_dir, energy="int45nm",
                                      max_examples=args.max_examples)).study
    searched_s = time.perf_counter() - start
    front = split_trials(study.trials, study_objectives(study)).front
    print(f"search: {len(study.trials)} trials in {searched_s:.0f} s; {len(front)} on the front; "
          f"re-measuring them on the whole dev set", flush=True)

    base = BaseBundle.load(args.prepared, args.glue_dir)
    metric = main_metric(base.task)

    def full(compression: CompressionConfig) -> dict:
        model, resolved, timing = build_compressed(base, compression)
        result = measure(base, model, resolved, timing, energy="int45nm")
        report = result.report
        return {"metric": result.metrics[metric], "sops": report.sops, "sum_t": report.sum_t,
                "energy_uj": report.energy_uj, "ann_fp32_uj": result.ann.teacher.energy_uj,
                "config": resolved.to_dict()}

    dense = full(CompressionConfig())
    rows, measured = [], []
    for i, trial in enumerate(front, 1):
        compression = CompressionConfig.from_dict(TrialRecord.of(trial).compression)
        m = {"trial": trial.number, "subset_metric": TrialRecord.of(trial).metrics["metric"], **full(compression)}
        m |= {"drop": dense["metric"] - m["metric"], "sops_x": m["sops"] / dense["sops"],
              "sum_t_x": m["sum_t"] / dense["sum_t"], "energy_x_ann": m["energy_uj"] / m["ann_fp32_uj"]}
        measured.append(m)
        rows.append([str(m["trial"]), f"{m['subset_metric']:.4f}", f"{m['metric']:.4f}", f"{-100 * m['drop']:+.2f}",
                     f"{m['sops_x']:.3f}", f"{m['sum_t_x']:.2f}", f"{m['energy_x_ann']:.3f}"])
        print(f"[{i}/{len(front)}] trial {m['trial']}: {metric} {m['metric']:.4f} on the whole dev set", flush=True)
    print(f"{base.task}: dense student {dense['metric']:.4f}, SOPs {dense['sops']:.3g}, Σ T {dense['sum_t']}, "
          f"{dense['energy_uj']:.0f} µJ = {dense['energy_uj'] / dense['ann_fp32_uj']:.2f}x the fp32 ANN")
    print(benchlib.table(["trial", f"{metric} ({args.max_examples})", f"{metric} (all)", "pts vs dense", "x SOPs",
                          "x ΣT", "x ANN energy"], rows))
    within = [m for m in measured if m["drop"] <= args.max_drop + 1e-12]
    chosen = min(within, key=lambda m: m["sops"]) if within else None
    if chosen is None:
        verdict = f"no front config within {100 * args.max_drop:g} point(s) of the dense student on the whole dev set"
    else:
        misses = [f"{key} {chosen[key + '_x' if key != 'energy_x_ann' else key]:.3f} > {limit}"
                  for key, limit in GATE.items() if chosen[key + "_x" if key != "energy_x_ann" else key] > limit]
        verdict = (f"trial {chosen['trial']}: {-100 * chosen['drop']:+.2f} points, {chosen['sops_x']:.3f}x SOPs, "
                   f"{chosen['sum_t_x']:.2f}x Σ T, {chosen['energy_x_ann']:.3f}x the ANN's energy: "
                   + ("gate met" if not misses else "gate missed (" + "; ".join(misses) + ")"))
    print(verdict)
    figures = {"args": {k: str(v) for k, v in vars(args).items()}, "search_s": searched_s, "dense": dense,
               "front": measured, "chosen": chosen, "verdict": verdict, "total_s": time.perf_counter() - start}
    benchlib.write_json(args.out, figures)
    print(f"wrote {args.out}")
    return figures


if __name__ == "__main__":
    main()
