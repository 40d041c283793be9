"""Search efficiency: hypervolume against trial count per sampler, and what early stopping saves.

Runs (or resumes) one real search per arm and seed on one prepared base and space (default the
joint preset), the same trial budget and dev subset for all, early stopping off; the extra arm
``<sampler>+es`` (``--early-stopping-arm``, default TPE) is that sampler with the space's
Pareto-aware early stopping on, and is compared with the same sampler's plain arm. Every study enqueues the same
seeds first (the dense baseline and uniform configs), so arms differ in what their sampler picks
after them. Hypervolume is measured from one reference point (derived from the dense baseline,
which every study measures identically) over fully evaluated trials, after each completed trial.

Prints, per arm, the hypervolume after 10, 20, ... trials (median and range over seeds), the fewest
SOPs among fully evaluated trials within ``--max-drop`` of the baseline's metric, the dev examples
evaluated, the seconds trials spent in the trial function and how many stopped early, and the hypervolume
of all arms' trials pooled (the best front the benchmark found: a yardstick for the ratios); writes
the figures as JSON and an offline HTML page with the curves.

The ``guided`` arm pays for its sensitivity profile: its seconds (read from the base's cache) are
converted to trial-equivalents at the median kernel seconds of a fully evaluated trial (all arms),
and its curve is shifted right by that many trials (its HV@k is what it had after k - cost trials
of its own). The
same studies also measure the cost predictor (the median relative error of predicted against
measured SOPs and energy over every fully evaluated trial) and the guided sampler's metric model
(its absolute error on each of its own proposals, predicted from the trials finished before it).

    .venv/bin/python benchmarks/bench_search.py --prepared runs/study/prepared/sst2-quick \\
        --run-dir runs/bench-search --n-trials 30 --max-examples 64
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import plotly.graph_objects as go  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from spikeprune.pareto import baseline_trial, front_hypervolume, is_candidate, is_duplicate  # noqa: E402
from spikeprune.results import analyse_study, figure_div, page  # noqa: E402
from spikeprune.records import TrialRecord  # noqa: E402
from spikeprune import SearchSettings, run_search  # noqa: E402

NAME = "bench_search"
COLOURS = {"tpe": "#1f77b4", "nsga2": "#2ca02c", "gp": "#9467bd", "random": "#7f7f7f", "guided": "#ff7f0e"}
EARLY_COLOUR = "#d62728"


def curve(trials: list[Any], reference: Any) -> list[float]:
    """Hypervolume of the fully evaluated trials among the first k COMPLETE ones, for k = 1, 2, ..."""
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    return [front_hypervolume(done[:k], reference) for k in range(1, len(done) + 1)]


def fewest_sops(trials: list[Any], baseline: float, max_drop: float) -> float | None:
    """The fewest SOPs among fully evaluated trials whose metric is at most ``max_drop`` below ``baseline``."""
    records = [TrialRecord.of(t) for t in trials if t.state == TrialState.COMPLETE]
    ok = [r.report["sops"] for r in records if r.report and not r.early_stopped
          and r.metrics["metric"] >= baseline - max_drop - 1e-12]
    return min(ok) if ok else None


def predictor_errors(predictor: Any, space: Any, studies: dict[str, list[Any]]) -> dict[str, Any]:
    """Median relative error of the cost predictor on every fully evaluated trial of the studies."""
    import numpy as np

    errors: dict[str, list[float]] = {"sops": [], "energy_uj": []}
    seen = set()
    for runs in studies.values():
        for study in runs:
            energy = study.user_attrs["spikeprune"]["energy"]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                record = TrialRecord.of(t)
                key = tuple(sorted(t.params.items()))
                if record.early_stopped or not record.report or key in seen:
                    continue
                seen.add(key)
                predicted = predictor.objectives(space.suggest(t), energy)
                for name in errors:
                    errors[name].append(abs(predicted[name] / record.report[name] - 1))
    return {name: {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "trials": len(v)}
            for name, v in errors.items() if v}


def metric_model_errors(sampler: Any, runs: list[Any]) -> dict[str, Any]:
    """How far the guided sampler's metric model was from what its own proposals then measured:
    each fully evaluated trial that was not a seed, predicted from the trials finished before it started."""
    import numpy as np

    errors = []
    for study in runs:
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            record = TrialRecord.of(t)
            if t.state != TrialState.COMPLETE or record.seeded or record.early_stopped or is_duplicate(t):
                continue
            known = [u for u in trials if u.datetime_complete is not None and u.datetime_complete <= t.datetime_start]
            predicted = float(sampler.predicted_metrics(known, [t.params])[0])
            errors.append(abs(predicted - record.metrics["metric"]))
    return {"median": float(np.median(errors)), "mean": float(np.mean(errors)), "trials": len(errors)} if errors else {}


def spread(values: list[float], digits: int = 3) -> str:
    """'median [min-max]' of a list (one value: just it)."""
    if not values:
        return "-"
    mid = benchlib.median(values)
    if len(values) == 1:
        return f"{mid:.{digits}f}"
    return f"{mid:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = benchlib.search_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, required=True, help="the prepared base to search")
    p.add_argument("--space", default="joint", help="space preset or file (default joint)")
    p.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "gp", "random"],
                   help="samplers to compare (default tpe nsga2 gp random)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="sampler seeds per arm (default 0 1 2)")
    p.add_argument("--n-trials", type=int, default=30, help="COMPLETE trials per study (default 30)")
    p.add_argument("--max-examples", type=int, default=64, help="dev examples per full evaluation (default 64)")
    p.add_argument("--population-size", type=int, default=10, help="NSGA-II generation size (default 10)")
    p.add_argument("--early-stopping-arm", default="tpe", metavar="SAMPLER",
                   help="the sampler run again with early stopping on, as the arm SAMPLER+es (default tpe)")
    p.add_argument("--no-early-stopping-arm", action="store_true", help="leave out the SAMPLER+es arm")
    p.add_argument("--every", type=int, default=10, help="report the hypervolume every this many trials (default 10)")
    p.add_argument("--images", nargs="*", default=[], help="also write the curves in these formats, e.g. png")
    p.add_argument("--max-drop", type=float, default=0.01, help="metric drop allowed for the fewest-SOPs column (default 0.01)")
    p.add_argument("--profile-examples", type=int, default=64, help="dev examples per probe of the guided sampler (default 64)")
    args = p.parse_args(argv)
    env = benchlib.search_setup(args)
    early = None if args.no_early_stopping_arm else f"{args.early_stopping_arm}+es"
    arms = [*args.samplers] + ([early] if early else [])
    studies: dict[str, list[Any]] = {arm: [] for arm in arms}
    for arm in arms:
        for seed in args.seeds:
            studies[arm].append(run_search(SearchSettings(
                prepared=args.prepared, space=args.space, study_name=f"{NAME}-{arm.replace('+', '-')}-s{seed}",
                n_trials=args.n_trials, workers=args.workers, run_dir=args.run_dir,
                sampler=arm.removesuffix("+es"), seed=seed, glue_dir=args.glue_dir,
                max_examples=args.max_examples, early_stopping=arm == early,
                population_size=args.population_size, profile_examples=args.profile_examples,
                progress=not args.quiet)).study)
    reference = analyse_study(studies[arms[0]][0]).reference
    figures: dict[str, Any] = {"reference": {"worst": reference.worst, "ideal": reference.ideal,
                                             "objectives": [o.name for o in reference.objectives]}, "arms": {}}
    checkpoints = sorted({*range(args.every, args.n_trials + 1, args.every), args.n_trials})
    header = ["arm", *[f"HV@{k}" for k in checkpoints], f"fewest SOPs (<= {args.max_drop:g} drop)", "examples",
              "kernel s", "wall s", "stopped early"]
    per_trial_s = benchlib.median([float((TrialRecord.of(t).timing or {}).get("total_s", 0.0))
                                   for runs in studies.values() for st in runs
                                   for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                                   if not is_duplicate(t) and not TrialRecord.of(t).early_stopped])
    profile_trials = 0
    guided = [arm for arm in arms if arm.removesuffix("+es") == "guided"]   # plain first, then +es
    if guided:
        from spikeprune.samplers import CostPredictor
        from spikeprune.samplers import compute_profile
        from spikeprune.spaces import SearchSpace
        from spikeprune.trial import BaseBundle

        base = BaseBundle.load(args.prepared, args.glue_dir)
        space = SearchSpace.load(args.space).check(base.student.config)
        # what the guided arm measured, read back from the base's cache
        spike_stats, profile = compute_profile(base, space, examples=args.profile_examples)
        predictor = CostPredictor(base.student, base.importance, spike_stats, base.importance_method)
        profile_trials = int(-(-profile.seconds // per_trial_s)) if per_trial_s > 0 else 0
        figures["guided_profile"] = {"seconds": profile.seconds, "probes": len(profile.results),
                                     "trial_equivalents": profile_trials, "per_trial_s": per_trial_s}
        print(f"guided: the sensitivity profile ({len(profile.results)} probes) took {profile.seconds:.0f} s = "
              f"{profile_trials} trial-equivalents at the median {per_trial_s:.1f} s per trial; its curve is shifted by that")
    rows = []
    fig = go.Figure()
    for arm in arms:
        runs = []
        for seed, study in zip(args.seeds, studies[arm]):
            trials = study.get_trials(deepcopy=False)
            fresh = [TrialRecord.of(t) for t in trials if t.state == TrialState.COMPLETE and not is_duplicate(t)]
            hv = curve(trials, reference)
            if arm in guided:
                hv = [0.0] * profile_trials + hv
            baseline = baseline_trial(trials).values[0]   # the finished one: a killed driver fails the first
            runs.append({"seed": seed, "study": study.study_name, "hypervolume": hv,
                         "fewest_sops": fewest_sops(trials, baseline, args.max_drop),
                         "examples": sum(r.examples or 0 for r in fresh),
                         "kernel_s": sum(float((r.timing or {}).get("total_s", 0.0)) for r in fresh),
                         "stopped_early": sum(r.early_stopped for r in fresh),
                         "duplicates": sum(is_duplicate(t) for t in trials if t.state == TrialState.COMPLETE),
                         "wall_s": benchlib.span_s(trials)})
        figures["arms"][arm] = {"runs": runs}
        at = {k: [r["hypervolume"][k - 1] for r in runs if len(r["hypervolume"]) >= k] for k in checkpoints}
        sops = [r["fewest_sops"] for r in runs if r["fewest_sops"] is not None]
        rows.append([arm, *[spread(at[k]) for k in checkpoints], spread([v / 1e6 for v in sops], 1) + " M",
                     spread([r["examples"] for r in runs], 0),
                     spread([r["kernel_s"] for r in runs], 0), spread([r["wall_s"] for r in runs], 0),
                     spread([r["stopped_early"] for r in runs], 0)])
        colour = EARLY_COLOUR if arm == early else COLOURS.get(arm, "#333")
        for r in runs:
            fig.add_trace(go.Scatter(x=list(range(1, len(r["hypervolume"]) + 1)), y=r["hypervolume"], mode="lines",
                                     line=dict(color=colour, width=1), opacity=0.3, showlegend=False,
                                     name=f"{arm} seed {r['seed']}", legendgroup=arm))
        length = min(len(r["hypervolume"]) for r in runs)
        fig.add_trace(go.Scatter(x=list(range(1, length + 1)), mode="lines", line=dict(color=colour, width=3),
                                 y=[benchlib.median([r["hypervolume"][k] for r in runs]) for k in range(length)],
                                 name=f"{arm} (median of {len(runs)} seeds)", legendgroup=arm))
    fig.update_layout(title="hypervolume against completed trials", xaxis_title="completed trials",
                      yaxis_title="normalised hypervolume", template="plotly_white", height=480)
    print(f"\n{args.space} space, {args.n_trials} trials per study, {args.max_examples} dev examples per "
          f"evaluation, seeds {' '.join(map(str, args.seeds))} (median [min-max] over seeds)")
    print(benchlib.table(header, rows))
    pooled = [t for runs in studies.values() for st in runs for t in st.get_trials(deepcopy=False)]
    figures["pooled_hypervolume"] = front_hypervolume(pooled, reference)
    print(f"pooled: the fully evaluated trials of every arm and seed together ({sum(map(is_candidate, pooled))} of "
          f"{len(pooled)} trials) have a hypervolume of {figures['pooled_hypervolume']:.3f}, the best front this "
          f"benchmark found")
    if early and args.early_stopping_arm in arms:
        plain, stopped = figures["arms"][args.early_stopping_arm]["runs"], figures["arms"][early]["runs"]
        ratio = {key: benchlib.median([e[key] / max(q[key], 1e-9) for e, q in zip(stopped, plain)])
                 for key in ("examples", "kernel_s")}
        hv = (benchlib.median([r["hypervolume"][-1] for r in stopped]),
              benchlib.median([r["hypervolume"][-1] for r in plain]))
        figures["early_stopping"] = {"sampler": args.early_stopping_arm, "examples_ratio": ratio["examples"],
                                     "kernel_s_ratio": ratio["kernel_s"], "final_hv_early": hv[0], "final_hv_plain": hv[1]}
        print(f"early stopping: {ratio['examples']:.0%} of the dev examples and {ratio['kernel_s']:.0%} of the trial-function "
              f"seconds of plain {args.early_stopping_arm} (median of per-seed ratios); final hypervolume "
              f"{hv[0]:.3f} vs {hv[1]:.3f}")
    if guided:
        figures["predictor"] = predictor_errors(predictor, space, studies)
        print("cost predictor, relative error over the fully evaluated trials: " + "; ".join(
            f"{name} median {e['median']:.1%} (90th percentile {e['p90']:.1%}, {e['trials']} configs)"
            for name, e in figures["predictor"].items()))
        from spikeprune.samplers import GuidedSampler

        energy = studies[guided[0]][0].user_attrs["spikeprune"]["energy"]
        model = metric_model_errors(GuidedSampler(space, predictor, profile, energy=energy), studies[guided[0]])
        figures["metric_model"] = model
        if model:
            print(f"guided metric model, absolute error on its own proposals (predicted from the trials finished "
                  f"before each): median {model['median']:.3f}, mean {model['mean']:.3f} over {model['trials']} trials")
    html = args.out.with_suffix(".html")
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(page("spikeprune: search efficiency", [
        "<h1>Search efficiency</h1>", f"<pre>{benchlib.table(header, rows)}</pre>", figure_div(fig, "hv")]),
        encoding="utf-8")
    print(f"curves: {html}")
    result = benchlib.finish(args.out, NAME, env, args, figures)   # before the images, which need a browser
    benchlib.write_figures({"hypervolume": fig}, html, args.images)
    return result


if __name__ == "__main__":
    main()
