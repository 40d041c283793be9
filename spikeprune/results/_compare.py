"""Several studies' Pareto fronts on one offline page.

Studies of one task (say the spatial, temporal, quantization and joint searches of one base) are
overlaid as they are. Studies of different tasks are not comparable that way (accuracy against
Matthews correlation, a 9-token sentence against a 60-token pair), so each is normalised to its
own dense student: its metric as the difference from the dense student's (in points, hundredths),
its costs as ratios to the dense student's. The page's table gives, per study, the config with the
fewest synaptic operations within a drop of its dense student (``cheapest_within``, also what the
GLUE table benchmark reports).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from spikeprune.errors import SpikepruneError
from spikeprune.objectives import METRIC
from spikeprune.pareto import front_hypervolume
from spikeprune.records import TrialRecord

from spikeprune.results import _plots as plots
from spikeprune.results._analysis import Analysis, analyse_study
from spikeprune.results._export import select_trials

#: Costs every trial's operation report holds, so studies with other objectives still line up.
RATIO_COSTS: dict[str, str] = {"sops": "SOPs", "energy_uj": "energy", "sum_t": "Σ T", "size_mb": "size"}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
#: Float slack when a trial's metric is compared with a floor derived by subtraction.
FLOOR_SLACK = 1e-9


@dataclass(frozen=True)
class Relative:
    """One trial against its study's dense student."""

    number: int
    metric: float
    #: the trial's metric minus the dense student's (0.01 is one point)
    delta: float
    #: per example, from the trial's operation report
    costs: dict[str, float]
    #: each cost divided by the dense student's (0.5: half of it)
    ratios: dict[str, float]


def _measured(trial: FrozenTrial) -> tuple[float, dict[str, float]]:
    """The trial's metric and per-example costs, from its stored record."""
    record = TrialRecord.of(trial)
    report = record.report or {}
    missing = [c for c in RATIO_COSTS if c not in report]
    if not record.metrics or METRIC not in record.metrics or missing:
        raise SpikepruneError(f"trial {trial.number} has no stored metric and costs ({', '.join(missing) or METRIC}); "
                              "was it run by spikeprune search?")
    return float(record.metrics[METRIC]), {c: float(report[c]) for c in RATIO_COSTS}


def relative(trial: FrozenTrial, dense: FrozenTrial) -> Relative:
    """``trial`` normalised to the dense student ``dense`` (a cost the dense student does not spend
    gives an infinite ratio rather than a division error)."""
    metric, costs = _measured(trial)
    dense_metric, dense_costs = _measured(dense)
    ratios = {c: v / dense_costs[c] if dense_costs[c] else float("inf") for c, v in costs.items()}
    return Relative(trial.number, metric, metric - dense_metric, costs, ratios)


def dense_student(analysis: Analysis) -> FrozenTrial:
    """The study's dense baseline trial: what every point of it is normalised to."""
    if analysis.baseline is None:
        raise SpikepruneError(f"study {analysis.study_name!r} has no finished dense baseline trial to normalise by; "
                              "resume its search (the baseline runs first)")
    return analysis.baseline


def cheapest_within(study: optuna.Study, max_drop: float = 0.01, analysis: Analysis | None = None
                    ) -> tuple[Relative, Relative]:
    """The dense student and the config with the fewest SOPs whose metric is at most ``max_drop``
    below it (``select_trials``' choice; the dense student itself when nothing cheaper qualifies),
    both normalised to the dense student."""
    analysis = analysis or analyse_study(study)
    dense = dense_student(analysis)
    floor = _measured(dense)[0] - max_drop - FLOOR_SLACK
    best = select_trials(study, min_metric=floor)[0]
    return relative(dense, dense), relative(best, dense)


def compare_fronts(studies: Sequence[optuna.Study], out_html: str | Path, labels: Sequence[str] | None = None,
                   relative_to_dense: bool | None = None, max_drop: float = 0.01) -> Path:
    """One offline HTML page with the Pareto fronts of several studies.

    ``relative_to_dense`` normalises each study to its own dense student (metric difference in
    points, costs as ratios); None does so when the studies are of different tasks. Otherwise the
    studies must share their objectives, and hypervolumes are all measured from the first study's
    reference point so the numbers are comparable. ``max_drop`` is the drop the table's
    "cheapest within" column allows (0.01: one point).
    """
    if not studies:
        raise SpikepruneError("compare_fronts needs at least one study")
    labels = list(labels) if labels is not None else [s.study_name for s in studies]
    if len(labels) != len(studies):
        raise SpikepruneError(f"got {len(labels)} labels for {len(studies)} studies; give one label per study")
    analyses = [analyse_study(s) for s in studies]
    if relative_to_dense is None:
        relative_to_dense = len({a.record.task for a in analyses}) > 1
    if relative_to_dense:
        title = "Pareto fronts compared, each relative to its dense student"
        sections = _relative_sections(studies, analyses, labels, max_drop)
    else:
        title = "Pareto fronts compared"
        sections = _absolute_sections(analyses, labels)
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(plots.page(f"spikeprune: {title}", [f"<h1>{title}</h1>", *sections]), encoding="utf-8")
    return out


def _absolute_sections(analyses: list[Analysis], labels: list[str]) -> list[str]:
    """Fronts overlaid as measured (same objectives), hypervolumes from one reference point."""
    objectives = analyses[0].objectives
    for a in analyses[1:]:
        if a.objectives != objectives:
            raise SpikepruneError(
                f"study {a.study_name!r} has objectives {[o.name for o in a.objectives]} but "
                f"{analyses[0].study_name!r} has {[o.name for o in objectives]}; "
                f"compare studies with the same objectives, or each relative to its dense student (--relative)")
    reference = next((a.reference for a in analyses if a.reference is not None), None)
    groups, rows = [], []
    for i, (label, a) in enumerate(zip(labels, analyses)):
        front = a.split.front
        hover = [f"<b>{label}</b><br>" + plots.trial_hover(t, objectives, "front") for t in front]
        groups.append((label, front, dict(color=COLOURS[i % len(COLOURS)], size=9), hover))
        hv = front_hypervolume(front, reference) if reference is not None else None
        rows.append([label, a.study_name, len(a.trials), len(front), hv])
    fig = plots.scatter_with_axis_menus(groups, objectives, "Pareto fronts")
    table = plots.html_table(["label", "study", "trials", "front size", "hypervolume"], rows)
    note = ("hypervolume from the reference point of the first study with a baseline"
            if reference is not None else "no study has a baseline, so no hypervolume")
    return [plots.figure_div(fig, "fronts"), f'<h2>Studies</h2><p class="note">{note}</p>', table]


def _relative_sections(studies: Sequence[optuna.Study], analyses: list[Analysis], labels: list[str],
                       max_drop: float) -> list[str]:
    """Each study's front normalised to its dense student, and the cheapest config within the drop."""
    axes = [("metric − dense", "metric − dense student's (points)"),
            *[(f"{shown} / dense", f"{shown} / dense student's") for shown in RATIO_COSTS.values()]]
    groups, rows = [], []
    for i, (label, study, a) in enumerate(zip(labels, studies, analyses)):
        dense = dense_student(a)
        name = a.record.metric_name
        points = [relative(t, dense) for t in a.split.front]
        hover = [f"<b>{label}</b> ({a.record.task})<br>{name} {p.delta * 100:+.2f} points, "
                 + ", ".join(f"{shown} ×{p.ratios[c]:.3g}" for c, shown in RATIO_COSTS.items())
                 + "<br>" + plots.trial_hover(t, a.objectives, "front") for p, t in zip(points, a.split.front)]
        groups.append((label, [p.number for p in points], [_row(p) for p in points],
                       dict(color=COLOURS[i % len(COLOURS)], size=9), hover))
        base, best = cheapest_within(study, max_drop, a)
        rows.append([label, a.study_name, a.record.task, name, base.metric, len(a.trials), len(a.split.front),
                     a.hypervolume, best.number, round(best.delta * 100, 4),
                     *[best.ratios[c] for c in RATIO_COSTS]])
    groups.append(("dense student", [-1], [[0.0, *[1.0] * len(RATIO_COSTS)]],
                   dict(color="black", size=14, symbol="star-open", line=dict(width=2)),
                   ["<b>every dense student</b><br>metric − dense 0, every cost / dense 1"]))
    fig = plots.menu_scatter(groups, axes, "Pareto fronts relative to each study's dense student", (1, 0))
    fig.add_hline(y=-max_drop * 100, line=dict(dash="dot", color="grey"))
    columns = ["label", "study", "task", "metric", "dense student", "trials", "front size", "hypervolume",
               "cheapest trial", "metric − dense (points)", *[f"{s} / dense" for s in RATIO_COSTS.values()]]
    note = (f"cheapest: the fewest SOPs with a metric at most {max_drop * 100:g} point(s) below the study's dense "
            "student (the dense student itself when nothing cheaper qualifies); each hypervolume from its own "
            "study's reference point; dotted line: the allowed drop")
    return [plots.figure_div(fig, "fronts"), f'<h2>Studies</h2><p class="note">{note}</p>', plots.html_table(columns, rows)]


def _row(p: Relative) -> list[float]:
    """The plotted columns of a normalised point: metric difference in points, then the cost ratios."""
    return [p.delta * 100, *[p.ratios[c] for c in RATIO_COSTS]]
