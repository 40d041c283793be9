"""Fronts of several studies on one page: each study relative to its own dense student when the
tasks differ, and the cheapest config within a drop of it. Hand-made studies in the stored format,
so every expected ratio below is worked out by hand."""
from __future__ import annotations

import html
import json
import re

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from spikeprune.cli import main
from spikeprune.errors import SpikepruneError
from spikeprune.results import cheapest_within, compare_fronts
from spikeprune.search import default_storage, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC_NAME = {"sst2": "accuracy", "cola": "mcc"}


def trial(task: str, number: int, metric: float, sops: float, energy: float, sum_t: float, size: float,
          objectives: list[str], dense: bool = False):
    """A trial as search stores it: the task's metric, an operation report and the seed flag."""
    report = {"sops": sops, "energy_uj": energy, "sum_t": sum_t, "max_t": sum_t / 6, "size_mb": size, "examples": 100}
    values = {"metric": metric, "sops": sops, "energy_uj": energy}
    return create_trial(
        values=[values[o] for o in objectives], params={"k": number}, distributions={"k": IntDistribution(0, 99)},
        user_attrs={"compression": {"heads": [12] * 6, "neurons": [1536] * 6, "timesteps": [16] * 6,
                                    "weight_bits": [32] * 6, "recovery_steps": 0},
                    "metrics": {METRIC_NAME[task]: metric, "metric": metric}, "report": report, "fidelity": 1.0,
                    **({"seeded": True, "baseline": True} if dense else {})})


def task_study(task: str, objectives: list[str], rows: list[tuple], storage=None, name: str | None = None) -> optuna.Study:
    """A study of ``task`` whose first row is the dense student."""
    directions = ["maximize" if o == "metric" else "minimize" for o in objectives]
    study = optuna.create_study(directions=directions, study_name=name or f"s-{task}", storage=storage)
    spec = [{"name": o, "direction": d} for o, d in zip(objectives, directions)]
    study.set_user_attr("spikeprune", {"task": task, "objectives": spec, "energy": "int45nm", "prepared": "/nowhere",
                                       "space": {"objectives": spec}})
    for i, row in enumerate(rows):
        study.add_trial(trial(task, i, *row, objectives=objectives, dense=i == 0))
    return study


# metric, SOPs, energy µJ, Σ T, size MB
SST2 = [(0.90, 1000.0, 200.0, 96, 60.0),   # 0 dense
        (0.895, 400.0, 90.0, 48, 30.0),    # 1 within 1 point, the fewest SOPs of those
        (0.85, 100.0, 20.0, 24, 20.0),     # 2 five points below
        (0.891, 450.0, 100.0, 60, 40.0)]   # 3 within 1 point, more SOPs than 1
COLA = [(0.40, 500.0, 100.0, 96, 60.0),    # 0 dense
        (0.35, 100.0, 25.0, 48, 30.0),     # 1 five points below
        (0.395, 400.0, 80.0, 96, 45.0),    # 2 within 1 point: 0.8 of the SOPs
        (0.41, 450.0, 90.0, 96, 50.0)]     # 3 above the dense student, more SOPs than 2


def studies(run_dir=None) -> list[optuna.Study]:
    """The SST-2 study (objectives metric, SOPs) and the CoLA one (metric, energy), in memory or as
    journals under ``run_dir`` where the command finds them."""
    def storage(name: str):
        return None if run_dir is None else open_storage(default_storage(run_dir, name))

    return [task_study("sst2", ["metric", "sops"], SST2, storage("s-sst2")),
            task_study("cola", ["metric", "energy_uj"], COLA, storage("s-cola"))]


def test_cheapest_within_one_point_by_hand():
    sst2, cola = studies()
    dense, best = cheapest_within(sst2)
    assert (dense.number, dense.delta, dense.ratios["sops"]) == (0, 0.0, 1.0)
    assert best.number == 1 and best.metric == 0.895
    assert best.delta == pytest.approx(-0.005)
    assert best.ratios == pytest.approx({"sops": 0.4, "energy_uj": 0.45, "sum_t": 0.5, "size_mb": 0.5})
    assert best.costs == {"sops": 400.0, "energy_uj": 90.0, "sum_t": 48, "size_mb": 30.0}
    _, best = cheapest_within(cola)
    assert best.number == 2 and best.ratios == pytest.approx({"sops": 0.8, "energy_uj": 0.8, "sum_t": 1.0, "size_mb": 0.75})
    _, best = cheapest_within(cola, max_drop=0.06)           # five points allowed: trial 1 qualifies
    assert best.number == 1 and best.ratios["sops"] == pytest.approx(0.2)
    _, best = cheapest_within(cola, max_drop=0.001)          # only trial 3 (above dense) and dense remain
    assert best.number == 3 and best.ratios["sops"] == pytest.approx(0.9)


def test_nothing_cheaper_within_the_drop_gives_the_dense_student():
    study = task_study("sst2", ["metric", "sops"], [SST2[0], SST2[2]])
    dense, best = cheapest_within(study)
    assert best == dense and best.ratios["sops"] == 1.0


def test_a_study_without_dense_student_is_refused(tmp_path):
    study = task_study("sst2", ["metric", "sops"], [])
    with pytest.raises(SpikepruneError, match="no finished dense baseline trial to normalise by"):
        cheapest_within(study)


def plotted(text: str) -> dict[str, dict]:
    """The traces of the page's "fronts" figure by name, from the embedded plotly call."""
    call = re.search(r'Plotly\.newPlot\(\s*"fronts",\s*(\[.*?\]),\s*\{', text, flags=re.S)
    return {t["name"]: t for t in json.loads(call.group(1))}


def test_tasks_are_normalised_to_their_dense_students(tmp_path):
    out = compare_fronts(studies(), tmp_path / "tasks.html", labels=["SST-2", "CoLA"])
    text = out.read_text()
    assert "each relative to its dense student" in text
    traces = plotted(text)
    assert list(traces) == ["SST-2", "CoLA", "dense student"]
    # y: points from the dense student; x: SOPs / dense (the default axis); front = trials 0, 1, 2 of SST-2
    sst2 = traces["SST-2"]
    assert sst2["customdata"] == [0, 1, 2]
    assert sst2["y"] == pytest.approx([0.0, -0.5, -5.0]) and sst2["x"] == pytest.approx([1.0, 0.4, 0.1])
    # CoLA's front in (metric, energy): 1, 2, 3; the dense student is beaten by trial 3
    cola = traces["CoLA"]
    assert sorted(cola["customdata"]) == [1, 2, 3]
    by_trial = dict(zip(cola["customdata"], zip(cola["x"], cola["y"])))
    assert by_trial[2] == pytest.approx((0.8, -0.5)) and by_trial[3] == pytest.approx((0.9, 1.0))
    assert traces["dense student"]["x"] == [1.0] and traces["dense student"]["y"] == [0.0]
    page = html.unescape(text)
    assert "Matthews correlation -0.50 points" in page and "accuracy -0.50 points" in page
    # the table: cheapest within 1 point of each dense student, with its ratios
    assert re.search(r'data-v="SST-2">.*?data-v="1">1</td><td data-v="-0.5">.*?data-v="0.4">', text, flags=re.S)
    assert re.search(r'data-v="CoLA">.*?data-v="2">2</td><td data-v="-0.5">.*?data-v="0.8">', text, flags=re.S)


def test_one_task_is_compared_as_measured_unless_asked(tmp_path):
    a, b = task_study("sst2", ["metric", "sops"], SST2), task_study("sst2", ["metric", "sops"], SST2[:2])
    text = compare_fronts([a, b], tmp_path / "same.html", labels=["a", "b"]).read_text()
    assert "each relative to its dense student" not in text
    assert plotted(text)["a"]["x"] == [1000.0, 400.0, 100.0]
    text = compare_fronts([a, b], tmp_path / "rel.html", labels=["a", "b"], relative_to_dense=True).read_text()
    assert plotted(text)["b"]["x"] == pytest.approx([1.0, 0.4])


def test_compare_command_writes_the_relative_page(tmp_path, capsys):
    studies(tmp_path)
    out = tmp_path / "cmp.html"
    assert main(["compare", "s-sst2", "s-cola", "--run-dir", str(tmp_path), "--out", str(out), "--max-drop", "0.06"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    text = out.read_text()
    assert "at most 6 point(s) below" in text
    assert re.search(r'data-v="s-cola">.*?data-v="1">1</td><td data-v="-5.0">.*?data-v="0.2">', text, flags=re.S)


def test_one_task_with_other_objectives_needs_relative(tmp_path):
    a = task_study("sst2", ["metric", "sops"], SST2)
    b = task_study("sst2", ["metric", "energy_uj"], SST2, name="b")
    with pytest.raises(SpikepruneError, match=r"same objectives, or each relative to its dense student \(--relative\)"):
        compare_fronts([a, b], tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
    text = compare_fronts([a, b], tmp_path / "y.html", relative_to_dense=True).read_text()
    assert plotted(text)["b"]["x"] == pytest.approx([1.0, 0.4, 0.1])   # front (metric, energy): 0, 1, 2 at their SOPs
