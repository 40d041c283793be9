"""The spiking model: neurons against hand-computed trains, the three simulation modes against each
other, the layer-boundary rules, and saving/loading."""
from __future__ import annotations

import json

import pytest
import torch

from spikeprune.models._checkpoint import CONFIG_NAME, WEIGHTS_NAME
from spikeprune.models._config import SpikingBertConfig
from spikeprune.errors import SpikepruneError
from spikeprune.models._neurons import IFNeuron
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.models._spikingbert import align_train

from helpers import tiny_model

# Currents chosen as binary fractions so every membrane value is exact.
CURRENTS = [1.0, 1.0, 0.5, 2.0, 0.0]
# IF, θ = 1.5: u = 1 | 2 fire -> .5 | 1 | 3 fire -> 1.5 | 1.5 fire (no input, soft reset kept it) -> 0
IF_TRAIN, IF_FINAL_U = [0, 1, 0, 1, 1], 0.0
# LIF, θ = 1.5, λ = .5: u = 1 -> .5 | 1.5 fire -> 0 | .5 -> .25 | 2.25 fire -> .75 -> .375 | .375 -> .1875
LIF_TRAIN, LIF_FINAL_U = [0, 1, 0, 1, 0], 0.1875


@pytest.mark.parametrize("leak, train, final_u", [(1.0, IF_TRAIN, IF_FINAL_U), (0.5, LIF_TRAIN, LIF_FINAL_U)])
def test_if_neuron_hand_trains(leak: float, train: list[int], final_u: float) -> None:
    neuron = IFNeuron(threshold=1.5, leak=leak)
    stepped = [int(neuron.step(torch.tensor([c]))) for c in CURRENTS]
    assert stepped == train
    assert neuron.u.item() == final_u
    # run() on a [T, B, L, D] train: neuron (0, 0, 0) gets the hand currents, (0, 0, 1) the negated
    # ones (never fires), position 1 is padding (silenced by the mask although its current is large).
    currents = torch.zeros(len(CURRENTS), 1, 2, 2)
    currents[:, 0, 0, 0] = torch.tensor(CURRENTS)
    currents[:, 0, 0, 1] = -torch.tensor(CURRENTS)
    currents[:, 0, 1, :] = 5.0
    mask = torch.tensor([[[1.0], [0.0]]])
    expected = torch.zeros_like(currents)
    expected[:, 0, 0, 0] = torch.tensor(train, dtype=torch.float32)
    fast = neuron.run(currents, token_mask=mask)                                    # compiled kernel
    slow = neuron.run(currents.clone().requires_grad_(), token_mask=mask)           # step() loop, as in training
    assert torch.equal(fast, expected) and torch.equal(slow.detach(), expected)
    assert neuron.run(currents)[:, 0, 1].sum() == 5 * 2                    # unmasked: fires every step


def test_align_train_repeat_takes_the_tail_cyclically() -> None:
    # Two neurons over 4 steps: n0 = 1001, n1 = 0110.
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]).view(4, 1, 1, 2)
    assert align_train(train, 4, "repeat", 1.0) is train
    shorter = align_train(train, 2, "repeat", 1.0)          # steps 2, 3
    assert shorter[:, 0, 0].T.tolist() == [[0, 1], [1, 0]]
    longer = align_train(train, 6, "repeat", 1.0)           # steps 2, 3, 0, 1, 2, 3
    assert longer[:, 0, 0].T.tolist() == [[0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 1, 0]]


@pytest.mark.parametrize("threshold", [1.0, 2.0])
def test_align_train_rate_reencodes_the_rate(threshold: float) -> None:
    # Five neurons over 4 steps with rates 0, 1/4, 1/2, 3/4, 1.
    train = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 0, 1], [0, 0, 0, 1, 1], [0, 1, 1, 1, 1]],
                         dtype=torch.float32).view(4, 1, 1, 5)
    # Constant current rate·θ into a fresh IF neuron of threshold θ:
    #   1/4 over 8 steps: .25 .5 .75 1 fire, and again -> 00010001
    #   1/2: .5 1 fire .5 1 fire ... -> 0101...; 3/4: .75 1.5 fire 1.25 fire 1 fire, repeat -> 0111 0111
    assert align_train(train, 4, "rate", threshold) is train
    two = align_train(train, 2, "rate", threshold)[:, 0, 0].T.tolist()
    assert two == [[0, 0], [0, 0], [0, 1], [0, 1], [1, 1]]
    eight = align_train(train, 8, "rate", threshold)[:, 0, 0].T.tolist()
    assert eight == [[0] * 8, [0, 0, 0, 1, 0, 0, 0, 1], [0, 1] * 4, [0, 1, 1, 1] * 2, [1] * 8]


def small_model(seed: int = 0, **changes) -> SpikingBertForSequenceClassification:
    """Layers of different widths (4 and 2 heads, FFN 24 and 10), three labels, θ = 0.8."""
    settings = dict(vocab_size=40, heads=[4, 2], intermediate_sizes=[24, 10], num_labels=3, threshold=0.8)
    return tiny_model("spikingbert", seed=seed, **{**settings, **changes})


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (4, 9), generator=generator)
    mask = torch.ones_like(ids)
    for row, length in enumerate([9, 6, 2, 7]):
        mask[row, length:] = 0
        ids[row, length:] = 0
    return ids, mask


@pytest.mark.parametrize("leak, boundary", [(1.0, "repeat"), (0.9, "rate")])
def test_lockstep_equals_batched_spike_for_spike(leak: float, boundary: str) -> None:
    model = small_model(leak=leak, boundary=boundary)
    ids, mask = padded_batch()
    batched = model(ids, mask, record=True)
    lockstep = model(ids, mask, record=True, mode="lockstep")
    assert batched.record == lockstep.record
    assert batched.record.layers[0]["output"] > 0        # the comparison is not between silent nets
    for a, b in zip(batched.hidden_rates, lockstep.hidden_rates):
        assert torch.equal(a, b)
    assert torch.equal(batched.logits, lockstep.logits)
    for a, b in zip(batched.attention_scores, lockstep.attention_scores):
        torch.testing.assert_close(a, b)                  # a mean of floats: summation order differs


def test_lockstep_needs_equal_timesteps() -> None:
    model = small_model(timesteps=[4, 3])
    ids, mask = padded_batch()
    assert model(ids, mask, record=True).record.layers[1]["input"] >= 0   # batched handles it
    with pytest.raises(SpikepruneError, match="same timesteps") as info:
        model(ids, mask, mode="lockstep")
    assert "\n" not in str(info.value)
    with pytest.raises(SpikepruneError, match="unknown simulation mode"):
        model(ids, mask, mode="fast")


def test_surrogate_values_are_the_simulation_and_every_parameter_learns() -> None:
    model = small_model(timesteps=[4, 3]).train()
    ids, mask = padded_batch()
    labels = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        batched = model(ids, mask, record=True)
    surrogate = model(ids, mask, labels=labels, record=True, mode="surrogate")
    assert torch.equal(surrogate.logits.detach(), batched.logits)
    assert surrogate.record == batched.record
    for a, b in zip(surrogate.hidden_rates, batched.hidden_rates):
        assert torch.equal(a.detach(), b)
    surrogate.loss.backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_save_and_load_give_identical_outputs(tmp_path) -> None:
    model = small_model(timesteps=[4, 2], weight_bits=32)
    ids, mask = padded_batch()
    folder = model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    loaded = SpikingBertForSequenceClassification.from_pretrained(folder)
    assert loaded.config == model.config
    before, after = model(ids, mask, record=True), loaded(ids, mask, record=True)
    assert torch.equal(before.logits, after.logits) and before.record == after.record


def one_line_error(folder) -> str:
    with pytest.raises(SpikepruneError) as info:
        SpikingBertForSequenceClassification.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_from_pretrained_errors_are_one_line(tmp_path) -> None:
    assert "does not exist" in one_line_error(tmp_path / "missing")
    folder = small_model().save_pretrained(tmp_path / "model")

    (folder / WEIGHTS_NAME).rename(tmp_path / "weights.bak")
    assert "missing" in one_line_error(folder)

    (folder / WEIGHTS_NAME).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "safetensors" in one_line_error(folder)

    (tmp_path / "weights.bak").rename(folder / WEIGHTS_NAME)
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "heads": [4, 1]}))        # shapes differ
    assert "config" in one_line_error(folder)
    one_layer = {**config, "num_layers": 1, "heads": 4, "intermediate_sizes": 24, "timesteps": 4, "weight_bits": 32}
    (folder / CONFIG_NAME).write_text(json.dumps(one_layer))
    assert "does not match" in one_line_error(folder)                                # keys differ
    (folder / CONFIG_NAME).write_text("{")
    assert "JSON" in one_line_error(folder)
    (folder / CONFIG_NAME).unlink()
    assert "not found" in one_line_error(folder)
