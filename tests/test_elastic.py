"""The time-elastic family: neurons by hand, simulation against its quantized twin (values and
every count, bit for bit), batched against lockstep, counting by hand, saving and loading."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from spikeprune.costs import count_ops
from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._elastic import MAX_STEPS
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.models._neurons import ElasticIFNeuron
from spikeprune.errors import SpikepruneError


def tiny_elastic(timesteps, residual: str = "unit", seed: int = 0) -> SpikingBertForSequenceClassification:
    """A random elastic model whose θ table is a plausible one: θ(T) = λ/T per population."""
    torch.manual_seed(seed)
    config = SpikingBertConfig(vocab_size=40, hidden_size=16, num_layers=2, head_dim=4, heads=4,
                               intermediate_sizes=32, timesteps=timesteps, max_position_embeddings=16,
                               family="elastic", readout="cls", residual_thresholds=residual)
    model = SpikingBertForSequenceClassification(config).eval()
    steps = torch.arange(1, MAX_STEPS + 1, dtype=torch.float32)
    with torch.no_grad():
        model.encoder_threshold.copy_(3.0 / steps)
        for layer in model.layers:
            layer.thresholds.copy_((torch.rand(layer.thresholds.shape[1]) * 2 + 0.5)[None] / steps[:, None])
            if layer.unit_scales is not None:
                layer.unit_scales.uniform_(0.5, 1.5)
    return model


def tiny_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return {"input_ids": torch.randint(0, 40, (3, 9), generator=generator), "attention_mask": mask,
            "token_type_ids": torch.zeros(3, 9, dtype=torch.long)}


@pytest.mark.parametrize("current, steps, count", [
    (2.6, 2, 2), (2.6, 4, 3), (2.4, 4, 2), (0.5, 3, 1), (0.49, 3, 0), (-0.5, 3, 0), (-0.51, 3, -1),
    (-1.6, 1, -1), (-1.6, 5, -2), (-9.0, 16, -9), (40.0, 16, 16)])
def test_neuron_sends_the_rounded_count_by_hand(current, steps, count):
    theta = torch.tensor(0.5)
    currents = torch.zeros(steps, 1)
    currents[0, 0] = current * 0.5                          # the whole input at the first step, in θ units: current
    train = ElasticIFNeuron().run(currents, theta)
    assert int(train.sum()) == count
    assert int(train.abs().sum()) == abs(count)              # one sign, at most one spike per step
    assert train.abs().max() <= 1


@pytest.mark.parametrize("timesteps", [[4, 4], [16, 1], [1, 7], [2, 16]])
@pytest.mark.parametrize("residual", ["unit", "population"])
def test_twin_equals_the_simulation_bit_for_bit(timesteps, residual):
    model = tiny_elastic(timesteps, residual)
    batch = tiny_batch()
    simulated = model(**batch, mode="batched", record=True)
    twin = model(**batch, mode="twin", record=True)
    assert torch.equal(simulated.logits, twin.logits)
    assert all(torch.equal(a, b) for a, b in zip(simulated.hidden_rates, twin.hidden_rates))
    assert simulated.record.layers == twin.record.layers
    assert sum(simulated.record.layers[0].values()) > 0
    lockstep = model(**batch, mode="lockstep", record=True)
    assert torch.equal(lockstep.logits, simulated.logits) and lockstep.record.layers == simulated.record.layers
    surrogate = model(**batch, mode="surrogate")
    assert torch.allclose(surrogate.logits, simulated.logits, atol=1e-5)


def test_counts_are_bounded_by_the_steps():
    model = tiny_elastic([3, 2])
    seen = {}
    model.spike_observer = lambda layer, name, train: seen.setdefault((layer, name), train)
    model(**tiny_batch(), mode="batched")
    for (layer, name), train in seen.items():
        steps = train.shape[0]
        assert train.abs().max() <= 1
        assert train.sum(dim=0).abs().max() <= steps
        assert steps == ([3, 2][layer] if name != "input" else [3, 3][layer])


def test_fewer_steps_send_fewer_spikes():
    batch = tiny_batch()
    sops = [count_ops(tiny_elastic([t, t]).config, tiny_elastic([t, t])(**batch, mode="twin", record=True).record).sops
            for t in (1, 2, 4, 8, 16)]
    assert sops == sorted(sops)


def test_float_operations_by_hand():
    # One example of 2 tokens, hidden 16, 4 heads of 4, FFN 32, 2 layers: operators run once per
    # token whatever T, and the context is one float product P·V (token pairs 4 × inner 16).
    model = tiny_elastic([5, 9])
    batch = {"input_ids": torch.tensor([[3, 7]]), "attention_mask": torch.ones(1, 2, dtype=torch.long),
             "token_type_ids": torch.zeros(1, 2, dtype=torch.long)}
    report = count_ops(model.config, model(**batch, mode="twin", record=True).record)
    short = count_ops(dataclasses.replace(model.config, timesteps=[1, 1]),
                      tiny_elastic([1, 1])(**batch, mode="twin", record=True).record)
    from spikeprune.costs._ops import GELU_OPS_PER_ELEMENT, LAYERNORM_OPS_PER_ELEMENT, SOFTMAX_OPS_PER_ENTRY
    assert report.macs_by_kind["layernorm"] == short.macs_by_kind["layernorm"] == 2 * 2 * 2 * 16 * LAYERNORM_OPS_PER_ELEMENT
    assert report.macs_by_kind["softmax"] == 2 * 4 * 4 * SOFTMAX_OPS_PER_ENTRY
    assert report.macs_by_kind["gelu"] == 2 * 2 * 32 * GELU_OPS_PER_ELEMENT
    assert report.macs_by_kind["attention"] == 2 * 4 * 16
    assert "increment" not in report.macs_by_kind
    assert (report.sum_t, report.max_t) == (14, 9)


def test_save_and_load_keep_the_threshold_table(tmp_path):
    model = tiny_elastic([3, 5])
    loaded = SpikingBertForSequenceClassification.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert loaded.config == model.config
    batch = tiny_batch()
    a, b = model(**batch, record=True), loaded(**batch, record=True)
    assert torch.equal(a.logits, b.logits) and a.record.layers == b.record.layers


def test_more_steps_than_the_table_is_refused():
    with pytest.raises(SpikepruneError, match="1..16"):
        tiny_elastic([17, 4])
    with pytest.raises(SpikepruneError, match="no exact quantized twin"):
        SpikingBertForSequenceClassification(SpikingBertConfig(
            vocab_size=40, hidden_size=16, num_layers=1, head_dim=4, heads=4, intermediate_sizes=32,
            max_position_embeddings=16, family="converted"))(**tiny_batch(), mode="twin")


def test_elastic_from_converted_keeps_the_weights_and_fills_the_table():
    from spikeprune.training._convert import elastic_from_converted

    torch.manual_seed(3)
    config = SpikingBertConfig(vocab_size=40, hidden_size=16, num_layers=2, head_dim=4, heads=4,
                               intermediate_sizes=32, timesteps=16, max_position_embeddings=16,
                               family="converted", readout="cls", residual_thresholds="unit")
    converted = SpikingBertForSequenceClassification(config).eval()
    with torch.no_grad():
        converted.encoder_threshold.fill_(0.4)
        for layer in converted.layers:
            layer.thresholds.fill_(0.3)
    batch = tiny_batch()
    batch["labels"] = torch.zeros(3, dtype=torch.long)
    elastic = elastic_from_converted(converted, [batch])
    assert elastic.config.family == "elastic" and elastic.config.timesteps == [16, 16]
    weights = {k: v for k, v in converted.state_dict().items() if not k.endswith(("thresholds", "encoder_threshold"))}
    assert all(torch.equal(v, elastic.state_dict()[k]) for k, v in weights.items())
    for layer in elastic.layers:
        assert (layer.thresholds > 0).all() and (layer.thresholds[0] > layer.thresholds[-1]).all()
    assert elastic.encoder_threshold[0] > elastic.encoder_threshold[-1] > 0
