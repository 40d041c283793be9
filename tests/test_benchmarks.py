"""The benchmark scripts still run (``--quick``: tiny model, one round) and write their figures.

No timing is asserted: only that each script finishes, that its JSON holds what it printed, and the
figures that do not depend on the machine (identical outputs, dense-operation ratios).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numba
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_process_state(monkeypatch):
    """The scripts set thread counts, the torch seed and OMP_WAIT_POLICY for the whole process."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    threads, numba_threads, rng = torch.get_num_threads(), numba.get_num_threads(), torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    numba.set_num_threads(numba_threads)
    torch.set_rng_state(rng)


def _written(path: Path, result: dict) -> dict:
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(result))
    assert data["environment"]["threads"] == 1
    return data


def test_bench_simulation_quick(tmp_path):
    out = tmp_path / "sim.json"
    result = _script("bench_simulation").main(["--quick", "--threads", "1", "--out", str(out)])
    data = _written(out, result)
    assert [(s["batch_size"], s["timesteps"]) for s in data["settings"]] == [(1, 2), (4, 2)]
    assert data["all_identical"] is True
    assert all(s["rounds"] == 1 and s["speedup_lockstep_over_batched"] > 0 for s in data["settings"])


def test_bench_slices_quick(tmp_path):
    out = tmp_path / "slices.json"
    result = _script("bench_slices").main(["--quick", "--threads", "1", "--slice-bytes", "1", "--out", str(out)])
    data = _written(out, result)
    assert data["identical"] is True and data["speedup"] > 0
    assert sorted(data["medians"]) == ["one piece", "slices of 9.53674e-07 MiB"]


def test_bench_pruned_quick(tmp_path):
    out = tmp_path / "pruned.json"
    result = _script("bench_pruned").main(["--quick", "--threads", "1", "--out", str(out)])
    configs = _written(out, result)["configs"]
    # Tiny model, per layer and timestep: Q, K, V, attn_out 4 heads·8 × 32 each, FFN 32×64 twice
    # = 4·1024 + 2·2048 = 8192 MACs. Halving heads: 4·512 + 4096 = 6144; halving FFN: 4096 + 2048.
    expected = {"dense": 1.0, "heads/2": 0.75, "ffn/2": 0.75, "heads/2+ffn/2": 0.5, "T/2": 0.5,
                "heads/2+ffn/2+T/2": 0.25}
    assert {name: c["dense_macs_ratio"] for name, c in configs.items()} == expected
    assert configs["dense"]["dense_macs"] == 2 * 2 * 8192 * result["tokens"] / result["examples"]
    assert configs["dense"]["sops_ratio"] == 1.0
    assert all(0 < c["sops_ratio"] < 1 for name, c in configs.items() if name != "dense")


def test_bench_trial_quick(tmp_path, tiny_prepared, glue_dir):
    out = tmp_path / "trial.json"
    result = _script("bench_trial").main(["--quick", "--threads", "1", "--prepared", str(tiny_prepared),
                                          "--glue-dir", str(glue_dir), "--out", str(out)])
    configs = _written(out, result)["configs"]
    assert len(configs) == 4 and result["examples"] == 16
    for name, c in configs.items():
        assert sum(c["shares"].values()) == pytest.approx(1.0)
        assert c["compression"]["recovery_steps"] == (1 if "recover" in name else 0)


def test_bench_trial_needs_a_prepared_base(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script("bench_trial").main(["--quick", "--out", str(tmp_path / "t.json")])
    assert exit_info.value.code == 2
    assert "--prepared is required" in capsys.readouterr().err


# ------------------------------------------------------------------ the search benchmarks
#: One space per axis for the tiny base (2 layers, 2 heads, FFN 64, T=2).
TINY_SPACES = {
    "spatial": "heads: {per_layer: true, min: 1, max: 2}\nneurons: {per_layer: true, min: 16, max: 64, step: 16}\n"
               "objectives: [{name: metric, direction: maximize}, {name: sops, direction: minimize}]\n",
    "joint": "heads: {per_layer: true, min: 1, max: 2}\ntimesteps: {per_layer: true, min: 1, max: 2}\n"
             "weight_bits: {per_layer: true, choices: [1, 4, 32]}\n"
             "objectives: [{name: metric, direction: maximize}, {name: energy_uj, direction: minimize}]\n"
             "early_stopping: {fraction: 0.5, margin: 0.0}\n",
}


def _spaces(tmp_path: Path) -> list[str]:
    paths = []
    for name, text in TINY_SPACES.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\n{text}")
        paths.append(str(path))
    return paths


def test_study_picks_the_cheapest_config_within_the_drop():
    study = _script("study")
    points = [{"number": 0, "metric": 0.80, "energy_uj": 10.0, "sops": 100.0},
              {"number": 1, "metric": 0.795, "energy_uj": 4.0, "sops": 90.0},   # within 1 point
              {"number": 2, "metric": 0.78, "energy_uj": 1.0, "sops": 10.0},    # 2 points down
              {"number": 3, "metric": 0.792, "energy_uj": 6.0, "sops": 50.0}]
    assert study.best_within(points, 0.80, 0.01, "energy_uj")["number"] == 1
    assert study.best_within(points, 0.80, 0.01, "sops")["number"] == 3
    assert study.best_within(points, 0.90, 0.01, "sops") is None
    assert [p["number"] for p in study.front_2d(points, "energy_uj")] == [2, 1, 0]
    rows = {"spatial": points[3], "joint": points[1]}
    text = study.verdict("sst2", rows, points[0])
    assert "energy: joint beats the best single-axis space (spatial)" in text and "0.67x" in text
    assert "SOPs: joint does not beat the best single-axis space (spatial)" in text and "1.80x" in text


@pytest.mark.integration
def test_study_runs_real_searches_and_resumes(tmp_path, tiny_prepared, glue_dir, ray_local):
    study = _script("study")
    out = tmp_path / "study.json"
    args = ["--prepared", str(tiny_prepared), "--glue-dir", str(glue_dir), "--run-dir", str(tmp_path / "runs"),
            "--n-trials", "3", "--quiet", "--out", str(out), "--spaces", *_spaces(tmp_path)]
    result = study.main(args)
    task = json.loads(out.read_text())["tasks"]["sst2"]
    assert task == json.loads(json.dumps(result["tasks"]["sst2"], default=str))
    assert sorted(task["trials"]) == ["joint", "spatial"]
    assert all(len(points) == 3 for points in task["trials"].values())
    base = task["baseline"]
    for space, row in task["least_energy"].items():
        assert row["metric"] >= base["metric"] - 0.01 - 1e-12
        assert row["energy_uj"] == min(p["energy_uj"] for p in task["trials"][space]
                                       if p["metric"] >= base["metric"] - 0.01 - 1e-12)
    assert out.with_suffix(".html").read_text().count("fronts-sst2") >= 1
    again = study.main(args)  # resumes: the studies already hold their trials, nothing re-runs
    assert again["tasks"]["sst2"]["trials"] == result["tasks"]["sst2"]["trials"]


@pytest.mark.integration
def test_bench_search_compares_samplers_and_early_stopping(tmp_path, tiny_prepared, glue_dir, ray_local):
    out = tmp_path / "search.json"
    joint = _spaces(tmp_path)[1]
    result = _script("bench_search").main([
        "--prepared", str(tiny_prepared), "--glue-dir", str(glue_dir), "--space", joint, "--run-dir",
        str(tmp_path / "runs"), "--samplers", "tpe", "random", "guided", "--seeds", "0", "--n-trials", "5",
        "--max-examples", "16", "--every", "5", "--quiet", "--profile-examples", "16", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["arms"] == json.loads(json.dumps(result["arms"]))
    assert sorted(data["arms"]) == ["guided", "random", "tpe", "tpe+es"]
    shift = data["guided_profile"]["trial_equivalents"]   # the guided arm pays for its profile in trials
    assert shift >= 1 and data["guided_profile"]["probes"] == 2 + 4   # heads, two bit widths per layer (T: uniform runs)
    assert set(data["predictor"]) == {"sops", "energy_uj"} and data["predictor"]["sops"]["trials"] >= 5
    # The guided sampler's metric model, scored on its own proposals (at least 2 of the 5 are seeds).
    model = data["metric_model"]
    assert 1 <= model["trials"] <= 3 and 0 <= model["median"] <= 1 and 0 <= model["mean"] <= 1
    for arm, figures in data["arms"].items():
        (run,) = figures["runs"]
        curve = run["hypervolume"]
        if arm == "guided":
            assert curve[:shift] == [0.0] * shift
            curve = curve[shift:]
        assert len(curve) == 5 and all(b >= a for a, b in zip(curve, curve[1:])) and 0 <= curve[-1] <= 1
        full = 5 - run["duplicates"] - run["stopped_early"]
        assert run["examples"] == 16 * full + 8 * run["stopped_early"]  # a stopped trial cost its look only
    assert data["arms"]["tpe"]["runs"][0]["stopped_early"] == 0
    finals = [figures["runs"][0]["hypervolume"][-1] for figures in data["arms"].values()]
    assert max(finals) <= data["pooled_hypervolume"] <= 1   # the pooled front holds every arm's
    assert set(data["early_stopping"]) == {"sampler", "examples_ratio", "kernel_s_ratio", "final_hv_early",
                                           "final_hv_plain"}
    assert data["early_stopping"]["sampler"] == "tpe"


@pytest.mark.integration
def test_bench_orchestration_runs_the_same_trials_in_every_layout(tmp_path, tiny_prepared, glue_dir):
    out = tmp_path / "orchestration.json"
    joint = _spaces(tmp_path)[1]
    result = _script("bench_orchestration").main([
        "--prepared", str(tiny_prepared), "--glue-dir", str(glue_dir), "--space", joint, "--n-trials", "3",
        "--max-examples", "8", "--repeats", "3", "--rounds", "2", "--quiet", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["same_configs"] is True and sorted(data["searches"]) == ["1x1", "1x2", "2x1", "4x0.5"]
    for s in data["searches"].values():
        assert s["trials"] == 3 and s["kernel_s"] > 0 and s["trials_per_hour"] > 0
        assert 0 <= s["orchestration_share"] < 1 and s["pieces"]["eval_s"] > 0 and s["pieces"]["dispatch_s"] >= 0
        assert len(s["rounds"]) == 2 and s["vs_1x1"] > 0
    pieces = result["pieces"]
    assert len(pieces["ray_round_trip_s"]["seconds"]) == 3 and len(pieces["journal_ask_tell_s"]["seconds"]) == 3


def test_bench_exported_times_exported_models(tmp_path, tiny_prepared, glue_dir):
    from spikeprune.models._compress import prune
    from spikeprune.models._compress import quantize_model
    from spikeprune.trial._base import BaseBundle

    base = BaseBundle.load(tiny_prepared, glue_dir)
    folder = tmp_path / "exports" / "trial-00007"
    model = quantize_model(prune(base.student, 1, 32, base.importance), [4.0, 32.0])
    model.save_pretrained(folder / "model", packed=True)
    (folder / "metrics.json").write_text(json.dumps({"metrics": {"metric": 0.5}}))
    out = tmp_path / "exported.json"
    result = _script("bench_exported").main(["--quick", "--threads", "1", "--prepared", str(tiny_prepared),
                                             "--glue-dir", str(glue_dir), "--exports", str(tmp_path / "exports"),
                                             "--out", str(out)])
    models = _written(out, result)["models"]
    assert sorted(models) == ["trial-00007", "uncompressed"]
    # Per layer and timestep: Q, K, V, attn_out 32 x (2 heads of 16) each + FFN 32 x 64 twice = 8192 MACs;
    # one head and 32 neurons: 4 x 512 + 2 x 1024 = 4096, half of it.
    assert models["trial-00007"]["dense_macs_ratio"] == 0.5
    assert models["trial-00007"]["dev_metric"] == 0.5 and models["uncompressed"]["dev_metric"] is None
    assert 0 < models["trial-00007"]["size_ratio"] < 1 and models["uncompressed"]["time_ratio"] == 1.0


def test_bench_startup_help_imports_nothing_heavy(tmp_path):
    """`spikeprune --help`, `--version` and `search --help` answer without torch, Ray or Optuna."""
    out = tmp_path / "startup.json"
    result = _script("bench_startup").main(["--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["commands"]
    assert set(rows) == {"python -c pass", "spikeprune --help", "spikeprune --version", "spikeprune search --help"}
    assert all(row["heavy_imports"] == [] for row in rows.values())


def test_bench_timesteps_compares_single_layer_cuts_with_the_rule(tmp_path, tiny_prepared, glue_dir):
    out = tmp_path / "timesteps.json"
    result = _script("bench_timesteps").main(["--prepared", str(tiny_prepared), "--glue-dir", str(glue_dir),
                                              "--steps", "1", "--max-examples", "8", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    cuts = result["cuts"]["1"]
    assert sorted(cuts) == ["0", "1", "all"] and all(0 <= flips <= 1 for _, flips in cuts.values())
    assert set(result["mean_abs_error"]) == {"power", "additive"}


@pytest.mark.integration
def test_glue_table_prepares_searches_and_resumes(tmp_path, glue_dir, ray_local, capsys):
    """Two tasks on the tiny preset: each row recomputed here from its stored study and base, the
    rows kept as JSON as they finish, and a second run measuring nothing again."""
    from collections import Counter

    from spikeprune import BaseBundle, PreparedRecord, TrialRecord, load_study, open_storage
    from spikeprune.search import default_storage

    space = tmp_path / "joint.yaml"
    space.write_text(f"name: joint\n{TINY_SPACES['joint']}sampler: guided\n")
    out = tmp_path / "table.json"
    args = ["--tasks", "sst2", "wnli", "--preset", "tiny", "--glue-dir", str(glue_dir), "--run-dir",
            str(tmp_path / "runs"), "--space", str(space), "--n-trials", "4", "--max-examples", "16",
            "--profile-examples", "16", "--quiet", "--out", str(out)]
    result = _script("glue_table").main(args)
    data = json.loads(out.read_text())
    assert data["rows"] == json.loads(json.dumps(result["rows"])) and data["wall_s"] > 0
    assert [r["task"] for r in data["rows"]] == ["sst2", "wnli"]
    for row in data["rows"]:
        assert json.loads((tmp_path / "table" / "rows" / f"{row['task']}.json").read_text()) == row
        study = load_study(row["study"], open_storage(default_storage(tmp_path / "runs", row["study"])))
        done = [t for t in study.get_trials() if t.state.name == "COMPLETE" and not TrialRecord.of(t).early_stopped
                and TrialRecord.of(t).duplicate_of is None]
        assert len(done) == row["full_trials"] and len(done) + row["early_stopped"] >= 4
        dense = next(t for t in done if TrialRecord.of(t).baseline)
        sops = lambda t: TrialRecord.of(t).report["sops"]  # noqa: E731
        metric = lambda t: TrialRecord.of(t).metrics["metric"]  # noqa: E731
        within = [t for t in done if metric(t) >= metric(dense) - 0.01 - 1e-9]
        best = min(within, key=lambda t: (sops(t), -metric(t), t.number))
        assert row["best"]["trial"] == best.number and row["dense"] == metric(dense)
        assert row["best"]["ratios"]["sops"] == pytest.approx(sops(best) / sops(dense))
        assert row["sops_target_met"] == (sops(best) <= 0.5 * sops(dense))
        fp32 = lambda t: TrialRecord.of(t).ann["teacher"]["energy_uj"]  # noqa: E731
        assert row["dense_trial"] == dense.number
        assert row["x_ann_fp32"] == pytest.approx({"dense": TrialRecord.of(dense).report["energy_uj"] / fp32(dense),
                                                   "best": TrialRecord.of(best).report["energy_uj"] / fp32(best)})
        assert row["teacher"] == PreparedRecord.read(row["prepared"]).teacher_metrics["accuracy"]
        labels = BaseBundle.load(row["prepared"], glue_dir).dev["labels"][:16]
        assert row["dev_examples"] == 16 and row["majority"] == Counter(labels).most_common(1)[0][1] / 16
    assert "each relative to its dense student" in out.with_suffix(".html").read_text()
    capsys.readouterr()
    again = _script("glue_table").main(args)   # both rows are kept: nothing is prepared or searched again
    assert json.loads(json.dumps(again["rows"])) == data["rows"]
    assert capsys.readouterr().out.count("measured before") == 2
