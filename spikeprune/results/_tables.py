"""Trials as a pandas table (CSV / Parquet / JSON).

One row per trial. Nested user attributes are flattened to dotted columns (``compression.heads.0``,
``report.sops``, ``metrics.accuracy``, ``timing.total_s``, ``param.heads_l0``, ``constraint.sops_max``,
``ann.teacher.energy_uj``) so every format holds plain scalars; ``energy_x.teacher``,
``energy_x.teacher_int8`` and ``energy_x.twin`` give the trial's energy as a multiple of the fp32
ANN teacher's, the int8 teacher's and its integer twin's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from spikeprune.errors import SpikepruneError
from spikeprune.pareto import is_feasible
from spikeprune.records import StudyRecord, TrialRecord

from spikeprune.results._analysis import Analysis, analyse_study

FORMATS = ("csv", "parquet", "json")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Dicts become ``prefix.key`` columns, lists ``prefix.i``; scalars are kept as they are."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}.{i}", v, out)
    else:
        out[prefix] = value


def constraint_names(record: StudyRecord, count: int) -> list[str]:
    """Names of the stored constraint values: the space's constraint keys when they line up."""
    names = list(record.space.get("constraints") or {})
    return names if len(names) == count else [str(i) for i in range(count)]


def analysis_frame(analysis: Analysis) -> pd.DataFrame:
    """The trials table of an already analysed study (see ``trials_frame``)."""
    status = analysis.split.status()
    front = {t.number for t in analysis.split.front}
    rows = []
    for t in analysis.trials:
        row: dict[str, Any] = {
            "number": t.number, "state": t.state.name, "status": status[t.number],
            "feasible": is_feasible(t), "pareto": t.number in front,
        }
        for k, o in enumerate(analysis.objectives):
            row[o.name] = t.values[k] if t.values is not None else np.nan
        r = TrialRecord.of(t)
        ci = r.metric_ci
        row["metric_ci.lo"], row["metric_ci.hi"] = (ci[0], ci[1]) if ci else (np.nan, np.nan)
        row["fidelity"] = np.nan if r.fidelity is None else r.fidelity
        row["seeded"] = r.seeded
        row["early_stopped"] = r.early_stopped
        row["node"] = r.node
        row["worker"] = r.worker
        row["device"] = r.device
        row["error"] = r.error
        row["duplicate_of"] = r.duplicate_of
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else np.nan
        constraints = t.constraints
        for name, v in zip(constraint_names(analysis.record, len(constraints)), constraints.values()):
            row[f"constraint.{name}"] = v
        for group in ("compression", "metrics", "report", "ann", "timing"):
            if isinstance(getattr(r, group), dict):
                _flatten(group, getattr(r, group), row)
        for key, ratio in (r.ann_ratios or {}).items():   # the energy as a multiple of each ANN's
            row[f"energy_x.{key}"] = ratio
        for name, v in t.params.items():
            row[f"param.{name}"] = v
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in ("datetime_start", "datetime_complete"):
        if col in frame:
            frame[col] = pd.to_datetime(frame[col])
    return frame


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, status (front / within_noise / dominated / infeasible /
    early_stopped / incomplete), feasibility, Pareto flag, values by objective name, metric CI,
    fidelity, node, worker and device, timing, constraints, the flattened per-layer config, metrics, op counts,
    ANN references and the energy's ratios to them, and Optuna params."""
    return analysis_frame(analyse_study(study))


def _format(path: Path, fmt: str | None) -> str:
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise SpikepruneError(f"cannot tell the table format of {path}; use a .csv, .parquet or .json file or pass fmt")
    return fmt


def write_trials(study: optuna.Study, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``trials_frame(study)`` as csv, parquet or json (records); the format defaults to the suffix."""
    path = Path(path)
    fmt = _format(path, fmt)
    frame = trials_frame(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", date_format="iso", indent=1)
    return path


def read_trials(path: str | Path, fmt: str | None = None) -> pd.DataFrame:
    """Read a table that ``write_trials`` (``spikeprune trials --out``) wrote, dates parsed: the
    trials of a study as a frame without opening its storage."""
    path = Path(path)
    fmt = _format(path, fmt)
    if fmt == "csv":
        frame = pd.read_csv(path)
    elif fmt == "parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_json(path, orient="records", dtype=False)
    for col in ("datetime_start", "datetime_complete"):
        if col in frame:
            frame[col] = pd.to_datetime(frame[col], format="ISO8601")
    return frame
