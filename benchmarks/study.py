"""The spatio-temporal study: single-axis searches against the joint search, per GLUE task.

For each prepared base (one per task) it runs (or resumes) one search per space, same sampler and
trial budget, every trial on the whole dev set or its first ``--max-examples`` (no early stopping) and every energy counted under
one model (``--energy``, default int45nm, so quantization shows up), then prints per task:

- the uncompressed spiking student (the dense baseline trial);
- per space, the trial with the least energy whose metric is at most ``--max-drop`` below the
  baseline's (and the one with the fewest synaptic operations, when that is another trial);

with metric, SOPs, energy, Σ T and size, and a verdict line per task saying which space won. It
writes the figures as JSON and one offline HTML page with, per task, every space's trials and
its Pareto front in (energy, metric) and (SOPs, metric) overlaid (``--images png`` adds PNGs).

Re-running the same command resumes the studies (finished trials are never re-run).

    .venv/bin/python benchmarks/study.py --prepared runs/study/prepared/sst2-quick \\
        --prepared runs/study/prepared/mrpc-quick --run-dir runs/study --n-trials 16
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import plotly.graph_objects as go  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

from spikeprune.pareto import baseline_trial  # noqa: E402
from spikeprune.results import figure_div, page  # noqa: E402
from spikeprune.objectives import dominates  # noqa: E402
from spikeprune import SearchSettings, run_search  # noqa: E402

NAME = "study"
SPACES: tuple[str, ...] = ("spatial", "temporal", "quantization", "joint")
COLUMNS: tuple[str, ...] = ("metric", "sops", "energy_uj", "sum_t", "size_mb")
COLOURS = {"spatial": "#1f77b4", "temporal": "#2ca02c", "quantization": "#ff7f0e", "joint": "#d62728"}


def best_within(points: list[dict[str, Any]], baseline: float, max_drop: float, key: str) -> dict[str, Any] | None:
    """The point with the least ``key`` among those whose metric is at most ``max_drop`` below the baseline."""
    ok = [p for p in points if p["metric"] >= baseline - max_drop - 1e-12]
    return min(ok, key=lambda p: (p[key], -p["metric"])) if ok else None


def front_2d(points: list[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """Points no other point dominates in (metric, ``cost``), by cost; of equal points, the first."""
    directions, key = ("maximize", "minimize"), lambda p: (p["metric"], p[cost])
    ordered = sorted(points, key=lambda p: (p[cost], -p["metric"]))
    return [p for i, p in enumerate(ordered)
            if not any(dominates(key(q), key(p), directions) or (j < i and key(q) == key(p))
                       for j, q in enumerate(ordered))]


def compact(params: dict[str, Any]) -> str:
    """{'heads_l0': 8, 'heads_l1': 6, 'timesteps': 2} -> 'heads [8, 6] timesteps 2'."""
    knobs: dict[str, list[Any]] = {}
    for name, value in params.items():
        knob, _, layer = name.rpartition("_l")
        knobs.setdefault(knob if layer.isdigit() else name, []).append(value)
    return " ".join(f"{k} {benchlib.short(v) if len(v) > 1 else v[0]}" for k, v in knobs.items())


def verdict(task: str, rows: dict[str, dict[str, Any] | None], baseline: dict[str, Any]) -> str:
    """One plain sentence per cost: does the joint search beat every single-axis space?"""
    lines = []
    for cost, label in (("energy_uj", "energy"), ("sops", "SOPs")):
        single = {s: r for s, r in rows.items() if s != "joint" and r is not None}
        joint = rows.get("joint")
        if joint is None or not single:
            lines.append(f"{task} {label}: not every space found a config within the drop")
            continue
        rival, best = min(single.items(), key=lambda kv: kv[1][cost])
        ratio = joint[cost] / best[cost]
        word = "beats" if ratio < 1 else "does not beat"
        lines.append(f"{task} {label}: joint {word} the best single-axis space ({rival}) at the allowed drop: "
                     f"{benchlib.si(joint[cost])} vs {benchlib.si(best[cost])} ({ratio:.2f}x; baseline "
                     f"{benchlib.si(baseline[cost])})")
    return "\n".join(lines)


def collect(study: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every full-fidelity COMPLETE trial as a flat dict, and the dense baseline among them."""
    points = []
    for t in study.get_trials(deepcopy=False):
        row = benchlib.trial_point(t)
        if row is not None:
            points.append(row)
    base = baseline_trial(study.get_trials(deepcopy=False))
    return points, (benchlib.trial_point(base) if base is not None else None)


def figure(task: str, per_space: dict[str, list[dict[str, Any]]], baseline: dict[str, Any], max_drop: float) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("energy (µJ)", "synaptic operations"), shared_yaxes=True)
    for col, cost in ((1, "energy_uj"), (2, "sops")):
        for space, points in per_space.items():
            colour = COLOURS.get(space, "#555")
            fig.add_trace(go.Scatter(x=[p[cost] for p in points], y=[p["metric"] for p in points], mode="markers",
                                     marker=dict(color=colour, size=5, opacity=0.35), name=f"{space} trials",
                                     legendgroup=space, showlegend=False,
                                     hovertext=[f"#{p['number']} {p['config']}" for p in points]), row=1, col=col)
            front = front_2d(points, cost)
            fig.add_trace(go.Scatter(x=[p[cost] for p in front], y=[p["metric"] for p in front], mode="lines+markers",
                                     line=dict(color=colour, shape="hv"), marker=dict(color=colour, size=8),
                                     name=space, legendgroup=space, showlegend=col == 1,
                                     hovertext=[f"#{p['number']} {p['config']}" for p in front]), row=1, col=col)
        fig.add_trace(go.Scatter(x=[baseline[cost]], y=[baseline["metric"]], mode="markers",
                                 marker=dict(symbol="star", size=14, color="black"), name="uncompressed",
                                 showlegend=col == 1), row=1, col=col)
        fig.add_hline(y=baseline["metric"] - max_drop, line=dict(dash="dot", color="grey"), row=1, col=col)
    fig.update_xaxes(type="log")
    fig.update_yaxes(title_text="dev metric", row=1, col=1)
    fig.update_layout(title=f"{task}: Pareto fronts of each space (dotted: {max_drop * 100:g}-point drop)",
                      height=480, template="plotly_white")
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = benchlib.search_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, action="append", required=True,
                   help="a prepared base, one per task (repeat the option)")
    p.add_argument("--spaces", nargs="+", default=list(SPACES), help=f"space presets or files (default {' '.join(SPACES)})")
    p.add_argument("--n-trials", type=int, default=16, help="COMPLETE trials per space (default 16)")
    p.add_argument("--max-examples", type=int, default=None,
                   help="every trial on the first N dev examples of the fixed shuffled order (default: all)")
    p.add_argument("--sampler", default="tpe", help="sampler of every search (default tpe)")
    p.add_argument("--energy", default="int45nm", help="energy model of every search (default int45nm)")
    p.add_argument("--max-drop", type=float, default=0.01, help="allowed metric drop from the baseline (default 0.01)")
    p.add_argument("--images", nargs="*", default=[], help="also write the figure in these formats, e.g. png")
    args = p.parse_args(argv)
    env = benchlib.search_setup(args)
    tasks: dict[str, Any] = {}
    html_sections = ["<h1>spikeprune study: single-axis against joint search</h1>"]
    figures = {}
    for prepared in args.prepared:
        task = benchlib.prepared_task(prepared)
        per_space: dict[str, list[dict[str, Any]]] = {}
        baselines, timings = {}, {}
        for space in args.spaces:
            label = Path(space).stem
            study = run_search(SearchSettings(
                prepared=prepared, space=space, study_name=f"{NAME}-{task}-{label}", n_trials=args.n_trials,
                workers=args.workers, run_dir=args.run_dir, sampler=args.sampler, seed=args.seed,
                glue_dir=args.glue_dir, energy=args.energy, early_stopping=False, max_examples=args.max_examples,
                progress=not args.quiet)).study
            timings[label] = benchlib.span_s(study.get_trials(deepcopy=False))
            per_space[label], baselines[label] = collect(study)
        baseline = next(b for b in baselines.values() if b is not None)
        rows: dict[str, dict[str, Any] | None] = {}
        by_sops: dict[str, dict[str, Any] | None] = {}
        for label, points in per_space.items():
            rows[label] = best_within(points, baseline["metric"], args.max_drop, "energy_uj")
            by_sops[label] = best_within(points, baseline["metric"], args.max_drop, "sops")
        # Tasks scored by F1, MCC or correlation also show accuracy, when they have it: a model that
        # predicts one class can keep F1 high (MRPC) but not accuracy.
        extra = [k for k in ("accuracy",) if k in baseline["metrics"] and len(baseline["metrics"]) > 2]

        def cells(row: dict[str, Any]) -> list[str]:
            return [f"{row['metric']:.4f}", *[f"{row['metrics'][k]:.4f}" for k in extra], benchlib.si(row["sops"]),
                    f"{row['energy_uj']:.1f}", str(int(row["sum_t"])), f"{row['size_mb']:.2f}"]

        header = ["config", "metric", *extra, "SOPs", "energy µJ", "Σ T", "size MB", "trial", "trials"]
        lines = [["uncompressed student", *cells(baseline), "", ""]]
        for label in per_space:
            for tag, row in (("least energy", rows[label]), ("fewest SOPs", by_sops[label])):
                if tag == "fewest SOPs" and (row is None or rows[label] is None or row["number"] == rows[label]["number"]):
                    continue
                if row is None:
                    lines.append([f"{label}: {tag}", "none within the drop", *[""] * (len(header) - 3),
                                  str(len(per_space[label]))])
                    continue
                lines.append([f"{label}: {tag}", *cells(row), f"#{row['number']}", str(len(per_space[label]))])
        chosen = {(label, row["number"]): row for label in per_space for row in (rows[label], by_sops[label]) if row}
        configs = [f"  {label} #{number}: {compact(row['config'])}" for (label, number), row in chosen.items()]
        text = verdict(task, rows, baseline) + "\n" + "\n".join(configs)
        print(f"\n{task} (dev {baseline['examples']} examples; best within {args.max_drop * 100:g} point of the "
              f"uncompressed student; energy under {args.energy})")
        print(benchlib.table(header, lines))
        print(text)
        for label, seconds in timings.items():
            print(f"  {label}: {len(per_space[label])} trials in {seconds:.0f} s (first trial's start to last one's end)")
        fig = figure(task, per_space, baseline, args.max_drop)
        figures[task] = fig
        html_sections += [f"<h2>{task}</h2>", f"<pre>{benchlib.table(header, lines)}\n\n{text}</pre>",
                          figure_div(fig, f"fronts-{task}")]
        tasks[task] = {"prepared": str(prepared), "baseline": baseline, "least_energy": rows, "fewest_sops": by_sops,
                       "verdict": text, "trials": per_space, "search_s": timings}
    html = args.out.with_suffix(".html")
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(page("spikeprune study", html_sections), encoding="utf-8")
    print(f"fronts: {html}")
    result = benchlib.finish(args.out, NAME, env, args, {"tasks": tasks})   # before the images, which need a browser
    benchlib.write_figures(figures, html, args.images)
    return result


if __name__ == "__main__":
    main()
