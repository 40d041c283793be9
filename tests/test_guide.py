"""The search guide: spike statistics, the cost predictor (against integers worked out by hand and
against real simulations), the sensitivity profile (cached, resumable) and GuidedSampler through
plain Optuna and through `spikeprune search` on Ray with resume."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import optuna
import pytest
import torch

from spikeprune import GuidedSampler, SearchSettings, SearchSpace, run_search
from spikeprune.samplers._cost_model import CostPredictor
from spikeprune.samplers._sensitivity import SensitivityProfile, compute_profile, plan, profile_path
from spikeprune.samplers._stats import SpikeStats
from spikeprune.models._compress import importance_shapes, prune, set_timesteps
from spikeprune.models._config import CompressionConfig, SpikingBertConfig
from spikeprune.costs._ops import count_ops
from spikeprune.models._compress import quantize_model
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.search._settings import make_sampler
from spikeprune.trial._base import BaseBundle
from spikeprune.trial._run import run_trial
from spikeprune.errors import SpikepruneError

from helpers import tiny_model

optuna.logging.set_verbosity(optuna.logging.WARNING)

HAND = SpikingBertConfig(vocab_size=10, hidden_size=2, num_layers=2, head_dim=1, heads=2, intermediate_sizes=2,
                         timesteps=4, max_position_embeddings=8, family="converted", levels=4, task="sst2")
#: Per channel, how many (token, channel) pairs spent k = 0..4 spikes at the base T = 4; both layers.
HISTOGRAMS = {
    "input": [[0, 0, 0, 0, 1], [0, 2, 0, 0, 0]],          # counts 4 + 2 = 6
    "query": [[0, 0, 0, 0, 1], [0, 0, 1, 0, 0]],          # 4 + 2
    "key": [[0, 0, 1, 0, 0], [0, 0, 0, 0, 2]],            # 2 + 8
    "value": [[0, 0, 2, 0, 0], [0, 0, 0, 0, 1]],          # 4 + 4
    "context": [[0, 0, 0, 0, 1], [0, 0, 1, 0, 0]],        # 4 + 2
    "attn_out": [[0, 0, 1, 0, 0], [0, 0, 0, 0, 1]],       # 2 + 4
    "intermediate": [[0, 0, 2, 0, 0], [0, 0, 0, 2, 0]],   # 4 + 6
    "output": [[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]],         # 3 + 1
}
BASE_COUNTS = {"input": 6, "query": 6, "key": 10, "value": 8, "context": 6, "attn_out": 6, "intermediate": 10,
               "output": 4, "query_x_len": 60, "key_x_len": 100, "value_x_len": 80}
#: The whole model at uniform T = 2 spikes half as much as at T = 4, in every population.
HALF = {k: v // 2 for k, v in BASE_COUNTS.items()}


def hand_predictor() -> CostPredictor:
    stats = SpikeStats(family="converted", timesteps=[4, 4], examples=1, tokens=2, token_pairs=4,
                       counts=[dict(BASE_COUNTS), dict(BASE_COUNTS)], metric=0.5,
                       histograms=[{k: torch.tensor(v, dtype=torch.float64) for k, v in HISTOGRAMS.items()}] * 2,
                       by_steps={4: [dict(BASE_COUNTS)] * 2, 2: [dict(HALF)] * 2})
    scores = {k: torch.zeros(n) for k, n in importance_shapes(HAND).items()}
    for l in range(2):
        scores[f"grad.head.{l}"] = torch.tensor([0.9, 0.1])     # heads=1 keeps head 0 (channel 0)
        scores[f"grad.neuron.{l}"] = torch.tensor([0.2, 0.8])   # neurons=1 keeps neuron 1
    return CostPredictor(SpikingBertForSequenceClassification(HAND), scores, stats)


def test_predicted_counts_and_sops_by_hand():
    predictor = hand_predictor()
    compression = CompressionConfig(heads=[1, 2], neurons=[1, 2], timesteps=[2, 4], weight_bits=[4, 32])
    config = predictor.config(compression)
    record = predictor.record(config)
    # Layer 0 runs T = 2: half its kept channels' base counts (only head 0 and neuron 1 stay);
    # each product scales with its population (query 2 of 6 spikes: 60 -> 20).
    assert record.layers[0] == {"input": 3, "query": 2, "key": 1, "value": 2, "context": 2, "attn_out": 3,
                                "intermediate": 3, "output": 2, "query_x_len": 20, "key_x_len": 10, "value_x_len": 20}
    # Layer 1 runs T = 4 but after a 2-step layer: it spikes like the model at T = 2, on the
    # previous layer's predicted output.
    assert record.layers[1] == {**HALF, "input": 2}
    report = predictor.predict(compression)
    # SOPs by hand (docs/DESIGN.md §4), layer 0: Q, K, V 3 input spikes x 1 row each; attention: the
    # products 20 + 10 + 20 plus one add per Q, K, V spike (2 + 1 + 2); attn_out 2 context spikes x 2;
    # intermediate 3 x 1 kept neuron; output 3 x 2; residual 3 + 3.
    layer0 = 3 * 3 + (50 + 5) + 4 + 3 + 6 + 6
    # Layer 1: Q, K, V 2 x 2; attention 120 + 12; attn_out 3 x 2; intermediate 3 x 2; output 5 x 2; residual 2 + 3.
    layer1 = 3 * 4 + (120 + 12) + 6 + 6 + 10 + 5
    assert report.sops == layer0 + layer1 == 254
    assert report.sum_t == 6 and report.max_t == 4
    assert report == count_ops(config, record)   # the same accounting as a trial, size included


def test_a_sequential_family_s_layer_follows_its_own_steps_by_hand():
    """In the elastic family a layer integrates its whole input before it fires, so a T = 4 layer
    after a T = 2 one spikes at its own T = 4, not like the model at T = 2."""
    config = dataclasses.replace(HAND, family="elastic")
    stats = dataclasses.replace(hand_predictor().stats, family="elastic")
    scores = hand_predictor().importance
    predictor = CostPredictor(SpikingBertForSequenceClassification(config), scores, stats)
    record = predictor.record(predictor.config(CompressionConfig(heads=[1, 2], neurons=[1, 2], timesteps=[2, 4])))
    # Layer 0 as in the lockstep case; its products: only Q·Kᵀ is formed from spikes (query 2 of 6: 60 -> 20).
    assert record.layers[0] == {"input": 3, "query": 2, "key": 1, "value": 2, "context": 2, "attn_out": 3,
                                "intermediate": 3, "output": 2, "query_x_len": 20}
    base = {k: v for k, v in BASE_COUNTS.items() if not k.endswith("_x_len") or k == "query_x_len"}
    assert record.layers[1] == {**base, "input": 2}


def random_converted(family: str) -> tuple[SpikingBertForSequenceClassification, dict, list]:
    model = tiny_model(family, levels=4, readout="cls", task="sst2")
    ids = torch.randint(1, 50, (6, 9))
    mask = torch.ones_like(ids)
    mask[3:, 6:] = 0
    batch = [{"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
              "labels": torch.zeros(6, dtype=torch.long)}]
    scores = {k: torch.rand(n) for k, n in importance_shapes(model.config).items()}
    return model, scores, batch


@pytest.mark.parametrize("family", ["converted", "spikingbert"])
def test_prediction_is_exact_at_the_base_and_close_after_pruning(family):
    model, scores, batch = random_converted(family)
    stats, evaluation, at_steps = SpikeStats.gather(model, batch, "sst2", steps=[2])
    assert sorted(at_steps) == [2] and at_steps[2].record.layers == stats.by_steps[2]
    assert sorted(stats.by_steps) == [2, model.config.timesteps[0]]
    predictor = CostPredictor(model, scores, stats)
    for compression, tolerance in [(CompressionConfig(), 0.0), (CompressionConfig(weight_bits=4), 0.05),
                                   (CompressionConfig(heads=1), 0.05), (CompressionConfig(neurons=[12, 24]), 0.05),
                                   (CompressionConfig(timesteps=2), 0.0)]:   # a measured uniform T: exact
        c = compression.resolve(model.config)
        compressed = quantize_model(set_timesteps(prune(model, c.heads, c.neurons, scores), c.timesteps), c.weight_bits)
        with torch.no_grad():
            out = compressed(**{k: batch[0][k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                             mode="batched", record=True)
        measured, predicted = count_ops(compressed.config, out.record), predictor.predict(compression)
        assert predicted.sops == pytest.approx(measured.sops, rel=tolerance, abs=0.5)
        assert predicted.energy_uj == pytest.approx(measured.energy_uj, rel=tolerance, abs=1e-9)
        assert predicted.size_mb == measured.size_mb and predicted.sum_t == measured.sum_t


def test_stats_round_trip(tmp_path):
    model, _, batch = random_converted("converted")
    stats, _, _ = SpikeStats.gather(model, batch, "sst2")
    loaded = SpikeStats.load(stats.save(tmp_path / "s.safetensors"))
    assert loaded.counts == stats.counts and loaded.timesteps == stats.timesteps
    assert all(torch.equal(a[k], b[k]) for a, b in zip(loaded.histograms, stats.histograms) for k in a)
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(SpikepruneError, match="not a spike-statistics file"):
        SpikeStats.load(tmp_path / "bad.safetensors")


GUIDED_SPACE = {"name": "guided", "heads": {"per_layer": True, "min": 1, "max": 2},
                "neurons": {"per_layer": True, "min": 32, "max": 64, "step": 32},
                "timesteps": {"min": 1, "max": 2}, "weight_bits": {"per_layer": True, "choices": [4, 32]},
                "objectives": [{"name": "metric", "direction": "maximize"}, {"name": "sops", "direction": "minimize"}]}


@pytest.fixture
def own_base(tiny_prepared, tmp_path):
    """A private copy of the tiny base, so the guide cache a test writes is its own."""
    return shutil.copytree(tiny_prepared, tmp_path / "base")


def test_profile_is_cached_and_resumes(own_base):
    base, space = BaseBundle.load(own_base), SearchSpace.from_dict(GUIDED_SPACE)
    lines: list[str] = []
    stats, profile = compute_profile(base, space, examples=16, progress=lines.append)
    probes = plan(space, base.student.config)
    # heads 1 of 2 and neurons 32 of 64 per layer, 4 bits per layer; T = 1 from the statistics' uniform run
    assert len(probes) == len(profile.results) == 2 + 2 + 2 and len(lines) == 1 + len(probes)
    assert sorted(profile.steps) == [1] and "timesteps" not in {p.knob for p in probes}
    path = profile_path(own_base, probes, 16)
    data = json.loads(path.read_text())
    data["results"] = data["results"][:-1]                      # as if interrupted before the last probe
    path.write_text(json.dumps(data))
    lines.clear()
    _, resumed = compute_profile(base, space, examples=16, progress=lines.append)
    assert "1 of 6 probes to run" in lines[0] and len(lines) == 2
    assert [r.probe for r in resumed.results] == [r.probe for r in profile.results]
    lines.clear()
    compute_profile(base, space, examples=16, progress=lines.append)
    assert lines == []                                          # complete: nothing measured again
    assert profile.score("heads", 0, 2) == (0.0, 0.0)           # the dense value costs nothing
    assert stats.metric == profile.base_metric


def test_a_timesteps_only_profile_needs_no_probe_and_is_cached(own_base):
    base = BaseBundle.load(own_base)
    space = SearchSpace.from_dict({"name": "t", "timesteps": {"min": 1, "max": 2}})
    lines: list[str] = []
    _, profile = compute_profile(base, space, examples=16, progress=lines.append)
    assert profile.results == [] and sorted(profile.steps) == [1] and "0 of 0 probes" in lines[0]
    lines.clear()
    _, cached = compute_profile(base, space, examples=16, progress=lines.append)
    assert lines == [] and cached.steps == profile.steps


def test_timestep_term_by_hand():
    """Uniform runs at T = 4 (flips 0.6) and 8 (0.2) of a 3-layer base at T = 16: the term is the
    power mean (p = 2.5) over layers of the uniform curve at each layer's T."""
    profile = SensitivityProfile(examples=8, base_metric=0.9, base_values={"timesteps": [16, 16, 16]},
                                 steps={4: (0.3, 0.6), 8: (0.1, 0.2)})
    one_of_three = 3 ** (-1 / 2.5)                                                  # 0.644
    assert profile.timestep_score([16, 16, 16]) == (0.0, 0.0)
    assert profile.timestep_score([8, 8, 8]) == pytest.approx((0.1, 0.2))          # a measured uniform T: itself
    assert profile.timestep_score([4, 16, 16]) == pytest.approx((0.3 * one_of_three, 0.6 * one_of_three))
    assert profile.timestep_score([16, 16, 4]) == profile.timestep_score([4, 16, 16])
    mixed = ((0.1 ** 2.5 + 0.2 ** 2.5) / 3) ** 0.4                                  # T = 12 is halfway to 16: 0.1
    assert profile.timestep_score([16, 12, 8])[1] == pytest.approx(mixed)
    assert profile.timestep_score([2, 16, 16]) == profile.timestep_score([4, 16, 16])  # below the fewest measured
    assert SensitivityProfile.from_dict(profile.to_dict()).steps == profile.steps


def test_drop_curve_by_hand():
    """The metric holds, then falls off a cliff: points on b + d·σ((S - s0)/w) with s0 and w on the
    fit's grid give that curve back exactly; a metric that rises with S is fitted flat, never as a gain."""
    from spikeprune.samplers._guided import DropCurve, fit_curve

    scores = np.array([0.0, 0.2, 0.4, 0.5, 0.55, 0.6, 0.7, 1.0])
    top = 1.5                                     # the grid spans 0..1.5·max(S), 61 values of s0
    truth = DropCurve(b=0.01, d=0.3, s0=0.55, w=0.05 * top)
    curve = fit_curve(scores, truth(scores), np.ones(len(scores)))
    assert (curve.s0, curve.w) == pytest.approx((truth.s0, truth.w))
    assert (curve.b, curve.d) == pytest.approx((truth.b, truth.d), abs=1e-6)
    # By hand: 0.01 + 0.3 / (1 + e^((0.55 - S) / 0.075)): 0.0203 at S = 0.3, 0.3072 at S = 0.9.
    assert float(curve(0.3)) == pytest.approx(0.0203, abs=1e-4) and float(curve(0.9)) == pytest.approx(0.3072, abs=1e-4)
    flat = fit_curve(scores, 0.1 - 0.05 * scores, np.ones(len(scores)))
    assert flat.d == 0.0 and float(flat(0.0)) == float(flat(1.0)) == pytest.approx(np.mean(0.1 - 0.05 * scores))


def test_guided_sampler_in_plain_optuna(own_base):
    base, space = BaseBundle.load(own_base), SearchSpace.from_dict(GUIDED_SPACE)
    sampler = GuidedSampler.for_base(base, space, examples=16, seed=0, explore=0.0)
    study = optuna.create_study(directions=space.check(base.student.config).directions, sampler=sampler)
    study.optimize(lambda trial: space.objective_values(run_trial(base, space.suggest(trial), max_examples=16).objectives),
                   n_trials=5)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 5
    configs = {tuple(sorted(t.params.items())) for t in trials}
    assert len(configs) == 5                                    # never proposes an evaluated config again
    allowed = space.knobs["neurons"].values()
    assert all(t.params["neurons_l0"] in allowed and t.params["weight_bits_l1"] in (4, 32) for t in trials)
    # Every proposal comes from the model (explore=0): none is the dense config, which adds no volume.
    assert all(t.params != {"heads_l0": 2, "heads_l1": 2, "neurons_l0": 64, "neurons_l1": 64, "timesteps": 2,
                            "weight_bits_l0": 32, "weight_bits_l1": 32} for t in trials)


def test_guided_sampler_learns_from_early_stopped_trials(own_base):
    """A trial told its look's values (early-stopped) moves the metric model at its config, and the
    sampler does not propose that config again."""
    base, space = BaseBundle.load(own_base), SearchSpace.from_dict(GUIDED_SPACE)
    sampler = GuidedSampler.for_base(base, space, examples=16, seed=0, explore=0.0)
    study = optuna.create_study(directions=space.check(base.student.config).directions, sampler=sampler)
    trial = study.ask()
    config = space.suggest(trial)
    proposal = dict(trial.params)
    before = float(sampler.predicted_metrics([], [proposal])[0])
    values = space.objective_values(run_trial(base, config, max_examples=8).objectives)
    values[space.objective_names.index("metric")] = before - 0.5   # the look found a collapse
    trial.set_user_attr("early_stopped", True)
    study.tell(trial, values)
    after = float(sampler.predicted_metrics(study.get_trials(), [proposal])[0])
    assert after < before - 0.1
    following = study.ask()
    space.suggest(following)
    assert following.params != proposal


def test_guided_sampler_explores_next_to_the_point_that_holds_the_volume(own_base):
    """With every trial an exploring one (explore=1, local=1), each proposal is a new config one
    step away from the only evaluated point inside the reference in one to three parameters."""
    base, space = BaseBundle.load(own_base), SearchSpace.from_dict(GUIDED_SPACE)
    sampler = GuidedSampler.for_base(base, space, examples=16, seed=0, explore=1.0, local=1.0)
    space = space.check(base.student.config)
    study = optuna.create_study(directions=space.directions, sampler=sampler)
    distributions = sampler.infer_relative_search_space(study, None)
    dense = sampler.predictor.objectives(sampler.config(sampler._dense), sampler.energy)
    def values(metric: float, scale: float) -> list[float]:
        return [metric if name == "metric" else scale * dense[name] for name in space.objective_names]
    good = {name: d.choices[1] if hasattr(d, "choices") else d.low + d.step for name, d in distributions.items()}
    bad = {name: d.choices[0] if hasattr(d, "choices") else d.low for name, d in distributions.items()}
    study.add_trial(optuna.trial.create_trial(params=good, distributions=distributions,
                                              values=values(sampler.profile.base_metric, 0.5)))
    study.add_trial(optuna.trial.create_trial(params=bad, distributions=distributions, values=values(0.0, 0.1)))
    steps = {name: list(d.choices) if hasattr(d, "choices") else list(range(d.low, d.high + 1, d.step))
             for name, d in distributions.items()}
    seen = {tuple(sorted(good.items())), tuple(sorted(bad.items()))}
    for _ in range(5):
        trial = study.ask()
        space.suggest(trial)
        moved = {name: steps[name].index(v) - steps[name].index(good[name]) for name, v in trial.params.items()}
        assert 1 <= sum(m != 0 for m in moved.values()) <= 3 and all(abs(m) <= 1 for m in moved.values()), moved
        assert tuple(sorted(trial.params.items())) not in seen
        seen.add(tuple(sorted(trial.params.items())))
        study.tell(trial, values(0.0, 0.1))   # collapsed: the good point keeps all the volume


@pytest.mark.integration
def test_guided_search_on_ray_resumes(own_base, tmp_path, ray_local, capsys):
    space = tmp_path / "guided.yaml"
    space.write_text(json.dumps(GUIDED_SPACE))
    settings = dict(prepared=own_base, space=space, study_name="g", workers=2, run_dir=tmp_path, sampler="guided",
                    max_examples=16, profile_examples=16, progress=False)
    run_search(SearchSettings(**settings, n_trials=5))
    assert "probes to run" in capsys.readouterr().err
    study = run_search(SearchSettings(**settings, n_trials=8)).study
    assert "probes to run" not in capsys.readouterr().err      # the profile came from the base's cache
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 8 and not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def test_make_sampler_points_to_for_base():
    with pytest.raises(SpikepruneError, match="GuidedSampler.for_base"):
        make_sampler("guided", 0)


def test_profile_command_prints_the_table(own_base, tmp_path, capsys):
    from spikeprune.cli import main as cli_main

    space = tmp_path / "guided.yaml"
    space.write_text(json.dumps(GUIDED_SPACE))
    argv = ["profile", "--prepared", str(own_base), "--space", str(space), "--examples", "16"]
    assert cli_main(argv) == 0
    first = capsys.readouterr()
    assert "6 of 6 probes to run" in first.err and "timesteps from 16 simulated at T = 1" in first.err
    rows = [line.split() for line in first.out.splitlines() if line.startswith("  ") and "knob" not in line]
    assert [(r[0], r[1], r[2]) for r in rows] == [("heads", "0", "1"), ("heads", "1", "1"), ("neurons", "0", "32"),
                                                  ("neurons", "1", "32"), ("weight_bits", "0", "4"),
                                                  ("weight_bits", "1", "4"), ("timesteps", "all", "1")]
    assert cli_main(argv) == 0                                   # shown again from the cache
    again = capsys.readouterr()
    assert "probes to run" not in again.err and again.out == first.out
