"""Pareto split, hypervolume, trial tables, report file and export selection on synthetic studies.

The studies are in-memory Optuna studies filled with hand-made trials in the stored format (records.StudyRecord, records.TrialRecord),
so every expected number below is computed by hand.
"""
from __future__ import annotations

import itertools
import math
import re

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from spikeprune.errors import SpikepruneError
from spikeprune.data._metrics import bootstrap_ci
from spikeprune.results._export import compare_values, select_trials, trial_dir
from spikeprune.pareto import (NoiseRule, front_hypervolume, hypervolume, hypervolume_history, split_trials,
                               study_objectives, study_reference)
from spikeprune.results import analyse_study
from spikeprune.search import load_study
from spikeprune.results._report import write_report
from spikeprune.results._compare import compare_fronts
from spikeprune.results._tables import read_trials, trials_frame, write_trials
from spikeprune.results._report import objective_importances
from spikeprune.objectives import Objective, parse_reference

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = [{"name": "metric", "direction": "maximize"}, {"name": "sops", "direction": "minimize"}]
DISTRIBUTIONS = {"heads_l0": IntDistribution(1, 4), "heads_l1": IntDistribution(1, 4),
                 "timesteps": IntDistribution(1, 4), "weight_bits": CategoricalDistribution([1.58, 4.0, 8.0, 32.0])}


def fake_trial(metric: float, sops: float, *, state: TrialState = TrialState.COMPLETE,
               constraints: list[float] | None = None, ci: tuple[float, float] | None = None,
               fidelity: float = 1.0, early_stopped: bool = False, seeded: bool = False,
               heads: tuple[int, int] = (4, 4), timesteps: int = 4, bits: float = 32.0):
    """A trial as search writes it: values, params, the records.TrialRecord user attrs, Optuna's constraint list."""
    params = {"heads_l0": heads[0], "heads_l1": heads[1], "timesteps": timesteps, "weight_bits": bits}
    attrs = {
        "compression": {"heads": list(heads), "neurons": [16, 16], "timesteps": [timesteps] * 2,
                        "weight_bits": [bits] * 2, "recovery_steps": 0},
        "metrics": {"accuracy": metric, "metric": metric},
        "report": {"sops": sops, "size_mb": 1.0, "examples": 872 if fidelity == 1 else 100,
                   "sops_per_layer": [{"query": sops * 0.3, "attention": sops * 0.2},
                                      {"query": sops * 0.3, "attention": sops * 0.2}]},
        "timing": {"total_s": 1.5}, "worker": "host:1", "fidelity": fidelity, "seeded": seeded,
    }
    if ci is not None:
        attrs["metric_ci"] = list(ci)
    if early_stopped:
        attrs["early_stopped"] = True
    done = state == TrialState.COMPLETE
    return create_trial(
        state=state, values=[metric, sops] if done else None, params=params, distributions=DISTRIBUTIONS,
        user_attrs=attrs if done else {"error": "boom", "worker": "host:1"},
        system_attrs={"constraints": constraints} if constraints is not None else None)


def make_study(trials, objectives=OBJECTIVES, reference=True) -> optuna.Study:
    study = optuna.create_study(directions=[o["direction"] for o in objectives], study_name="toy")
    study.set_user_attr("spikeprune", {
        "task": "sst2", "objectives": objectives, "energy": "float45nm", "prepared": "/nowhere",
        "space": {"objectives": objectives, "constraints": {"metric_min": 0.5}},
        **({"reference": {"metric": 0.9, "sops": 1000.0}} if reference else {})})
    for t in trials:
        study.add_trial(t)
    return study


def toy_trials():
    """The toy study. Reference (dense baseline, trial 0): metric 0.9, sops 1000 -> worst counted
    metric 0.81, sops 1100; normalised g = ((1 - metric)/0.19, sops/1100)."""
    return [
        fake_trial(0.90, 1000, constraints=[-0.4], seeded=True, ci=(0.88, 0.92)),  # 0 front (baseline)
        fake_trial(0.88, 500, constraints=[-0.38], ci=(0.86, 0.90), heads=(2, 3)),  # 1 front
        fake_trial(0.87, 520, constraints=[-0.37], ci=(0.85, 0.89)),  # 2 beaten by 1 within the noise
        fake_trial(0.80, 900, constraints=[-0.3]),                    # 3 dominated
        fake_trial(0.85, 200, constraints=[-0.35], timesteps=2),      # 4 front
        fake_trial(0.95, 100, constraints=[0.5]),                     # 5 infeasible (would dominate)
        fake_trial(0.99, 50, constraints=[-0.49], early_stopped=True, fidelity=0.25),  # 6 early-stopped
        fake_trial(0, 0, state=TrialState.FAIL),                      # 7 failed
        fake_trial(0.70, 100, constraints=[-0.2], bits=1.58),         # 8 front, but below the reference
    ]


# ----------------------------------------------------------------------------- hypervolume

def test_hypervolume_2d_hand_value():
    # boxes to (1, 1): 0.8*0.4 + 0.5*(0.6-0.3); the dominated point and the one outside add nothing
    assert hypervolume([(0.2, 0.6), (0.5, 0.3), (0.6, 0.7), (1.2, 0.1)], (1, 1)) == pytest.approx(0.47)
    assert hypervolume([], (1, 1)) == 0.0
    assert hypervolume([(1.0, 0.5)], (1, 1)) == 0.0  # on the reference boundary: no volume


def test_hypervolume_3d_hand_values():
    # three unit-square slabs of thickness 0.5: 3*0.5 - 3*0.25 + 0.125 (inclusion-exclusion by hand)
    assert hypervolume([(0, 0, 0.5), (0, 0.5, 0), (0.5, 0, 0)], (1, 1, 1)) == pytest.approx(0.875)
    # boxes 3*2*1 = 6 and 2*3*2 = 12, overlapping in 2*2*1 = 4
    assert hypervolume([(1, 2, 3), (2, 1, 2)], (4, 4, 4)) == pytest.approx(14.0)
    assert hypervolume([(1, 2, 3), (2, 1, 2), (2, 2, 3), (1, 2, 3)], (4, 4, 4)) == pytest.approx(14.0)


@pytest.mark.parametrize("m", [3, 4, 5])
def test_hypervolume_matches_counting_unit_cells(m):
    """Integer points: the dominated volume is the number of unit cells some point dominates."""
    rng = np.random.default_rng(m)
    for _ in range(10):
        points = rng.integers(0, 5, size=(int(rng.integers(1, 9)), m))
        cells = sum(1 for c in itertools.product(range(5), repeat=m) if np.any(np.all(points <= c, axis=1)))
        assert hypervolume(points, [5] * m) == pytest.approx(cells)


def test_reference_from_baseline_and_normalisation():
    objectives = [Objective("metric", "maximize"), Objective("sops", "minimize"), Objective("size_mb", "minimize")]
    ref = study_reference(objectives, {"metric": 0.9, "sops": 1000, "size_mb": 10})
    assert ref.worst == pytest.approx((0.81, 1100, 11))
    assert ref.ideal == (1.0, 0.0, 0.0)
    assert ref.normalise([0.81, 1100, 11]) == pytest.approx([1, 1, 1])
    assert ref.normalise([1.0, 0, 0]) == pytest.approx([0, 0, 0])
    assert study_reference(objectives, {"metric": 0.9, "sops": 1000, "size_mb": 10},
                           given={"metric": 0.5}).worst[0] == 0.5
    # no baseline value and no trial to derive one from: no reference point (not an error)
    assert study_reference(objectives, {"metric": 0.9, "sops": 1000}) is None


@pytest.mark.parametrize("baseline, worst", [(0.0, -0.1), (-0.24, -0.24 - 0.1 * 1.24), (-1.0, -1.2)])
def test_reference_for_a_metric_at_or_below_zero(baseline, worst):
    """CoLA's Matthews correlation of a one-class student (0.0), STS-B's Pearson on a small dev subset."""
    objectives = [Objective("metric", "maximize"), Objective("sops", "minimize")]
    ref = study_reference(objectives, {"metric": baseline, "sops": 1000})
    assert ref.worst == pytest.approx((worst, 1100))
    assert 0 < ref.normalise([baseline, 1000])[0] < 1  # the baseline itself counts
    assert front_hypervolume([fake_trial(baseline, 1000)], ref) > 0


def test_reference_from_the_trials_without_a_baseline():
    objectives = [Objective("metric", "maximize"), Objective("sops", "minimize")]
    trials = [fake_trial(-0.3, 500), fake_trial(0.2, 800)]
    ref = study_reference(objectives, None, trials)
    assert ref.worst == pytest.approx((-0.3 - 0.1 * 1.3, 880))
    assert study_reference(objectives, {"metric": 0.5, "sops": 0.0}, trials).worst == pytest.approx((0.45, 880))


@pytest.mark.parametrize("raw, message", [({"metric": 1.0}, "below 1"), ({"sops": -5}, "above 0"),
                                          ({"metric": "low"}, "must be a number"), ({"metric": True}, "number"),
                                          ({"energy_uj": 3}, "not an objective"), (["metric"], "NAME=VALUE"),
                                          ("metric=0", "must map")])
def test_given_references_are_checked(raw, message):
    objectives = [Objective("metric", "maximize"), Objective("sops", "minimize")]
    with pytest.raises(SpikepruneError, match=message):
        parse_reference(raw, objectives, "--reference")
    assert parse_reference(["metric=-0.5", "sops=1e6"], objectives, "--reference") == {"metric": -0.5, "sops": 1e6}


# ----------------------------------------------------------------------------- pareto split

def test_split_front_dominated_noise_infeasible_early_stopped():
    study = make_study(toy_trials())
    split = analyse_study(study).split
    numbers = {name: [t.number for t in getattr(split, name)] for name in
               ("front", "within_noise", "dominated", "infeasible", "early_stopped", "incomplete")}
    assert numbers == {"front": [0, 1, 4, 8], "within_noise": [2], "dominated": [3], "infeasible": [5],
                       "early_stopped": [6], "incomplete": [7]}


def test_noise_rule_tolerance_and_missing_intervals():
    trials = analyse_study(make_study(toy_trials())).trials
    objectives = study_objectives(make_study([]))
    # 520 vs 500 SOPs is 4% apart: within 5% but not within 1%
    assert [t.number for t in split_trials(trials, objectives, NoiseRule(rel_tol=0.01)).dominated] == [2, 3]
    assert [t.number for t in split_trials(trials, objectives, None).within_noise] == []
    # disjoint intervals: a real domination
    far = [fake_trial(0.90, 500, ci=(0.89, 0.91)), fake_trial(0.85, 510, ci=(0.84, 0.86))]
    assert [t.number for t in split_trials(analyse_study(make_study(far)).trials, objectives).dominated] == [1]


def test_duplicates_are_kept_off_the_front():
    study = make_study([fake_trial(0.9, 100), fake_trial(0.9, 100), fake_trial(0.8, 50)])
    study.add_trial(create_trial(values=[0.9, 100], params={}, distributions={},
                                 user_attrs={"duplicate_of": 0, "compression": {}}))
    split = analyse_study(study).split
    assert [t.number for t in split.front] == [0, 1, 2] and [t.number for t in split.duplicate] == [3]
    assert trials_frame(study)["duplicate_of"].tolist()[3] == 0


def test_new_style_constraint_keys_count_too():
    study = make_study([])
    t = create_trial(values=[0.9, 100], params={}, distributions={}, constraints={"sops_max": 0.2})
    study.add_trial(t)
    assert [t.number for t in analyse_study(study).split.infeasible] == [0]


def test_study_hypervolume_and_history_hand_values():
    analysis = analyse_study(make_study(toy_trials()))
    # front points inside the box, normalised: (10/19, 10/11), (12/19, 5/11), (15/19, 2/11)
    # sweep over metric: 9/19*1/11 + 7/19*5/11 + 4/19*3/11 = 56/209
    assert analysis.hypervolume == pytest.approx(56 / 209)
    assert [n for n, _ in analysis.history] == list(range(9))
    assert [h * 209 for _, h in analysis.history] == pytest.approx([9, 44, 44, 44, 56, 56, 56, 56, 56])
    assert hypervolume_history([], analysis.reference) == []


def test_baseline_from_seeded_trial_when_no_reference_attr():
    analysis = analyse_study(make_study(toy_trials(), reference=False))
    assert analysis.baseline.number == 0
    assert analysis.hypervolume == pytest.approx(56 / 209)
    no_baseline = analyse_study(make_study([fake_trial(0.8, 10)], reference=False))
    assert no_baseline.reference.worst == pytest.approx((0.72, 11))  # from the trials
    assert analyse_study(make_study([], reference=False)).hypervolume is None


def test_reads_a_journal_storage(tmp_path):
    """Through a journal file (JSON round trip of every attribute), as search stores studies."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="toy", storage=storage)
    study.set_user_attr("spikeprune", make_study([]).user_attrs["spikeprune"])
    for t in toy_trials():
        study.add_trial(t)
    loaded = load_study("toy", JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))))
    analysis = analyse_study(loaded)
    assert [t.number for t in analysis.split.front] == [0, 1, 4, 8]
    assert analysis.hypervolume == pytest.approx(56 / 209)
    with pytest.raises(SpikepruneError, match="no study named 'nope'.*toy"):
        load_study("nope", storage)


def test_study_without_spikeprune_attrs_is_refused():
    with pytest.raises(SpikepruneError, match="no 'spikeprune' objectives"):
        study_objectives(optuna.create_study(directions=["maximize", "minimize"]))


def test_bootstrap_ci_brackets_the_metric_and_is_reproducible():
    labels = np.array([0, 1] * 100)
    perfect = bootstrap_ci("sst2", labels, labels, n=200, seed=1)
    assert perfect == (1.0, 1.0)
    preds = labels.copy()
    preds[:40] = 1 - preds[:40]  # accuracy 0.8
    lo, hi = bootstrap_ci("sst2", preds, labels, n=500, seed=1)
    assert lo < 0.8 < hi and hi - lo < 0.15
    assert bootstrap_ci("sst2", preds, labels, n=500, seed=1) == (lo, hi)
    with pytest.raises(SpikepruneError):
        bootstrap_ci("sst2", preds, labels, n=0)


# ----------------------------------------------------------------------------- tables

def test_trials_frame_columns():
    frame = trials_frame(make_study(toy_trials()))
    assert list(frame["number"]) == list(range(9))
    assert list(frame["status"][:4]) == ["front", "front", "within_noise", "dominated"]
    assert list(frame["pareto"]) == [True, True, False, False, True, False, False, False, True]
    assert frame.loc[5, "feasible"] == False and frame.loc[5, "constraint.metric_min"] == 0.5  # noqa: E712
    assert frame.loc[1, "compression.heads.0"] == 2 and frame.loc[1, "compression.heads.1"] == 3
    assert frame.loc[4, "param.timesteps"] == 2
    assert frame.loc[1, "metric"] == 0.88 and frame.loc[1, "sops"] == 500
    assert frame.loc[1, "metric_ci.lo"] == 0.86
    assert frame.loc[1, "report.sops_per_layer.0.query"] == pytest.approx(150)
    assert frame.loc[7, "state"] == "FAIL" and frame.loc[7, "error"] == "boom" and math.isnan(frame.loc[7, "metric"])


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_write_trials_round_trip(tmp_path, fmt):
    study = make_study(toy_trials())
    path = write_trials(study, tmp_path / f"trials.{fmt}")
    back, frame = read_trials(path), trials_frame(study)
    assert list(back.columns) == list(frame.columns)
    for col in ("number", "metric", "sops", "compression.heads.0", "fidelity", "duration_s"):
        np.testing.assert_allclose(back[col].astype(float), frame[col].astype(float))
    for col in ("status", "state", "worker"):
        assert list(back[col]) == list(frame[col])
    assert list(back["pareto"].astype(bool)) == list(frame["pareto"])
    assert (back["datetime_complete"] - frame["datetime_complete"]).abs().max() < pd.Timedelta("1ms")


def test_write_trials_unknown_format(tmp_path):
    with pytest.raises(SpikepruneError, match="table format"):
        write_trials(make_study(toy_trials()), tmp_path / "trials.xlsx")


# ----------------------------------------------------------------------------- report

def _script_sources(text: str) -> list[str]:
    return re.findall(r"<script[^>]*\ssrc\s*=", text, flags=re.I)


def _unescaped(text: str) -> str:
    """Plotly escapes "<", ">" and "/" as \\uXXXX inside the embedded figure JSON."""
    return re.sub(r"\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1), 16)), text)


def test_report_is_self_contained(tmp_path):
    out = write_report(make_study(toy_trials()), tmp_path / "report.html")[0]
    text = out.read_text()
    assert _script_sources(text) == []
    assert not re.search(r"<link[^>]+href=\"?https?:", text)
    assert "Plotly.newPlot" in text and text.count("<script>") >= 3
    for div in ("pareto", "hypervolume", "layers", "ops"):
        assert f'id="{div}"' in text
    # The metric is called by the task's own name (SST-2: accuracy), in hovers, axes and the summary.
    hover = "<b>trial 1</b> (Pareto front)<br>accuracy: 0.88 [0.86, 0.9]<br>sops: 500<br>heads: 2 3"
    assert hover in _unescaped(text)
    assert "accuracy (maximize), sops (minimize)" in text and "metric (maximize)" not in text
    assert "dominated within noise" in text and "infeasible" in text and "early-stopped" in text
    assert "importances need at least 10 complete trials" in text
    assert "<table class=\"sortable\">" in text


def test_report_without_baseline_still_written(tmp_path):
    out = write_report(make_study(toy_trials(), reference=False), tmp_path / "r.html")[0]
    assert 'id="hypervolume"' in out.read_text()  # the seeded trial is the baseline
    out = write_report(make_study([fake_trial(0.8, 10)], reference=False), tmp_path / "r2.html")[0]
    assert 'id="hypervolume"' in out.read_text()  # no baseline: the reference comes from the trials
    out = write_report(make_study([], reference=False), tmp_path / "r3.html")[0]
    text = out.read_text()
    assert 'id="hypervolume"' not in text and "no finished trial yet" in text


def random_study(n: int, seed: int) -> optuna.Study:
    """A study where heads_l0 alone drives the metric and timesteps alone the SOPs."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(n):
        h0, h1, steps = (int(x) for x in rng.integers(1, 5, size=3))
        trials.append(fake_trial(0.5 + 0.1 * h0, 100.0 * steps, heads=(h0, h1), timesteps=steps,
                                 constraints=[-1.0]))
    return make_study(trials)


def test_objective_importances_name_the_driving_parameters():
    importances, note = objective_importances(analyse_study(random_study(60, 0)))
    assert max(importances["metric"], key=importances["metric"].get) == "heads_l0"
    assert max(importances["sops"], key=importances["sops"].get) == "timesteps"
    assert "60 complete trials" in note


def test_compare_fronts(tmp_path):
    out = compare_fronts([make_study(toy_trials()), random_study(20, 1)], tmp_path / "cmp.html", labels=["a", "b"])
    text = out.read_text()
    assert _script_sources(text) == []
    assert "<b>a</b><br><b>trial 1</b>" in _unescaped(text) and '"name":"b"' in text
    assert 'data-v="0.2679' in text  # study a's hypervolume, 56/209, in the table
    with pytest.raises(SpikepruneError, match="one label per study"):
        compare_fronts([make_study(toy_trials())], tmp_path / "x.html", labels=["a", "b"])


# ----------------------------------------------------------------------------- export selection

def test_budget_selection_picks_the_right_trial():
    study = make_study(toy_trials())
    pick = lambda **kw: [t.number for t in select_trials(study, **kw)]  # noqa: E731
    assert pick(max_sops=600) == [1]        # best metric with <= 600 SOPs (not infeasible 5, early-stopped 6)
    assert pick(max_sops=150) == [8]        # infeasible trial 5 (0.95 at 100 SOPs) is not eligible
    assert pick(min_metric=0.86) == [1]     # fewest SOPs with metric >= 0.86
    assert pick(min_metric=0.84) == [4]
    assert pick(max_sops=600, min_metric=0.86) == [1]
    assert pick(pareto=True) == [0, 1, 4, 8]
    assert pick(trial=3) == [3]
    with pytest.raises(SpikepruneError, match="no trial meets the budget"):
        select_trials(study, max_sops=50)
    with pytest.raises(SpikepruneError, match="exactly one"):
        select_trials(study, trial=1, pareto=True)
    with pytest.raises(SpikepruneError, match="exactly one"):
        select_trials(study)
    with pytest.raises(SpikepruneError, match="FAIL"):
        select_trials(study, trial=7)
    with pytest.raises(SpikepruneError, match="no trial 42"):
        select_trials(study, trial=42)


def test_budget_selection_uses_the_top_fidelity_only():
    study = make_study([fake_trial(0.88, 500), fake_trial(0.89, 300, fidelity=0.5), fake_trial(0.80, 100)])
    assert [t.number for t in select_trials(study, max_sops=600)] == [0]
    assert [t.number for t in select_trials(study, min_metric=0.7)] == [2]


def test_compare_values_tolerance():
    search = {"metric": 0.85, "sops": 1000.0, "size_mb": 2.0}
    assert compare_values(search, {"metric": 0.854, "sops": 1009.0, "size_mb": 2.0}) == []
    problems = compare_values(search, {"metric": 0.857, "sops": 1011.0, "size_mb": 1.97})
    assert [p.split(":")[0] for p in problems] == ["metric", "sops", "size_mb"]
    assert "allowed +-0.005" in problems[0] and "allowed +-1%" in problems[1]


def test_export_folder_stays_inside_output(tmp_path):
    trial = make_study(toy_trials()).trials[4]
    assert trial_dir(tmp_path, trial) == (tmp_path / "trial-00004").resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "trial-00004").symlink_to(outside)
    with pytest.raises(SpikepruneError, match="outside"):
        trial_dir(tmp_path / "out", trial)


def test_export_rebuilds_saves_and_remeasures(tmp_path, glue_dir, tiny_prepared):
    """End to end on a tiny prepared base: a trial measured by the kernel exports as a folder whose
    re-measured values match; a trial whose stored values were altered is reported as failing."""
    import json
    import os

    import yaml

    from spikeprune.models._config import CompressionConfig
    from spikeprune.models._model import SpikingBertForSequenceClassification
    from spikeprune.trial._base import BaseBundle
    from spikeprune.trial._run import run_trial
    from spikeprune import export_trial

    prepared = tiny_prepared
    base = BaseBundle.load(prepared, glue_dir)
    compression = CompressionConfig(heads=1, neurons=8, timesteps=1, weight_bits=[4.0, 1.58])
    result = run_trial(base, compression, max_examples=12)
    objectives = [{"name": "metric", "direction": "maximize"}, {"name": "sops", "direction": "minimize"},
                  {"name": "size_mb", "direction": "minimize"}]
    values = [result.objectives[o["name"]] for o in objectives]
    attrs = {**result.to_dict(), "fidelity": result.examples / base.dev_size}
    study = make_study([], objectives=objectives, reference=False)
    study.add_trial(create_trial(values=values, params={}, distributions={}, user_attrs=attrs))
    study.add_trial(create_trial(values=[values[0] + 0.05, values[1] * 0.9, values[2]], params={},
                                 distributions={}, user_attrs=attrs))

    good = export_trial(study, study.trials[0], tmp_path / "exports", prepared, glue_dir)
    assert good.ok and good.folder == (tmp_path / "exports" / "trial-00000").resolve()
    assert good.measured == pytest.approx(dict(zip(["metric", "sops", "size_mb"], values)))
    config = yaml.safe_load((good.folder / "config.yaml").read_text())
    assert config["compression"] == compression.resolve(base.student.config).to_dict()
    assert config["examples"] == 12 and config["trial"] == 0
    record = json.loads((good.folder / "metrics.json").read_text())
    assert record["ok"] is True and record["problems"] == []
    model = SpikingBertForSequenceClassification.from_pretrained(good.folder / "model")
    assert model.config.heads == [1, 1] and model.config.weight_bits == [4.0, 1.58]
    # Usable as it is: the tokenizer sits beside the weights, files are ordinary (rw-r--r-- under
    # the usual umask), and `evaluate --config` takes the export's config.yaml.
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(good.folder / "model")("a fine film", return_tensors="pt")
    assert model(tokens["input_ids"], tokens["attention_mask"]).logits.shape == (1, 2)
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in good.folder.rglob("*") if p.is_file())
    assert CompressionConfig.load(good.folder / "config.yaml").resolve(base.student.config) == \
        compression.resolve(base.student.config)

    bad = export_trial(study, study.trials[1], tmp_path / "exports", prepared, glue_dir)
    assert not bad.ok and [p.split(":")[0] for p in bad.problems] == ["metric", "sops"]
    assert json.loads((bad.folder / "metrics.json").read_text())["ok"] is False
    with pytest.raises(SpikepruneError, match="already holds an export"):
        export_trial(study, study.trials[1], tmp_path / "exports", prepared, glue_dir)
