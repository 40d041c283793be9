"""Search-space files: presets, validation messages, sampling and the seed configs."""
from __future__ import annotations

import optuna
import pytest
import yaml

from spikeprune.models._config import CompressionConfig, SpikingBertConfig
from spikeprune.errors import SpikepruneError
from spikeprune.spaces._schema import SearchSpace, preset_names

QUICK = SpikingBertConfig(timesteps=16, family="converted", levels=8)  # the quick student: 6 layers, 12 heads of 32, FFN 1536
TINY = SpikingBertConfig(hidden_size=32, num_layers=2, head_dim=16, heads=2, intermediate_sizes=64, timesteps=2)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(**fields) -> SearchSpace:
    return SearchSpace.from_dict(fields)


def test_presets_ship_and_fit_the_quick_student():
    assert preset_names() == ["joint", "quantization", "spatial", "temporal"]
    for name in preset_names():
        s = SearchSpace.load(name).check(QUICK)
        assert s.name == name
        assert s.objectives[0].name == "metric" and s.directions[0] == "maximize"
        assert s.early_stopping is not None
        assert SearchSpace.from_dict(s.to_dict()).to_dict() == s.to_dict()
        assert s.sampler == ("guided" if name == "joint" else None)   # joint's sampler won its benchmark


def test_joint_preset_parameters_are_per_layer_and_coarse():
    s = SearchSpace.load("joint").check(QUICK)
    study = optuna.create_study(directions=s.directions)
    trial = study.ask()
    config = s.suggest(trial)
    assert sorted(trial.params) == sorted(f"{k}_l{i}" for k in ("heads", "neurons", "timesteps", "weight_bits")
                                          for i in range(6))
    assert all(h % 2 == 0 and 4 <= h <= 12 for h in config.heads)
    assert all(n % 256 == 0 and 512 <= n <= 1536 for n in config.neurons)
    assert all(t in (1, 2, 3, 4, 6, 8, 12, 16) for t in config.timesteps)
    assert all(b in (2, 4, 8, 32) for b in config.weight_bits)
    assert config.recovery_steps == 0


def test_load_by_path_names_the_space_after_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("heads: {min: 4, max: 12, step: 4}\n")
    s = SearchSpace.load(path)
    assert s.name == "mine"
    assert s.knobs["heads"].values() == [4, 8, 12]
    assert s.objective_names == ["metric", "sops"]  # the default objectives


def test_shared_knob_is_one_parameter_and_fixed_knobs_pass_through():
    s = space(heads={"min": 1, "max": 2}, neurons=[64, 32], timesteps=1, weight_bits={"choices": [4, 32]}).check(TINY)
    study = optuna.create_study(directions=s.directions)
    trial = study.ask()
    config = s.suggest(trial)
    assert sorted(trial.params) == ["heads", "weight_bits"]
    assert config.neurons == [64, 32] and config.timesteps == 1
    assert config.resolve(TINY).heads[0] == config.resolve(TINY).heads[1]


def test_seed_configs_start_with_the_dense_model_then_uniform_levels():
    s = SearchSpace.load("joint")
    seeds = s.seed_configs(QUICK)
    assert seeds[0].resolve(QUICK) == CompressionConfig().resolve(QUICK)
    # levels 3/4, 1/2, 1/4 of the way from the cheapest value to the baseline's, by index:
    # index = round-half-up(level * last index): heads [4..12 step 2] (last 4: 3, 2, 1) -> 10, 8, 6;
    # neurons [512..1536 step 256] -> 1280, 1024, 768; T [1, 2, 3, 4, 6, 8, 12, 16] (last 7: 5.25, 3.5,
    # 1.75 -> 5, 4, 2) -> 8, 6, 3; bits [2, 4, 8, 32] (last 3: 2.25, 1.5, 0.75 -> 2, 2, 1) -> 8, 8, 4
    assert [(c.heads, c.neurons, c.timesteps, c.weight_bits) for c in seeds[1:]] == [
        (10, 1280, 8, 8.0), (8, 1024, 6, 8.0), (6, 768, 3, 4.0)]


def test_baseline_seed_is_the_in_space_point_nearest_the_dense_model():
    s = space(heads={"min": 1, "max": 9, "step": 4}, timesteps={"choices": [1, 3, 6]})
    baseline = s.seed_configs(QUICK)[0]
    assert baseline.heads == 9 and baseline.timesteps == 6  # the nearest to T = 16


def test_params_round_trip_through_enqueue_trial():
    s = SearchSpace.load("joint").check(QUICK)
    config = CompressionConfig(heads=[12, 10, 8, 6, 4, 4], neurons=512, timesteps=[16, 12, 8, 4, 2, 1],
                               weight_bits=[32, 8, 4, 2, 2, 4])
    study = optuna.create_study(directions=s.directions)
    study.enqueue_trial(s.params(config, QUICK))
    assert s.suggest(study.ask()).resolve(QUICK) == config.resolve(QUICK)


@pytest.mark.parametrize("config, message", [
    (CompressionConfig(heads=5), "heads=5 is outside space.heads (allowed: 4, 6, 8, 10, 12)"),
    (CompressionConfig(weight_bits=[32, 32, 32, 32, 32, 3]), "weight bit width 3 is not supported"),
])
def test_params_refuse_configs_outside_the_space(config, message):
    with pytest.raises(SpikepruneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SearchSpace.load("joint").params(config, QUICK)


def test_params_refuse_per_layer_values_for_a_shared_knob_and_changes_to_fixed_ones():
    s = space(heads={"min": 1, "max": 12}, timesteps=2)
    with pytest.raises(SpikepruneError, match="differs per layer but space.heads is shared"):
        s.params(CompressionConfig(heads=[1, 2, 3, 4, 5, 6], timesteps=2), QUICK)
    with pytest.raises(SpikepruneError, match=r"timesteps=\[16, 16, 16, 16, 16, 16\] but the space fixes it"):
        s.params(CompressionConfig(heads=3), QUICK)


def test_objective_and_constraint_values_hand_computed():
    s = space(objectives=[{"name": "metric", "direction": "maximize"}, "sops", {"name": "size_mb"}],
              constraints={"metric_min": 0.8, "sops_max": "2e6"})
    measured = {"metric": 0.75, "sops": 3.0e6, "energy_uj": 1.0, "sum_t": 8.0, "max_t": 2.0, "size_mb": 4.5}
    assert s.directions == ["maximize", "minimize", "minimize"]
    assert s.objective_values(measured) == [0.75, 3.0e6, 4.5]
    got = s.constraint_values(measured)
    assert got == pytest.approx({"metric_min": 0.05, "sops_max": 0.5})  # 0.8 - 0.75; (3e6 - 2e6) / 2e6


def test_suggest_needs_the_model_for_per_layer_knobs():
    s = SearchSpace.load("spatial")
    with pytest.raises(SpikepruneError, match=r"space.heads is per layer: call space.check\(model_config\)"):
        s.suggest(optuna.create_study().ask())


BAD_SPACES = [
    ({"head": 4}, "space: unknown key 'head'; known keys are name, description, heads, neurons"),
    ({"heads": {"min": 2, "max": 12, "stp": 2}}, "space.heads: unknown key 'stp'; known keys are per_layer, min, max, step, choices"),
    ({"heads": {"min": 2}}, "space.heads.max: missing"),
    ({"heads": {"min": 8, "max": 4}}, "space.heads.max: 4 is below min 8"),
    ({"heads": {"min": 2, "max": 11, "step": 2}}, "space.heads.max: 11 is not min 2 plus a multiple of step 2; use max: 10"),
    ({"heads": {"min": 0, "max": 4}}, "space.heads.min: 0 must be >= 1"),
    ({"heads": {"min": 1.5, "max": 4}}, "space.heads.min: 1.5 must be a whole number"),
    ({"heads": {"min": 1, "max": 4, "choices": [1, 2]}}, "space.heads: give either choices or min/max/step, not both"),
    ({"heads": {"choices": []}}, "space.heads.choices: must be a non-empty list"),
    ({"heads": {"choices": [2, 2]}}, "space.heads.choices: [2, 2] has duplicates"),
    ({"heads": {"per_layer": "yes", "min": 1, "max": 2}}, "space.heads.per_layer: 'yes' must be true or false"),
    ({"heads": "many"}, "space.heads: 'many' is not a number"),
    ({"heads": True}, "space.heads: True is not a number"),
    ({"weight_bits": {"min": 1, "max": 8}}, "space.weight_bits: bit widths are not a range; use choices"),
    ({"weight_bits": {"choices": [1, 3]}}, "space.weight_bits.choices[1]: 3 bits is not supported; use one of 1, 1.58, 2, 4, 8, 32"),
    ({"recovery_steps": {"min": 0, "max": 10}}, "space.recovery_steps: unknown key 'min'; known keys are choices"),
    ({"recovery_steps": -1}, "space.recovery_steps: -1 must be >= 0"),
    ({"objectives": []}, "space.objectives: give a non-empty list"),
    ({"objectives": [{"name": "accuracy"}]}, "space.objectives[0].name: 'accuracy' is not an objective; use one of metric, sops"),
    ({"objectives": [{"name": "sops", "direction": "maximize"}]}, "space.objectives[0].direction: sops must be minimized, not 'maximize'"),
    ({"objectives": ["metric", "metric"]}, "space.objectives[1].name: metric is listed twice"),
    ({"objectives": [{"name": "metric", "weight": 2}]}, "space.objectives[0]: unknown key 'weight'; known keys are name, direction"),
    ({"constraints": {"accuracy_min": 0.8}}, "space.constraints: unknown key 'accuracy_min'; known keys are metric_min, sops_max"),
    ({"constraints": {"sops_max": 0}}, "space.constraints.sops_max: 0 must be > 0"),
    ({"constraints": {"sops_max": "lots"}}, "space.constraints.sops_max: 'lots' is not a number"),
    ({"constraints": [0.8]}, "space.constraints: give a mapping"),
    ({"early_stopping": {"fraction": 1.5}}, "space.early_stopping.fraction: 1.5 must be between 0 and 1"),
    ({"early_stopping": {"margin": -0.1}}, "space.early_stopping.margin: -0.1 must be >= 0"),
    ({"early_stopping": {"patience": 3}}, "space.early_stopping: unknown key 'patience'; known keys are fraction, margin, later"),
    ({"early_stopping": {"later": 0.5}}, "space.early_stopping.later: give a list of fractions, e.g. [0.5]"),
    ({"early_stopping": {"fraction": 0.5, "later": [0.25]}}, "later: [0.25] must rise strictly, each between fraction (0.5)"),
    ({"early_stopping": {"later": [0.5, 0.5]}}, "must rise strictly"),
    ({"early_stopping": {"later": ["half"]}}, "space.early_stopping.later[0]: 'half' is not a number"),
    ({"energy": 45}, "space.energy: 45 must be the name of an energy preset"),
    ({"sampler": "cmaes"}, "space.sampler: 'cmaes' is unknown; use one of tpe, nsga2, nsga3, gp, random, guided"),
    ({"importance": "taylor"}, "space.importance: 'taylor' is unknown; use one of grad, activity"),
    ([1, 2], "space: the file must hold a mapping"),
]


@pytest.mark.parametrize("data, message", BAD_SPACES, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD_SPACES)])
def test_bad_spaces_are_refused_with_one_line_naming_the_field(data, message):
    with pytest.raises(SpikepruneError) as err:
        SearchSpace.from_dict(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


MODEL_MISMATCHES = [
    ({"heads": {"min": 2, "max": 16, "step": 2}}, QUICK, "space.heads.max: 16 but the model has 12 heads per layer"),
    ({"heads": {"choices": [4, 14]}}, QUICK, "space.heads.choices: 14 but the model has 12 heads per layer"),
    ({"heads": 13}, QUICK, "space.heads: 13 but the model has 12 heads per layer"),
    ({"neurons": {"min": 256, "max": 2048, "step": 256}}, QUICK, "space.neurons.max: 2048 but the model has 1536 FFN neurons per layer"),
    ({"neurons": [64, 65]}, TINY, "space.neurons[1]: 65 but the model's layer 1 has 64 FFN neurons"),
    ({"timesteps": [1, 2, 3]}, TINY, "space.timesteps: 3 values but the model has 2 layers"),
    ({"energy": "float7nm"}, QUICK, "space.energy: unknown energy model 'float7nm'"),
]


@pytest.mark.parametrize("data, model, message", MODEL_MISMATCHES)
def test_spaces_are_checked_against_the_model_before_any_trial(data, model, message):
    with pytest.raises(SpikepruneError) as err:
        SearchSpace.from_dict(data).check(model)
    assert message in str(err.value)


def test_per_layer_heads_limit_names_the_smallest_layer():
    model = SpikingBertConfig(num_layers=2, heads=[4, 3], hidden_size=128)
    with pytest.raises(SpikepruneError, match=r"space.heads.max: 4 but the model's layer 1 has 3 heads"):
        space(heads={"min": 1, "max": 4}).check(model)
    space(heads={"min": 1, "max": 3}).check(model)  # what the smallest layer has fits


def test_a_space_names_the_importance_score_its_searches_prune_by():
    """Stored with the study's space, so a resumed search and an export prune by the same score."""
    chosen = space(importance="activity")
    assert chosen.importance == "activity" and SearchSpace.from_dict(chosen.to_dict()).importance == "activity"
    assert space().importance == "grad" and "importance" not in space().to_dict()  # older studies' spaces read equal


def test_timesteps_may_exceed_the_base_model():
    s = space(timesteps={"per_layer": True, "min": 1, "max": 8}).check(QUICK)
    assert s.knobs["timesteps"].values() == list(range(1, 9))


def test_yaml_errors_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("heads: {min: 2\nneurons: 3\n")
    with pytest.raises(SpikepruneError, match=r"bad.yaml: line \d+ is not valid YAML"):
        SearchSpace.load(bad)
    with pytest.raises(SpikepruneError, match="nope is neither a file nor a preset; presets are joint, quantization"):
        SearchSpace.load("nope")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"heads": {"min": 2, "max": 16}}))
    with pytest.raises(SpikepruneError, match="wrong.yaml: space.heads.max: 16 but the model has 12 heads"):
        SearchSpace.load(wrong).check(QUICK)
