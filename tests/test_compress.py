"""Importance scores, physical pruning (checked against masking) and per-layer timesteps."""
from __future__ import annotations

import pytest
import torch

from spikeprune.models import _compress as compress
from spikeprune.models._config import SpikingBertConfig
from spikeprune.errors import SpikepruneError
from spikeprune.models._compress import quantize_model
from spikeprune.models._model import SpikingBertForSequenceClassification

from helpers import FIRING, tiny_model

HEAD_DIM = 4


def tiny_batch(size: int = 4, length: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(size, length, dtype=torch.long)
    attention_mask[1, 5:] = 0                                   # one padded example
    return {"input_ids": torch.randint(0, 50, (size, length), generator=generator),
            "attention_mask": attention_mask,
            "token_type_ids": torch.zeros(size, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (size,), generator=generator)}


def run(model: SpikingBertForSequenceClassification, batch: dict, **kwargs):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **kwargs)


@pytest.fixture(scope="module")
def model() -> SpikingBertForSequenceClassification:
    model = tiny_model(**FIRING)
    counts = run(model, tiny_batch(), record=True).record.layers
    assert all(value > 0 for layer in counts for value in layer.values()), "the tiny model must spike everywhere"
    return model


@pytest.fixture(scope="module")
def scores(model) -> dict[str, torch.Tensor]:
    return compress.compute_importance(model, [tiny_batch(seed=1), tiny_batch(seed=2)])


def spikes_into(model: SpikingBertForSequenceClassification, batch: dict) -> list[dict[str, torch.Tensor]]:
    """Per layer, the context and intermediate spike trains (inputs of attn_out and output)."""
    trains: list[dict[str, torch.Tensor]] = [{} for _ in model.layers]
    handles = []
    for l, layer in enumerate(model.layers):
        for name, module in (("context", layer.attn_out), ("intermediate", layer.output)):
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, l=l, name=name: trains[l].__setitem__(name, args[0].clone())))
    try:
        with torch.no_grad():
            run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return trains


# --------------------------------------------------------------------------- pruning == masking
@pytest.mark.parametrize("method", compress.METHODS)
def test_pruned_equals_masked(model, scores, method):
    keep_heads, keep_neurons = [2, 3], [10, 21]
    pruned = compress.prune(model, keep_heads, keep_neurons, scores, method)
    masked = compress.mask(model, keep_heads, keep_neurons, scores, method)
    batch = tiny_batch(seed=3)
    a, b = run(pruned, batch, record=True), run(masked, batch, record=True)

    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_rates, b.hidden_rates))
    # Masked units never fire, so even the totals (K, V, context, intermediate, ...) agree.
    assert a.record.layers == b.record.layers
    assert a.record.layers != run(model, batch, record=True).record.layers

    heads, neurons = compress.select_units(model, keep_heads, keep_neurons, scores, method)
    for l, (x, y) in enumerate(zip(spikes_into(pruned, batch), spikes_into(masked, batch))):
        rows = (heads[l][:, None] * HEAD_DIM + torch.arange(HEAD_DIM)).flatten()
        assert torch.equal(x["context"], y["context"][..., rows])
        assert torch.equal(x["intermediate"], y["intermediate"][..., neurons[l]])
        assert y["context"].sum() == x["context"].sum() > 0       # dropped heads silent
        assert y["intermediate"].sum() == x["intermediate"].sum() > 0
        assert torch.allclose(a.attention_scores[l], b.attention_scores[l][:, heads[l]])


def test_pruning_keeps_the_highest_scored_units_in_order(model):
    scores = {f"grad.head.{l}": torch.tensor([0.1, 0.9, 0.5, 0.9]) for l in range(2)}
    scores |= {f"grad.neuron.{l}": torch.arange(32, dtype=torch.float32) % 5 for l in range(2)}
    # heads: 0.9 (1), 0.9 (3) -> ties to the lower index, kept in original order: [1, 3]
    # neurons: score 4 at 4, 9, 14, 19, 24, 29; keeping 3 gives [4, 9, 14]; all six plus the first 3s
    pruned = compress.prune(model, [2, 1], [3, 8], scores)
    assert pruned.config.heads == [2, 1] and pruned.config.intermediate_sizes == [3, 8]

    base, small = model.layers[0], pruned.layers[0]
    rows = torch.tensor([4, 5, 6, 7, 12, 13, 14, 15])          # heads 1 and 3
    for name in ("query", "key", "value"):
        assert torch.equal(getattr(small, name).weight, getattr(base, name).weight[rows])
        assert torch.equal(getattr(small, name).bias, getattr(base, name).bias[rows])
    assert torch.equal(small.attn_out.weight, base.attn_out.weight[:, rows])
    assert torch.equal(small.attn_out.bias, base.attn_out.bias)
    assert torch.equal(small.intermediate.weight, base.intermediate.weight[[4, 9, 14]])
    assert torch.equal(small.output.weight, base.output.weight[:, [4, 9, 14]])

    heads, neurons = compress.select_units(model, [2, 1], [3, 8], scores)
    assert heads[1].tolist() == [1]
    assert neurons[1].tolist() == [3, 4, 8, 9, 14, 19, 24, 29]


def test_pruned_model_is_smaller_and_round_trips(model, scores, tmp_path):
    pruned = compress.prune(model, [1, 2], [8, 16], scores)
    assert pruned.num_parameters() < model.num_parameters()
    removed_per_head = 4 * (16 * HEAD_DIM) + 3 * HEAD_DIM          # Q/K/V rows + attn_out columns + biases
    removed_per_neuron = 2 * 16 + 1                                # intermediate row + output column + bias
    assert model.num_parameters() - pruned.num_parameters() == 5 * removed_per_head + 40 * removed_per_neuron

    loaded = SpikingBertForSequenceClassification.from_pretrained(pruned.save_pretrained(tmp_path / "pruned"))
    assert loaded.config == pruned.config
    batch = tiny_batch(seed=4)
    assert torch.equal(run(loaded, batch).logits, run(pruned, batch).logits)
    assert torch.equal(model.layers[0].query.weight, tiny_model(**FIRING).layers[0].query.weight)  # base untouched


def test_prune_keeping_everything_is_the_identity(model, scores):
    same = compress.prune(model, 4, 32, scores)
    batch = tiny_batch(seed=5)
    assert torch.equal(run(same, batch).logits, run(model, batch).logits)


def test_prune_rejects_bad_requests(model, scores):
    with pytest.raises(SpikepruneError, match="heads"):
        compress.prune(model, [5, 4], 32, scores)
    with pytest.raises(SpikepruneError, match="method"):
        compress.prune(model, 2, 16, scores, method="random")
    with pytest.raises(SpikepruneError, match="quantize"):
        compress.prune(quantize_model(model, [4, 32]), 2, 16, scores)
    pruned = compress.prune(model, 2, 16, scores)
    with pytest.raises(SpikepruneError, match="base model"):
        compress.prune(pruned, 1, 8, scores)


# ------------------------------------------------------------------------------- importance
def test_gradient_scores_are_nonzero_and_differ(scores):
    for l in range(2):
        head = scores[f"grad.head.{l}"]
        assert head.shape == (4,) and (head >= 0).all() and head.sum() > 0
        assert len(set(head.tolist())) > 1
        assert scores[f"grad.neuron.{l}"].shape == (32,) and scores[f"grad.neuron.{l}"].sum() > 0


def test_gradient_scores_match_weight_gradients(model):
    """∂L/∂ξ for a mask ξ on the inputs of a Linear equals Σ_i W_ij ∂L/∂W_ij over the masked columns
    j; with one example per batch, the score is the mean of its absolute value."""
    batch = tiny_batch(size=3, seed=6)
    singles = [{key: value[i:i + 1] for key, value in batch.items()} for i in range(3)]
    expected = {f"grad.{unit}.{l}": torch.zeros(size)
                for l in range(2) for unit, size in (("head", 4), ("neuron", 32))}
    for single in singles:
        model.zero_grad()
        run(model, single, labels=single["labels"], mode="surrogate").loss.backward()
        for l, layer in enumerate(model.layers):
            per_column = (layer.attn_out.weight * layer.attn_out.weight.grad).sum(dim=0)
            expected[f"grad.head.{l}"] += per_column.unflatten(0, (4, HEAD_DIM)).sum(dim=1).abs() / 3
            expected[f"grad.neuron.{l}"] += (layer.output.weight * layer.output.weight.grad).sum(dim=0).abs() / 3
    model.zero_grad(set_to_none=True)

    from_singles = compress.compute_importance(model, singles)
    from_batch = compress.compute_importance(model, [batch])     # per-example gradients inside a batch
    for key, value in expected.items():
        assert torch.allclose(from_singles[key], value, rtol=1e-4, atol=1e-7), key
        assert torch.allclose(from_batch[key], value, rtol=1e-4, atol=1e-7), key


def test_activity_scores_are_mean_firing_rates(model):
    batch = tiny_batch(seed=7)
    scores = compress.compute_importance(model, [batch])
    record = run(model, batch, record=True).record
    steps, tokens = model.config.timesteps, int(batch["attention_mask"].sum())
    for l in range(2):
        head, neuron = scores[f"activity.head.{l}"], scores[f"activity.neuron.{l}"]
        assert ((0 <= head) & (head <= 1)).all() and ((0 <= neuron) & (neuron <= 1)).all()
        context = float(head.sum()) * HEAD_DIM * tokens * steps[l]
        assert context == pytest.approx(record.layers[l]["context"], rel=1e-5)
        intermediate = float(neuron.sum()) * tokens * steps[l]
        assert intermediate == pytest.approx(record.layers[l]["intermediate"], rel=1e-5)


def test_compute_importance_leaves_the_model_alone(model):
    batch = tiny_batch(seed=8)
    before = run(model, batch).logits
    compress.compute_importance(model, [batch])
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(run(model, batch).logits, before)


def test_compute_importance_needs_labelled_batches(model):
    with pytest.raises(SpikepruneError, match="labels"):
        compress.compute_importance(model, [{**tiny_batch(), "labels": None}])
    with pytest.raises(SpikepruneError, match="no calibration"):
        compress.compute_importance(model, [])


def test_importance_cache_round_trip_and_mismatch(model, scores, tmp_path):
    path = compress.save_importance(scores, tmp_path / compress.IMPORTANCE_NAME)
    loaded = compress.load_importance(path, model.config)
    assert loaded.keys() == scores.keys()
    assert all(torch.equal(loaded[key], scores[key]) for key in scores)

    pruned = compress.prune(model, [2, 2], [16, 16], scores)
    with pytest.raises(SpikepruneError, match="shape"):
        compress.load_importance(path, pruned.config)
    three_layers = SpikingBertConfig(vocab_size=50, hidden_size=16, num_layers=3, head_dim=HEAD_DIM, heads=4,
                                     intermediate_sizes=32, max_position_embeddings=16)
    with pytest.raises(SpikepruneError, match="missing"):
        compress.load_importance(path, three_layers)
    with pytest.raises(SpikepruneError, match="not found"):
        compress.load_importance(tmp_path / "nope.safetensors", model.config)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SpikepruneError, match="readable"):
        compress.load_importance(tmp_path / "bad.safetensors", model.config)


# ------------------------------------------------------------------------------- timesteps
def test_set_timesteps(model):
    shorter = compress.set_timesteps(model, [4, 2])
    assert shorter.config.timesteps == [4, 2] and model.config.timesteps == [4, 4]
    batch = tiny_batch(seed=9)
    short, full = run(shorter, batch, record=True).record, run(model, batch, record=True).record
    assert short.layers[0] == full.layers[0]                     # layer 0 still runs 4 steps
    # "repeat" hands layer 1 the last 2 of layer 0's 4 steps: a subset of the full train.
    assert 0 < short.layers[1]["input"] < full.layers[1]["input"]

    rerouted = compress.set_timesteps(model, 3, boundary="rate")
    assert rerouted.config.timesteps == [3, 3] and rerouted.config.boundary == "rate"
    assert model.config.boundary == "repeat"
    with pytest.raises(SpikepruneError, match="timesteps"):
        compress.set_timesteps(model, [3, 2, 1])
    with pytest.raises(SpikepruneError, match="boundary"):
        compress.set_timesteps(model, 2, boundary="cut")


def test_early_stop_look_then_rest_equals_one_evaluation(tiny_prepared, glue_dir):
    """The staged kernel: a look that survives goes on with the rest only, and the merged result is
    the unsplit evaluation's (metric, predictions' CI, every spike count); a beaten look stops."""
    from spikeprune.models._config import CompressionConfig
    from spikeprune.trial._base import BaseBundle
    from spikeprune.trial._run import EarlyStop, run_trial

    base = BaseBundle.load(tiny_prepared, glue_dir, batch_size=5)
    compression = CompressionConfig(heads=1, neurons=32, timesteps=[2, 1])
    whole = run_trial(base, compression, max_examples=24)
    look = run_trial(base, compression, max_examples=10)
    goes_on = EarlyStop(examples=10, objectives=("metric", "sops"), directions=("maximize", "minimize"),
                        metric=0, margin=0.0, others=((look.metrics["metric"] - 0.1, look.report.sops * 2),))
    staged = run_trial(base, compression, max_examples=24, early_stop=goes_on)
    assert not staged.early_stopped and staged.examples == 24
    assert staged.metrics == whole.metrics and staged.metric_ci == whole.metric_ci
    assert staged.record == whole.record and staged.report.sops == whole.report.sops
    assert staged.partial == {"examples": 10, "objectives": look.objectives, "metrics": look.metrics}

    beaten = EarlyStop(examples=10, objectives=("metric", "sops"), directions=("maximize", "minimize"),
                       metric=0, margin=0.0, others=((look.metrics["metric"] + 0.1, look.report.sops),))
    stopped = run_trial(base, compression, max_examples=24, early_stop=beaten)
    assert stopped.early_stopped and stopped.examples == 10
    assert stopped.objectives == look.objectives and stopped.partial["objectives"] == look.objectives
    assert stopped.to_dict()["early_stopped"] is True


def test_later_looks_check_the_floor_and_a_survivor_equals_one_evaluation(tiny_prepared, glue_dir):
    """Looks at 8 and 16 of 24 examples: without a floor the trial goes on and equals the unsplit
    evaluation; with a floor between the two looks' upper bounds it passes the first look and
    stops at the second, told the values of the 16 examples it saw."""
    from spikeprune.models._config import CompressionConfig
    from spikeprune.trial._base import BaseBundle
    from spikeprune.trial._run import EarlyStop, run_trial

    base = BaseBundle.load(tiny_prepared, glue_dir, batch_size=5)
    compression = CompressionConfig(heads=1, neurons=32, timesteps=[2, 1])
    whole = run_trial(base, compression, max_examples=24)
    first, second = (run_trial(base, compression, max_examples=n) for n in (8, 16))

    def looks(floor):
        return EarlyStop(examples=8, objectives=("metric", "sops"), directions=("maximize", "minimize"),
                         metric=0, margin=0.0, floor=floor, later=(16,))

    staged = run_trial(base, compression, max_examples=24, early_stop=looks(None))
    assert not staged.early_stopped and staged.examples == 24
    assert staged.metrics == whole.metrics and staged.record == whole.record
    assert staged.partial["examples"] == 8

    assert second.metric_ci[1] < first.metric_ci[1]  # the tiny base's bounds at 16 and 8 examples
    floor = (first.metric_ci[1] + second.metric_ci[1]) / 2
    stopped = run_trial(base, compression, max_examples=24, early_stop=looks(floor))
    assert stopped.early_stopped and stopped.examples == 16
    assert stopped.metrics == second.metrics and stopped.record == second.record
    assert stopped.partial == {"examples": 8, "objectives": first.objectives, "metrics": first.metrics}


def test_a_later_look_stops_when_the_front_outruns_its_upper_bound(tiny_prepared, glue_dir):
    """Looks at 8 and 16 of 24 examples against one fully evaluated trial that costs nothing and
    scores between the two looks' upper bounds: the trial passes the first look and stops at the
    second, told the values of the 16 examples it saw."""
    from spikeprune.models._config import CompressionConfig
    from spikeprune.trial._base import BaseBundle
    from spikeprune.trial._run import EarlyStop, run_trial

    base = BaseBundle.load(tiny_prepared, glue_dir, batch_size=5)
    compression = CompressionConfig(heads=1, neurons=32, timesteps=[2, 1])
    first, second = (run_trial(base, compression, max_examples=n) for n in (8, 16))
    assert second.metric_ci[1] < first.metric_ci[1]
    done = ((first.metric_ci[1] + second.metric_ci[1]) / 2, 0.0)
    race = EarlyStop(examples=8, objectives=("metric", "sops"), directions=("maximize", "minimize"),
                     metric=0, margin=0.0, later=(16,), front=(done,))
    stopped = run_trial(base, compression, max_examples=24, early_stop=race)
    assert stopped.early_stopped and stopped.examples == 16 and stopped.metrics == second.metrics
