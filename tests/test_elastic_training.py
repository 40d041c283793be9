"""Elastic training: a sub-config run on the full-size student is the trial's pruned, shortened,
quantized model; configs stay on the axes; ``prepare`` makes an elastic base whose training
resumes bit-identically."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: fail fast offline

import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from spikeprune.models._compress import load_importance, prune, quantize_model, set_timesteps
from spikeprune.models._config import CompressionConfig
from spikeprune.models._evaluation import evaluate_model
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.spaces import SearchSpace, preset_names
from spikeprune.training import _prepare as prepare_module
from spikeprune.training._convert import elastic_from_converted
from spikeprune.training._elastic import (TRAINED_BITS, ElasticAxes, ElasticRunner, WeightAverage, _learns_from_largest,
                                          train_elastic)
from spikeprune.training._loop import load_split
from spikeprune.training._presets import PRESETS
from spikeprune.data._glue import batches

from test_elastic import tiny_batch, tiny_elastic

# 24 examples in batches of 4: six steps of four configs, checkpoints (and grid refits) after steps 2 and 4.
ELASTIC = dataclasses.replace(PRESETS["tiny"], teacher_examples=24, distill_examples=24, batch_size=4,
                              eval_examples=16, checkpoint_every=2, family="elastic", elastic_examples=24)


def scores_for(model: SpikingBertForSequenceClassification, seed: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for l, layer in enumerate(model.layers):
        out[f"grad.head.{l}"] = torch.rand(layer.num_heads, generator=generator)
        out[f"grad.neuron.{l}"] = torch.rand(layer.output.in_features, generator=generator)
    return out


def run(model: SpikingBertForSequenceClassification, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mode="surrogate").logits


@pytest.mark.parametrize("heads, neurons, steps", [([2, 3], [8, 20], [3, 1]), ([4, 1], [32, 5], [16, 2])])
def test_a_sub_config_on_the_full_model_is_the_pruned_shortened_model(heads, neurons, steps):
    model = tiny_elastic([16, 16], seed=2)
    scores = scores_for(model)
    batch = tiny_batch()
    config = CompressionConfig(heads, neurons, steps, [32.0, 32.0])
    with torch.no_grad():
        sub = ElasticRunner(model, scores, refresh=1)(batch, config).logits
    trial = set_timesteps(prune(model, heads, neurons, scores), steps)
    assert torch.allclose(sub, run(trial, batch), atol=1e-5)
    assert model.config.timesteps == [16, 16]                      # the full model is left as it was
    assert not torch.allclose(sub, run(model, batch), atol=1e-3)   # and the config did change the result


def test_weight_widths_during_training_are_the_quantizer_s_grids():
    model = tiny_elastic([8, 8], seed=4)
    batch = tiny_batch()
    runner = ElasticRunner(model, scores_for(model), refresh=1)
    bits = [4.0, 2.0]
    with torch.no_grad():
        sub = runner(batch, CompressionConfig([4, 4], [32, 32], [8, 8], bits)).logits
    assert torch.allclose(sub, run(quantize_model(model, bits), batch), atol=1e-5)
    # Straight-through: the float weights get a gradient through their grid values.
    out = runner(batch, CompressionConfig([4, 4], [32, 32], [8, 8], bits))
    out.logits.sum().backward()
    assert model.layers[0].query.weight.grad is not None and model.layers[0].query.weight.grad.abs().sum() > 0


def test_sampled_configs_stay_on_the_axes_and_reach_both_ends():
    model = tiny_elastic([16, 16])
    axes = ElasticAxes.of(model, dataclasses.replace(ELASTIC, elastic_min_width=0.25))
    # Units in sixths of the layer's, counted down from the whole: 32 - 5k neurons, at least 8.
    assert (axes.heads, axes.min_heads, axes.neurons, axes.min_neurons, axes.max_steps) == (4, 1, 32, 12, 16)
    torch.manual_seed(0)
    configs = [axes.sample(2) for _ in range(400)]
    assert {h for c in configs for h in c.heads} == {1, 2, 3, 4}
    assert {n for c in configs for n in c.neurons} == {12, 17, 22, 27, 32}
    assert {t for c in configs for t in c.timesteps} == {1, 2, 3, 4, 6, 8, 12, 16}   # the shipped spaces' steps
    assert {b for c in configs for b in c.weight_bits} == set(TRAINED_BITS)
    # Each axis is left whole in about half the configs, and cut uniformly or per layer in the rest.
    whole = sum(c.timesteps == [16, 16] for c in configs) / len(configs)
    mixed = sum(c.heads[0] != c.heads[1] for c in configs) / len(configs)
    assert 0.4 < whole < 0.65 and 0.1 < mixed < 0.3
    assert axes.smallest(2).timesteps == [1, 1] and axes.largest(2).weight_bits == [32.0, 32.0]


def test_the_quick_base_trains_on_the_grids_the_shipped_spaces_search():
    """12 heads and 1,536 neurons at a quarter at least: 4-12 heads in 2s, 512-1,536 in 256s."""
    axes = ElasticAxes.for_sizes(12, 1536, 16, PRESETS["quick"].elastic_min_width)
    assert (axes.min_heads, axes.head_step, axes.min_neurons, axes.neuron_step) == (4, 2, 512, 256)
    assert ElasticAxes.of(tiny_elastic([16, 16]), ELASTIC).step_choices() == [1, 2, 3, 4, 6, 8, 12, 16]
    torch.manual_seed(0)
    configs = [axes.sample(6) for _ in range(300)]
    for name in preset_names():
        space = SearchSpace.load(name)
        for axis in ("heads", "neurons", "timesteps"):
            if space.knobs[axis].searched:
                assert set(space.knobs[axis].values()) == {v for c in configs for v in getattr(c, axis)}, (name, axis)


def test_prepare_makes_an_elastic_base_from_its_converted_student(tmp_path, glue_dir, monkeypatch):
    out = prepare_module.prepare("sst2", glue_dir, tmp_path, ELASTIC, seed=0)
    student = SpikingBertForSequenceClassification.from_pretrained(out / "student")
    converted = SpikingBertForSequenceClassification.from_pretrained(out / "converted")
    assert student.config.family == "elastic" and converted.config.family == "converted"
    report = json.loads((out / "prepare.json").read_text())
    assert report["timings"]["elastic_train_s"] > 0
    training = json.loads((out / "student" / "training.json").read_text())
    assert training["steps"] == 6 and training["axes"]["max_steps"] == 2
    # The recorded score is the twin's, which is the simulation's.
    tok = AutoTokenizer.from_pretrained(out / "student")
    dev = load_split("sst2", "validation", glue_dir, tok, ELASTIC.max_length, ELASTIC.eval_examples, 0)
    simulated = evaluate_model(student, batches(dev, 16, sort_by_length=True), "sst2").metrics
    assert simulated["metric"] == report["student_metrics"]["metric"]

    # The elastic stage alone, from the same converted student: uninterrupted twice, and killed
    # in step 5 (after the step-4 checkpoint) then re-run, all bit-identical.
    teacher = AutoModelForSequenceClassification.from_pretrained(out / "teacher")
    scores = load_importance(out / "importance.safetensors", converted.config)
    calibration = load_split("sst2", "train", glue_dir, tok, ELASTIC.max_length, 8, 1)

    untrained = elastic_from_converted(converted, list(batches(calibration, 4)))

    def train(folder: str, preset=ELASTIC) -> dict[str, torch.Tensor]:
        elastic = copy.deepcopy(untrained)
        train_elastic(elastic, teacher, scores, "sst2", glue_dir, tmp_path / folder, preset, tokenizer=tok, seed=1)
        return load_file(str(tmp_path / folder / "student" / "model.safetensors"))

    original = SpikingBertForSequenceClassification.forward
    # The weight average is checkpointed with the student, so it too resumes bit-identically.
    for name, preset in {"plain": ELASTIC, "averaged": dataclasses.replace(ELASTIC, elastic_average=0.5)}.items():
        first = train(f"{name}-a", preset)
        assert not all(torch.equal(first[k], v) for k, v in student.state_dict().items() if k in first)
        calls = {"n": 0}

        def crash(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4 * 4 + 2:
                raise KeyboardInterrupt
            return original(self, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(SpikingBertForSequenceClassification, "forward", crash)
            with pytest.raises(KeyboardInterrupt):
                train(f"{name}-b", preset)
        assert [p.name for p in (tmp_path / f"{name}-b" / "checkpoints" / "elastic").iterdir()] == ["step-00000004"]
        resumed = train(f"{name}-b", preset)
        assert first.keys() == resumed.keys() and all(torch.equal(first[k], resumed[k]) for k in first), name


def test_grid_weights_are_the_quantizer_s_values_with_straight_through_gradients():
    from spikeprune.models._quantize import quantize
    from spikeprune.training._grids import GridWeights

    model = tiny_elastic([8, 8], seed=5)
    grids = GridWeights(model, refresh=2)
    grids.next_batch()
    weights = grids.weights([1.58, 8.0])
    assert all(k.startswith(("layers.0.", "layers.1.")) for k in weights) and len(weights) == 12
    for key, bits in (("layers.0.value.weight", 1.58), ("layers.1.output.weight", 8.0)):
        assert torch.equal(weights[key], quantize(model.get_parameter(key).detach(), bits))
    weights["layers.0.value.weight"].sum().backward()
    assert torch.equal(model.layers[0].value.weight.grad, torch.ones_like(model.layers[0].value.weight))
    assert grids.weights([32.0, 32.0]) == {}
    # The 2-8-bit scales are kept until the refresh: moved weights stay on the old grid until then.
    with torch.no_grad():
        model.layers[1].output.weight.mul_(3.0)
    grids.next_batch()
    stale = grids.weights([32.0, 8.0])["layers.1.output.weight"]
    assert not torch.equal(stale, quantize(model.layers[1].output.weight.detach(), 8.0))
    grids.next_batch()
    assert torch.equal(grids.weights([32.0, 8.0])["layers.1.output.weight"],
                       quantize(model.layers[1].output.weight.detach(), 8.0))


def test_in_place_targets_are_the_largest_config_s_outputs_in_the_teacher_s_places():
    from spikeprune.training._distill import DistillLoss
    from spikeprune.training._elastic import _inplace_target

    model = tiny_elastic([16, 16], seed=2)
    batch = tiny_batch()
    loss_fn = DistillLoss(model.config, 16, 4, [1, 3], hidden_weight=1.0, attention_weight=1.0, logit_weight=1.0,
                          label_weight=0.0, temperature=1.0)
    with torch.no_grad():
        loss_fn.projections[1].weight.mul_(2.0)
    big = ElasticRunner(model, scores_for(model), refresh=1)(batch, CompressionConfig([4, 4], [32, 32], [16, 16], [32.0, 32.0]))
    target = _inplace_target(big, loss_fn, 5)
    assert torch.equal(target.logits, big.logits) and not target.logits.requires_grad
    assert target.hidden[0] is None and target.hidden[1] is None and target.hidden[3] is None
    assert torch.equal(target.hidden[2], loss_fn.projections[0](big.hidden_rates[0]))
    assert torch.equal(target.hidden[4], 2.0 * big.hidden_rates[1] + loss_fn.projections[1].bias)
    assert set(target.scores) == {1, 3} and torch.equal(target.scores[3], big.attention_scores[1])
    # Against its own outputs the largest config's hidden and attention losses are zero.
    _, parts = loss_fn(big, target, batch, model.loss)
    assert parts["hid"] == 0.0 and parts["att"] == 0.0 and parts["log"] > 0.0


def test_the_weight_average_moves_by_one_minus_its_decay_and_is_not_trained():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 3.0]]))
    average = WeightAverage(model, decay=0.75)
    assert list(average.parameters()) == [] and set(average.state_dict()) == {"weight", "bias"}
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, -1.0]]))
    average.update(model)                              # 0.75 * old + 0.25 * new
    assert torch.equal(average.get_buffer("weight"), torch.tensor([[2.0, 2.0]]))
    average.copy_to(model)
    assert torch.equal(model.weight, torch.tensor([[2.0, 2.0]]))


def test_mixed_targets_send_only_full_width_configs_to_the_largest():
    largest = CompressionConfig([4, 4], [32, 32], [16, 16], [32.0, 32.0])
    fewer_steps_and_bits = CompressionConfig([4, 4], [32, 32], [2, 16], [2.0, 32.0])
    one_head_less = CompressionConfig([4, 3], [32, 32], [16, 16], [32.0, 32.0])
    fewer_neurons = CompressionConfig([4, 4], [32, 24], [1, 1], [2.0, 2.0])
    assert _learns_from_largest("mixed", fewer_steps_and_bits, largest)
    assert not _learns_from_largest("mixed", one_head_less, largest)
    assert not _learns_from_largest("mixed", fewer_neurons, largest)
    assert all(_learns_from_largest("largest", c, largest) for c in (fewer_steps_and_bits, one_head_less))
    assert not any(_learns_from_largest("teacher", c, largest) for c in (fewer_steps_and_bits, one_head_less))


def test_training_options_train_another_float32_student(tmp_path, tiny_prepared, glue_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_prepared / "teacher")
    tok = AutoTokenizer.from_pretrained(tiny_prepared / "teacher")
    converted = SpikingBertForSequenceClassification.from_pretrained(tiny_prepared / "student")
    scores = load_importance(tiny_prepared / "importance.safetensors", converted.config)
    untrained = elastic_from_converted(converted, list(batches(load_split("sst2", "train", glue_dir, tok, 32, 8, 1), 4)))

    def train(folder: str, preset) -> dict[str, torch.Tensor]:
        train_elastic(copy.deepcopy(untrained), teacher, scores, "sst2", glue_dir, tmp_path / folder, preset,
                      tokenizer=tok, seed=1)
        return load_file(str(tmp_path / folder / "student" / "model.safetensors"))

    plain = train("plain", ELASTIC)
    options = {"largest": {"elastic_targets": "largest"}, "mixed": {"elastic_targets": "mixed"},
               "bf16": {"elastic_bf16": True}, "averaged": {"elastic_average": 0.5},
               "small weight": {"elastic_small_weight": 0.5}}
    for option, changes in options.items():
        other = train(option, dataclasses.replace(ELASTIC, **changes))
        assert plain.keys() == other.keys() and all(v.dtype == plain[k].dtype for k, v in other.items()), option
        assert other["layers.0.query.weight"].dtype == torch.float32, option
        assert not torch.equal(plain["layers.0.query.weight"], other["layers.0.query.weight"]), option
