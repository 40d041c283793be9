"""Plotly figures and the self-contained HTML page shared by the report and front comparisons.

Pages embed plotly.js inline (no CDN) so a report opens offline and can be mailed as one file.
"""
from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import FrozenTrial
from plotly.subplots import make_subplots

from spikeprune.objectives import METRIC, Objective
from spikeprune.records import TrialRecord


#: Marker style per trial status: what stands out is the front, noise-level ties stay visible.
STYLES: dict[str, dict[str, Any]] = {
    "front": dict(color="#1f77b4", size=10, symbol="circle", line=dict(color="#0b3d66", width=1)),
    "within_noise": dict(color="#ff7f0e", size=9, symbol="circle-open", line=dict(width=2)),
    "dominated": dict(color="rgba(120,120,120,0.45)", size=6, symbol="circle"),
    "infeasible": dict(color="#d62728", size=7, symbol="x"),
    "early_stopped": dict(color="rgba(150,150,150,0.6)", size=6, symbol="triangle-down-open"),
}
LABELS = {"front": "Pareto front", "within_noise": "dominated within noise", "dominated": "dominated",
          "infeasible": "infeasible", "early_stopped": "early-stopped", "duplicate": "duplicate",
          "incomplete": "incomplete"}
#: Per-layer fields of a resolved CompressionConfig (user attr "compression"), with display names.
LAYER_FIELDS = {"heads": "heads", "neurons": "FFN neurons", "timesteps": "timesteps", "weight_bits": "weight bits"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
#: Heatmap cells carry their value as text up to this many rows (beyond, it would not be legible).
MAX_LABELLED_ROWS = 40
#: Name of the annotations labelling dropdown menus (dropped from static images with the menus).
MENU_LABEL = "menu-label"


def fmt(value: Any) -> str:
    """Short human form of a stored value (4 significant digits for floats)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_hover(t: FrozenTrial, objectives: Sequence[Objective], status: str) -> str:
    """Hover text: trial number, status, objective values (metric with its CI) and per-layer config."""
    record = TrialRecord.of(t)
    lines = [f"<b>trial {t.number}</b> ({LABELS.get(status, status)})"]
    for o, v in zip(objectives, t.values or []):
        ci = record.metric_ci if o.name == METRIC else None
        lines.append(f"{o.shown}: {fmt(v)}" + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""))
    comp = record.compression or {}
    for key, label in LAYER_FIELDS.items():
        if comp.get(key) is not None:
            lines.append(f"{label}: " + " ".join(f"{v:g}" for v in comp[key]))
    if comp.get("recovery_steps"):
        lines.append(f"recovery steps: {comp['recovery_steps']}")
    if record.fidelity not in (None, 1, 1.0):
        lines.append(f"fidelity: {fmt(record.fidelity)}")
    return "<br>".join(lines)


def _default_axes(objectives: Sequence[Objective]) -> tuple[int, int]:
    """x: the first cost (operations if searched), y: the metric (or the first objective)."""
    names = [o.name for o in objectives]
    y = names.index(METRIC) if METRIC in names else 0
    costs = [i for i in range(len(names)) if i != y]
    x = names.index("sops") if "sops" in names else (costs[0] if costs else y)
    return x, y


@dataclass
class ReferenceTrace:
    """Points that are not trials (the ANN references): values by objective name, one list per
    objective it has a value for; on an axis of another objective its points are left out."""

    name: str
    values: dict[str, list[float]]
    style: dict[str, Any]       # go.Scatter arguments: mode, marker, line
    hover: list[str]


def scatter_with_axis_menus(groups: Sequence[tuple[str, list[FrozenTrial], dict, list[str]]],
                            objectives: Sequence[Objective], title: str,
                            references: Sequence[ReferenceTrace] = ()) -> go.Figure:
    """Scatter of trial groups, and any ``references``, with x / y dropdowns over the objectives.

    ``groups`` holds (legend name, trials, marker style, hover texts); see ``menu_scatter``.
    """
    axes = [(o.shown, f"{o.shown} ({o.direction})") for o in objectives]
    lines = [(ref, [ref.values.get(o.name, [None] * len(ref.hover)) for o in objectives]) for ref in references]
    return menu_scatter([(name, [t.number for t in trials], [list(t.values) for t in trials], marker, hover)
                         for name, trials, marker, hover in groups], axes, title, _default_axes(objectives), lines)


def menu_scatter(groups: Sequence[tuple[str, list[int], list[list[float]], dict, list[str]]],
                 axes: Sequence[tuple[str, str]], title: str, default: tuple[int, int],
                 references: Sequence[tuple[ReferenceTrace, list[list[float | None]]]] = ()) -> go.Figure:
    """Scatter of point groups, and any reference traces, with x / y dropdowns over the columns of
    their rows.

    ``groups`` holds (legend name, trial numbers, one row of values per trial, marker style, hover
    texts); ``axes`` a (menu label, axis title) per column; ``default`` the (x, y) columns shown
    first; ``references`` a (trace, one list of values per column) each. Each dropdown button
    re-assigns the x (or y) data of every trace, so any pair of columns can be viewed.
    """
    xi, yi = default
    fig = go.Figure()
    columns = []  # per trace: one array of values per column
    for name, numbers, rows, marker, hover in groups:
        cols = [[row[k] for row in rows] for k in range(len(axes))]
        columns.append(cols)
        fig.add_trace(go.Scatter(
            x=cols[xi], y=cols[yi], mode="markers", name=name, marker=marker, text=hover,
            customdata=list(numbers), hovertemplate="%{text}<extra></extra>"))
    for ref, cols in references:
        columns.append(cols)
        fig.add_trace(go.Scatter(x=cols[xi], y=cols[yi], name=ref.name, text=ref.hover,
                                 hovertemplate="%{text}<extra></extra>", **ref.style))

    def buttons(axis: str) -> list[dict]:
        return [dict(label=label, method="update",
                     args=[{axis: [cols[k] for cols in columns]}, {f"{axis}axis.title.text": axis_title}])
                for k, (label, axis_title) in enumerate(axes)]

    fig.update_layout(
        title=title, height=560, hovermode="closest", legend=dict(orientation="h", y=-0.15),
        xaxis_title=axes[xi][1], yaxis_title=axes[yi][1], margin=dict(t=110),
        updatemenus=[
            dict(buttons=buttons("x"), active=xi, direction="down", x=0.62, y=1.2, xanchor="left", yanchor="top"),
            dict(buttons=buttons("y"), active=yi, direction="down", x=0.88, y=1.2, xanchor="left", yanchor="top"),
        ],
        annotations=[
            dict(text="x axis", name=MENU_LABEL, x=0.61, y=1.18, xref="paper", yref="paper", showarrow=False,
                 xanchor="right"),
            dict(text="y axis", name=MENU_LABEL, x=0.87, y=1.18, xref="paper", yref="paper", showarrow=False,
                 xanchor="right"),
        ])
    return fig


def hypervolume_figure(history: Sequence[tuple[int, float]], reference_text: str) -> go.Figure:
    fig = go.Figure(go.Scatter(
        x=[n for n, _ in history], y=[h for _, h in history], mode="lines+markers", line_shape="hv",
        marker=dict(size=4), hovertemplate="after trial %{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(title="Hypervolume history (normalised: 0 = nothing, 1 = ideal point reached)",
                      xaxis_title="trial number", yaxis_title="hypervolume", height=380,
                      annotations=[dict(text=reference_text, x=0, y=1.02, xref="paper", yref="paper",
                                        showarrow=False, xanchor="left", yanchor="bottom", font=dict(size=10))])
    return fig


def layer_config_figure(trials: Sequence[FrozenTrial], objectives: Sequence[Objective]) -> go.Figure | None:
    """Heatmaps (trial x layer) of each per-layer field for the given (Pareto) trials, best metric on top."""
    configs = {t.number: TrialRecord.of(t).compression for t in trials}
    trials = [t for t in trials if configs[t.number]]
    if not trials:
        return None
    names = [o.name for o in objectives]
    if METRIC in names:
        k = names.index(METRIC)
        trials = sorted(trials, key=lambda t: t.values[k])
    fields = [f for f in LAYER_FIELDS if configs[trials[0].number].get(f) is not None]
    fig = make_subplots(rows=1, cols=len(fields), subplot_titles=[LAYER_FIELDS[f] for f in fields],
                        shared_yaxes=True, horizontal_spacing=0.03)
    rows = [f"trial {t.number}" + (f" ({t.values[names.index(METRIC)]:.3f})" if METRIC in names else "")
            for t in trials]
    for c, f in enumerate(fields, start=1):
        z = np.array([configs[t.number][f] for t in trials], dtype=float)
        fig.add_trace(go.Heatmap(
            z=z, x=[f"L{l}" for l in range(z.shape[1])], y=rows, colorscale="Viridis", showscale=False,
            texttemplate="%{z}" if len(rows) <= MAX_LABELLED_ROWS else None,
            hovertemplate=f"%{{y}}<br>layer %{{x}}<br>{LAYER_FIELDS[f]}: %{{z:g}}<extra></extra>"),
            row=1, col=c)
    fig.update_layout(title="Per-layer configuration of the Pareto trials (row label: trial, metric)",
                      height=160 + min(22 * len(trials), 1100))
    return fig


def layer_ops_series(report: dict[str, Any]) -> dict[str, list[float]]:
    """Per-layer synaptic operations of an OpReport dict by bucket (query, key, ..., residual)."""
    per_layer = report.get("sops_per_layer") or []
    buckets = list(dict.fromkeys(k for layer in per_layer for k in layer))
    return {k: [float(layer.get(k, 0.0)) for layer in per_layer] for k in buckets}


OPS_TITLE = "Synaptic operations per layer (per example)"


def layer_ops_figure(trials: Sequence[FrozenTrial], div_id: str) -> tuple[go.Figure, str] | None:
    """Stacked per-layer operations of one trial, plus the HTML <select> and script that switch trials.

    The first trial in ``trials`` is shown first; the data of all of them is embedded as JSON.
    """
    data = {t.number: layer_ops_series(TrialRecord.of(t).report or {}) for t in trials}
    data = {n: s for n, s in data.items() if s}
    if not data:
        return None
    first = next(iter(data.values()))
    series = list(first)
    fig = go.Figure([go.Bar(x=[f"L{l}" for l in range(len(first[s]))], y=first[s], name=s) for s in series])
    fig.update_layout(barmode="stack", title=f"{OPS_TITLE}, trial {next(iter(data))}",
                      xaxis_title="layer", yaxis_title="SOPs per example", height=420)
    options = "".join(f'<option value="{n}">trial {n}</option>' for n in data)
    control = (
        f'<label>trial <select id="{div_id}-select">{options}</select></label>\n'
        f"<script>(function(){{\n"
        f"const data = {json.dumps({str(n): s for n, s in data.items()})};\n"
        f"const series = {json.dumps(series)};\n"
        f'document.getElementById("{div_id}-select").addEventListener("change", function(e){{\n'
        f"  const d = data[e.target.value];\n"
        f'  Plotly.restyle("{div_id}", {{y: series.map(s => d[s] || [])}});\n'
        f'  Plotly.relayout("{div_id}", {{"title.text": "{OPS_TITLE}, trial " + e.target.value}});\n'
        f"}});\n}})();</script>")
    return fig, control


def importance_figure(importances: dict[str, dict[str, float]], top: int = 20) -> go.Figure:
    """Grouped horizontal bars: parameter importance per objective (params ordered by their mean)."""
    params = sorted({p for imp in importances.values() for p in imp},
                    key=lambda p: np.mean([imp.get(p, 0.0) for imp in importances.values()]))[-top:]
    fig = go.Figure([go.Bar(y=params, x=[imp.get(p, 0.0) for p in params], name=obj, orientation="h")
                     for obj, imp in importances.items()])
    fig.update_yaxes(automargin=True)
    fig.update_layout(barmode="group", title="Parameter importance per objective (PED-ANOVA, normalised)",
                      xaxis_title="importance", height=200 + 24 * len(params) * max(1, len(importances)) // 2)
    return fig


def figure_div(fig: go.Figure, div_id: str) -> str:
    """The figure as an HTML fragment that relies on the page's inline plotly.js."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


SORT_SCRIPT = """<script>
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      const body = table.tBodies[0];
      const asc = th.dataset.order !== "asc";
      table.querySelectorAll("th").forEach(h => delete h.dataset.order);
      th.dataset.order = asc ? "asc" : "desc";
      const key = r => r.cells[col].dataset.v ?? r.cells[col].textContent;
      const rows = Array.from(body.rows).sort(function (a, b) {
        const x = key(a), y = key(b);
        if (x === "" || y === "") return (x === "") - (y === "");  // empty cells last either way
        const nx = Number(x), ny = Number(y);
        const c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return asc ? c : -c;
      });
      rows.forEach(r => body.appendChild(r));
    });
  });
});
</script>"""

STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; cursor: pointer; position: sticky; top: 0; }
th[data-order="asc"]::after { content: " \\25B2"; } th[data-order="desc"]::after { content: " \\25BC"; }
td.l { text-align: left; } .scroll { max-height: 640px; overflow: auto; }
.note { color: #666; font-size: 0.9em; } dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dt { font-weight: 600; } dd { margin: 0; }
tr.front td { background: #eaf2fb; }
</style>"""


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], row_classes: Sequence[str] = ()) -> str:
    """A sortable table; each cell keeps its raw value in data-v so numbers sort numerically."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes else ""
        cells = []
        for v in row:
            raw = "" if v is None or (isinstance(v, float) and np.isnan(v)) else v
            align = "" if isinstance(raw, (int, float)) else ' class="l"'
            cells.append(f'<td{align} data-v="{html.escape(str(raw))}">{html.escape(fmt(raw))}</td>')
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def page(title: str, sections: Sequence[str]) -> str:
    """A complete offline HTML page: inline plotly.js, style, sections, table sorter."""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", STYLE,
        f"<script>{plotly.offline.get_plotlyjs()}</script>", "</head><body>",
        *sections, SORT_SCRIPT, "</body></html>"])
