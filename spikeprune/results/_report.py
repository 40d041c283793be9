"""The study report: one self-contained, offline HTML file, plus static images on request.

Sections: summary, Pareto front (axis dropdowns over the objectives; front, noise-level ties,
dominated, infeasible and early-stopped trials styled apart; hover shows the per-layer config;
on the metric-energy plane the ANN references: lines at the fp32 and int8 teacher's energy, the
teacher at its metric and the integer twins of the front),
hypervolume history, per-layer configs of the Pareto trials, operations per layer of a chosen
trial, parameter importance per objective, and a sortable table of all trials (with each trial's
energy as a multiple of the fp32 ANN teacher's and of its integer twin's).
"""
from __future__ import annotations

import html
import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import plotly.graph_objects as go
import plotly.io as pio
from optuna.trial import TrialState

from spikeprune.errors import SpikepruneError
from spikeprune.objectives import METRIC
from spikeprune.pareto import STATUSES, NoiseRule, is_duplicate, is_early_stopped
from spikeprune.records import PreparedRecord, TrialRecord
from spikeprune.search._study import quiet_optuna

from spikeprune.results import _plots as plots
from spikeprune.results._analysis import Analysis, analyse_study

if TYPE_CHECKING:
    from spikeprune.costs import AnnReference

IMAGE_FORMATS = ("png", "svg", "pdf")
#: Below this many fully evaluated trials, importances are mostly noise and are not shown.
MIN_IMPORTANCE_TRIALS = 10


def objective_importances(analysis: Analysis, min_trials: int = MIN_IMPORTANCE_TRIALS
                          ) -> tuple[dict[str, dict[str, float]], str]:
    """Parameter importances per objective (Optuna's default PED-ANOVA) over the complete, fully
    evaluated, non-duplicate trials, and a note; empty with the reason when there are too few trials or no
    parameter varies."""
    trials = [t for t in analysis.trials
              if t.state == TrialState.COMPLETE and not is_early_stopped(t) and not is_duplicate(t)]
    if len(trials) < min_trials:
        return {}, f"importances need at least {min_trials} complete trials; this study has {len(trials)}"
    varying = sorted(p for p in {p for t in trials for p in t.params}
                     if len({repr(t.params.get(p)) for t in trials}) > 1)
    if not varying:
        return {}, "no parameter varies across the complete trials"
    # An in-memory copy holding only these trials: early-stopped values are partial, duplicates repeats.
    with quiet_optuna():
        copy = optuna.create_study(directions=[o.direction for o in analysis.objectives])
    copy.add_trials(trials)
    out: dict[str, dict[str, float]] = {}
    for k, o in enumerate(analysis.objectives):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA warns that it minimises the target: we negate maxima
            try:
                out[o.name] = optuna.importance.get_param_importances(
                    copy, params=varying, target=lambda t, k=k, s=o.sign: s * t.values[k])
            except (ValueError, RuntimeError) as e:  # e.g. a degenerate top quantile
                return {}, f"importances could not be computed ({o.name}: {e})"
    return out, f"over {len(trials)} complete trials"


def _summary(analysis: Analysis) -> str:
    record = analysis.record
    counts = ", ".join(f"{len(getattr(analysis.split, s))} {plots.LABELS.get(s, s)}" for s in STATUSES)
    items = {
        "study": analysis.study_name, "task": record.task,
        "objectives": ", ".join(f"{o.shown} ({o.direction})" for o in analysis.objectives),
        "trials": f"{len(analysis.trials)} ({counts})",
        "energy model": record.energy, "prepared base": record.prepared,
    }
    if analysis.reference is not None:
        items["hypervolume"] = f"{analysis.hypervolume:.4g}"
        items["reference point"] = _reference_point(analysis) + " (worst values counted: as given, else from the dense baseline or the trials)"
    else:
        items["hypervolume"] = "not computed: no finished trial yet (and no --reference given)"
    if analysis.baseline is not None:
        items["baseline trial"] = str(analysis.baseline.number)
    ann = _ann_source(analysis)
    if ann is not None:
        items["ANN teacher"] = ann.headline() + "; the table gives each trial's energy as a multiple of it (fp32) " \
                               "and of its integer twin (same structure and weight bits, float layers at 8, 8-bit activations)"
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items())
    return f"<h1>spikeprune study {html.escape(analysis.study_name)}</h1><dl>{rows}</dl>"


def _reference_point(analysis: Analysis) -> str:
    return ", ".join(f"{o.shown} {w:.4g}" for o, w in zip(analysis.reference.objectives, analysis.reference.worst))


def _ann_source(analysis: Analysis) -> AnnReference | None:
    """The ANN references counted on the baseline's examples, else on the first front trial's."""
    for t in [*([analysis.baseline] if analysis.baseline else []), *analysis.split.front]:
        if (ann := TrialRecord.of(t).ann_reference) is not None:
            return ann
    return None


def _teacher_metric(analysis: Analysis) -> float | None:
    """The fp32 teacher's dev metric from the prepared base, when it can be read from here."""
    try:
        return float(PreparedRecord.read(analysis.record.prepared).teacher_metrics[METRIC])
    except (SpikepruneError, TypeError, KeyError):
        return None


def ann_references(analysis: Analysis) -> list[plots.ReferenceTrace]:
    """The ANN reference points of the metric-energy plane: a line at the fp32 teacher's energy
    and one at the int8 teacher's, the fp32 teacher at its measured metric, and the integer twin
    of each front trial at that trial's metric (the twin computes the trial's quantized network;
    exactly, unless the trial keeps a layer in float, which the twin runs at 8 bits)."""
    names = [o.name for o in analysis.objectives]
    ann = _ann_source(analysis)
    if ann is None or METRIC not in names or "energy_uj" not in names:
        return []
    m, e = names.index(METRIC), names.index("energy_uj")
    teacher_metric = _teacher_metric(analysis)
    seen = [t.values[m] for t in analysis.trials if t.values is not None] + \
        ([teacher_metric] if teacher_metric is not None else [])
    span = [min(seen), max(seen)]
    metric_name = analysis.record.metric_name
    refs = []
    for key, label, dash in (("teacher", "fp32 ANN teacher", "dash"), ("teacher_int8", "int8 ANN teacher", "dot")):
        energy = getattr(ann, key).energy_uj
        hover = f"<b>{label}</b><br>energy_uj: {plots.fmt(energy)} per example ({ann.energy_model})"
        refs.append(plots.ReferenceTrace(label, {"energy_uj": [energy, energy], METRIC: span},
                                         dict(mode="lines", line=dict(color="#d62728" if key == "teacher" else "#9467bd",
                                                                      dash=dash, width=2)), [hover, hover]))
    if teacher_metric is not None:
        hover = (f"<b>fp32 ANN teacher</b><br>{metric_name}: {plots.fmt(teacher_metric)} (the whole dev set, "
                 f"from prepare)<br>"
                 f"energy_uj: {plots.fmt(ann.teacher.energy_uj)}")
        refs.append(plots.ReferenceTrace("fp32 ANN teacher (dev metric)",
                                         {"energy_uj": [ann.teacher.energy_uj], METRIC: [teacher_metric]},
                                         dict(mode="markers", marker=dict(color="#d62728", size=13, symbol="diamond")),
                                         [hover]))
    twins = [(t, r) for t in analysis.split.front if (r := TrialRecord.of(t).ann_reference) is not None]
    if twins:
        hover = [f"<b>integer twin of trial {t.number}</b><br>weight bits: "
                 f"{' '.join(f'{b:g}' for b in r.twin.weight_bits)}, 8-bit activations<br>"
                 f"energy_uj: {plots.fmt(r.twin.energy_uj)} (the trial: {plots.fmt(t.values[e] / r.twin.energy_uj)}x)"
                 for t, r in twins]
        refs.append(plots.ReferenceTrace("integer twins of the front",
                                         {"energy_uj": [r.twin.energy_uj for _, r in twins],
                                          METRIC: [t.values[m] for t, _ in twins]},
                                         dict(mode="markers", marker=dict(color="#9467bd", size=9, symbol="square-open",
                                                                          line=dict(width=2))), hover))
    return refs


def pareto_figure(analysis: Analysis) -> go.Figure:
    status = analysis.split.status()
    groups = []
    for s in ("dominated", "early_stopped", "infeasible", "within_noise", "front"):
        trials = [t for t in getattr(analysis.split, s) if t.values is not None]
        hover = [plots.trial_hover(t, analysis.objectives, status[t.number]) for t in trials]
        groups.append((plots.LABELS[s], trials, plots.STYLES[s], hover))
    if analysis.baseline is not None:
        b = analysis.baseline
        groups.append(("dense baseline", [b], dict(color="black", size=14, symbol="star-open", line=dict(width=2)),
                       [plots.trial_hover(b, analysis.objectives, status[b.number])]))
    return plots.scatter_with_axis_menus(groups, analysis.objectives, "Pareto front", ann_references(analysis))


def _table(analysis: Analysis) -> str:
    status = analysis.split.status()
    columns = ["trial", "status", *[o.shown for o in analysis.objectives], "x fp32 ANN", "x int twin",
               f"{analysis.record.metric_name} CI",
               *plots.LAYER_FIELDS.values(), "recovery", "fidelity", "duration s", "node", "worker", "error"]
    rows, classes = [], []
    for t in analysis.trials:
        r = TrialRecord.of(t)
        comp, ci = r.compression or {}, r.metric_ci
        values = list(t.values) if t.values is not None else [None] * len(analysis.objectives)
        ratios = r.ann_ratios or {}
        rows.append([
            t.number, status[t.number], *values, ratios.get("teacher"), ratios.get("twin"),
            f"{ci[0]:.4g}..{ci[1]:.4g}" if ci else None,
            *[" ".join(f"{v:g}" for v in comp[f]) if comp.get(f) is not None else None for f in plots.LAYER_FIELDS],
            comp.get("recovery_steps"), r.fidelity,
            round(t.duration.total_seconds(), 2) if t.duration is not None else None,
            r.node, r.worker, r.error])
        classes.append(status[t.number])
    return plots.html_table(columns, rows, classes)


def build_figures(analysis: Analysis) -> dict[str, tuple[go.Figure, str]]:
    """The report's figures by name, each with any extra HTML control it needs (may be "")."""
    figures: dict[str, tuple[go.Figure, str]] = {"pareto": (pareto_figure(analysis), "")}
    if analysis.reference is not None:
        figures["hypervolume"] = (plots.hypervolume_figure(
            analysis.history, f"reference point (worst counted): {_reference_point(analysis)}"), "")
    layers = plots.layer_config_figure(analysis.split.front, analysis.objectives)
    if layers is not None:
        figures["layers"] = (layers, "")
    # Front trials first in the dropdown, then the baseline, then every other complete trial.
    first = [*analysis.split.front, *([analysis.baseline] if analysis.baseline else [])]
    seen = {t.number for t in first}
    order = first + [t for t in analysis.trials if t.state == TrialState.COMPLETE and t.number not in seen]
    ops = plots.layer_ops_figure(order, "ops")
    if ops is not None:
        figures["ops"] = ops
    return figures


def write_report(study: optuna.Study, out_html: str | Path, *, images: Sequence[str] = (),
                 image_dir: str | Path | None = None, noise: NoiseRule | None = NoiseRule(),
                 margin: float = 0.1, metric_margin: float = 0.1) -> list[Path]:
    """Write the offline HTML report of ``study``; with ``images`` (e.g. ["png", "svg"]) also
    static images of the main plots into ``image_dir`` (default: beside the HTML file).

    Returns the written files, the HTML first. Static images need kaleido and a Chromium
    (Debian's ``chromium``; set BROWSER_PATH if it is not on PATH).
    """
    bad = [f for f in images if f not in IMAGE_FORMATS]
    if bad:
        raise SpikepruneError(f"image format {bad[0]!r} is not supported; use one of {', '.join(IMAGE_FORMATS)}")
    analysis = analyse_study(study, margin=margin, metric_margin=metric_margin, noise=noise)
    figures = build_figures(analysis)
    importances, note = objective_importances(analysis)
    if importances:
        figures["importance"] = (plots.importance_figure(importances), "")
    titles = {"pareto": "Pareto front", "hypervolume": "Hypervolume", "layers": "Per-layer configuration",
              "ops": "Operations per layer", "importance": "Parameter importance"}
    sections = [_summary(analysis)]
    for name, (fig, control) in figures.items():
        sections += [f"<h2>{titles[name]}</h2>", control, plots.figure_div(fig, name)]
    if not importances:
        sections.append(f'<h2>Parameter importance</h2><p class="note">{html.escape(note)}</p>')
    sections += ["<h2>Trials</h2><p class=\"note\">click a column header to sort</p>", _table(analysis)]
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(plots.page(f"spikeprune report: {analysis.study_name}", sections), encoding="utf-8")
    written = [out]
    if images:
        written += write_images({n: f for n, (f, _) in figures.items()}, Path(image_dir or out.parent),
                                images, stem=out.stem)
    return written


def write_images(figures: dict[str, go.Figure], out_dir: Path, formats: Sequence[str], stem: str) -> list[Path]:
    """Static images via kaleido (one Chromium session for all); dropdown menus are left out."""
    if importlib.util.find_spec("kaleido") is None:
        raise SpikepruneError("static images need kaleido: pip install 'spikeprune[images]'")
    from choreographer.browsers.chromium import ChromeNotFoundError

    out_dir.mkdir(parents=True, exist_ok=True)
    figs, paths = [], []
    for name, fig in figures.items():
        static = go.Figure(fig)
        static.layout.updatemenus = ()
        static.layout.annotations = [a for a in fig.layout.annotations if a.name != plots.MENU_LABEL]
        for fmt in formats:
            figs.append(static)
            paths.append(out_dir / f"{stem}-{name}.{fmt}")
    try:
        pio.write_images(figs, paths, width=1100)
    except (ChromeNotFoundError, RuntimeError) as e:   # plotly re-raises kaleido's ChromeNotFoundError as RuntimeError
        if not isinstance(e, ChromeNotFoundError) and not isinstance(e.__cause__ or e.__context__, ChromeNotFoundError):
            raise
        raise SpikepruneError(
            "static images need Chromium: apt-get install chromium (or set BROWSER_PATH to a Chrome binary)") from None
    return paths
