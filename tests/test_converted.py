"""The conversion-faithful family: signed neurons by hand, exact re-timing, batched = lockstep,
convergence to the quantized network it was converted from, counts by hand, and the pieces of the
pipeline (surrogate training, pruning, quantization, save/load) working on it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from spikeprune.models._compress import mask, prune, set_timesteps
from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._converted import encoder_theta, quantize_ste, retime
from spikeprune.models._neurons import SignedIFNeuron
from spikeprune.costs._ops import count_ops
from spikeprune.models._compress import quantize_model
from spikeprune.models._record import SimRecord
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.errors import SpikepruneError

from helpers import tiny_model

IDS = torch.tensor([[5, 17, 3, 9, 44, 2, 8], [1, 30, 12, 0, 0, 0, 0], [7, 7, 21, 40, 11, 13, 0]])
MASK = (IDS != 0).long()

#: Both ways of thresholding the residual stream, for the tests every model must pass.
RESIDUAL_MODES = pytest.mark.parametrize("residual", ["population", "unit"])


def trains(neuron: SignedIFNeuron, currents: list[float], theta: float = 1.0) -> str:
    neuron.reset()
    out = neuron.advance(torch.tensor(currents)[:, None], torch.tensor(theta))[:, 0]
    return " ".join(f"{int(s):+d}" if s else "0" for s in out)


def test_signed_neuron_by_hand():
    n = SignedIFNeuron(levels=2)
    # u starts at θ/2 = .5: 2.7 fires (1.7), 1.7 fires and reaches L = 2 (.7), -2.3 fires -1 (-1.3),
    # -1.3 fires -1 (-.3), -.3 fires -1 (.7): count -1 = round(2.2 - 3.0).
    assert trains(n, [2.2, 0, -3.0, 0, 0]) == "+1 +1 -1 -1 -1"
    assert trains(n, [5.0, 0, 0, 0]) == "+1 +1 0 0"            # clipped at L = 2 although u stays high
    assert trains(n, [-0.4, 0, 0]) == "0 0 0"                   # .1: rounds to 0
    assert trains(n, [-0.6, 0, 0]) == "-1 0 0"                  # -.1 fires -1, then .9
    assert trains(n, [0.6, 0, 0], theta=0.5) == "+1 0 0"         # .85 -> fires at θ = .5, .35 left


def test_quantizer_is_what_the_neurons_converge_to():
    x = torch.tensor([-9.0, -1.6, -1.5, -1.2, -0.2, 0.0, 0.49, 0.5, 1.5, 2.6, 9.0])
    theta = torch.tensor(1.0)
    expected = torch.tensor([-2.0, -2.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0])
    assert torch.equal(quantize_ste(x, theta, 2), expected)
    n = SignedIFNeuron(levels=2)
    for value, want in zip(x, expected):
        n.reset()
        assert n.advance(torch.tensor([[float(value)], [0.0], [0.0], [0.0]]), theta).sum() == want


def test_retime_keeps_the_counts():
    train = torch.tensor([[1.0], [-1.0], [1.0], [1.0]])
    assert retime(train, 4) is train
    assert retime(train, 2).tolist() == [[1.0], [1.0]]           # steps 1..3 merged: -1 + 1 + 1
    assert retime(train, 6).tolist() == [[1.0], [-1.0], [1.0], [1.0], [0.0], [0.0]]


@RESIDUAL_MODES
def test_batched_equals_lockstep_bit_for_bit(residual):
    m = tiny_model(residual_thresholds=residual)
    with torch.no_grad():
        b = m(IDS, MASK, mode="batched", record=True)
        l = m(IDS, MASK, mode="lockstep", record=True)
    assert torch.equal(b.logits, l.logits)
    assert all(torch.equal(x, y) for x, y in zip(b.hidden_rates, l.hidden_rates))
    assert b.record.layers == l.record.layers
    with pytest.raises(SpikepruneError, match="same timesteps"):
        set_timesteps(m, [6, 3])(IDS, MASK, mode="lockstep")


@pytest.mark.parametrize("family", ["converted", "spikingbert"])
def test_slicing_a_batch_changes_nothing(family, monkeypatch):
    """A batch simulated in slices of one example gives the logits, scores and counts of one piece."""
    if family == "converted":
        m = tiny_model()
    else:
        m = tiny_model(family, levels=4, readout="cls")
    with torch.no_grad():
        whole = m(IDS, MASK, mode="batched", record=True)
        monkeypatch.setattr(m, "slice_bytes", 1)
        sliced = m(IDS, MASK, mode="batched", record=True)
    assert torch.allclose(whole.logits, sliced.logits, atol=1e-6)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(whole.attention_scores, sliced.attention_scores))
    assert whole.record.layers == sliced.record.layers
    assert sliced.record.examples == 3 and sliced.record.tokens == int(MASK.sum())


@RESIDUAL_MODES
def test_enough_steps_reproduce_the_quantized_network_exactly(residual):
    m = tiny_model(residual_thresholds=residual)
    with torch.no_grad():
        quantized = m(IDS, MASK, mode="surrogate")
        for steps in (16, 32):
            spiking = set_timesteps(m, steps)(IDS, MASK, mode="batched")
            assert torch.equal(spiking.logits, quantized.logits)
            assert all(torch.equal(s * MASK[..., None], q) for s, q in zip(spiking.hidden_rates, quantized.hidden_rates))
        # One step per layer cannot carry L = 4 levels: the output differs.
        assert not torch.equal(set_timesteps(m, 1)(IDS, MASK).logits, quantized.logits)
        # Per-layer timesteps: the re-timed train keeps every count, and enough steps still converge.
        assert torch.equal(set_timesteps(m, [16, 24])(IDS, MASK).logits, quantized.logits)


def test_counts_by_hand():
    """One layer, hidden 2, two heads of 1, FFN 2, T = 3; a hand-made record of 2 examples with
    lengths 2 and 1 (tokens 3, token pairs 2·2 + 1·1 = 5)."""
    cfg = SpikingBertConfig(vocab_size=4, hidden_size=2, num_layers=1, head_dim=1, heads=2, intermediate_sizes=2,
                            timesteps=3, max_position_embeddings=2, type_vocab_size=1, num_labels=2,
                            readout="cls", family="converted", levels=4)
    counts = {"input": 7, "query": 4, "key": 7, "value": 6, "context": 6, "attn_out": 5, "intermediate": 6,
              "output": 8, "query_x_len": 9, "key_x_len": 12, "value_x_len": 10}
    report = count_ops(cfg, SimRecord(examples=2, tokens=3, token_pairs=5, layers=[counts]))
    # SOPs: Q, K, V each 7 input spikes x 2 outputs = 14; attention 9 + 12 + 10 products plus
    # 4 + 7 + 6 adds into the running Q, K, V sums = 48; attn_out 6 x 2 = 12; intermediate
    # 5 x 2 = 10; output 6 x 2 = 12; residual 7 + 5 = 12.  Total 136 over 2 examples.
    assert report.sops_per_layer[0] == {k: v / 2 for k, v in {
        "query": 14, "key": 14, "value": 14, "attention": 48, "attn_out": 12, "intermediate": 10,
        "output": 12, "residual": 12}.items()}
    assert report.totals["sops"] == 136
    # MACs: embedding 3·2·(2 + 5) = 42; LayerNorm 2·3·3·2·5 = 180; softmax 2·5·3·4 = 120;
    # GELU 3·3·2·5 = 90; biases once: 3·(2+2+2+2+2+2) = 36; increments 3·3·(2 + 2·2 + 2) + 2·5·3
    # = 102; ΔP·V 5·2·3 = 30; classifier per example 2 + 4 + 2 + 2 + 4 + 2 = 16, ×2 = 32.
    assert {k: v * 2 for k, v in report.macs_by_kind.items()} == {
        "embedding": 42, "layernorm": 180, "softmax": 120, "gelu": 90, "bias": 36, "classifier": 32,
        "increment": 102, "attention": 30}
    assert report.totals["macs"] == 632
    assert report.firing_rates[0]["query"] == pytest.approx(4 / (2 * 3 * 3))


def test_recorded_counts_are_spikes_of_either_sign():
    m = tiny_model()
    with torch.no_grad():
        out = m(IDS, MASK, mode="batched", record=True)
    report = count_ops(m.config, out.record)
    assert report.sops > 0 and report.macs_by_kind["increment"] > 0
    assert set(out.record.layers[0]) == {"input", "query", "key", "value", "context", "attn_out", "intermediate",
                                         "output", "query_x_len", "key_x_len", "value_x_len"}


@RESIDUAL_MODES
def test_pruning_masking_quantization_and_saving(tmp_path, residual):
    m = tiny_model(residual_thresholds=residual)
    scores = {f"grad.{unit}.{l}": torch.arange(size, dtype=torch.float32)
              for l in range(2) for unit, size in (("head", 2), ("neuron", 24))}
    pruned, masked = prune(m, 1, 12, scores), mask(m, 1, 12, scores)
    with torch.no_grad():
        assert torch.allclose(pruned(IDS, MASK).logits, masked(IDS, MASK).logits, atol=1e-5)
        assert pruned.config.heads == [1, 1] and pruned.config.family == "converted"
        quantized = quantize_model(pruned, [4, 8])
        folder = quantized.save_pretrained(tmp_path / "export", packed=True)
        loaded = SpikingBertForSequenceClassification.from_pretrained(folder)
        assert torch.equal(loaded(IDS, MASK).logits, quantized(IDS, MASK).logits)
        assert torch.equal(loaded.layers[0].thresholds, quantized.layers[0].thresholds)
        assert torch.equal(encoder_theta(loaded), encoder_theta(m))
        assert all(torch.equal(a.theta("output"), b.theta("output")) for a, b in zip(loaded.layers, m.layers))


@RESIDUAL_MODES
def test_surrogate_training_moves_weights_and_thresholds(residual):
    m = tiny_model(residual_thresholds=residual).train()
    labels = torch.tensor([0, 1, 1])
    out = m(IDS, MASK, labels=labels, mode="surrogate")
    out.loss.backward()
    assert m.layers[0].query.weight.grad.abs().sum() > 0
    assert m.layers[1].thresholds.grad.abs().sum() > 0 and torch.isfinite(m.layers[1].thresholds.grad).all()
    if residual == "unit":
        for scales in (m.encoder_scales, m.layers[0].unit_scales, m.layers[1].unit_scales):
            assert scales.grad.abs().sum() > 0 and torch.isfinite(scales.grad).all()
    with pytest.raises(SpikepruneError, match="surrogate mode runs no spikes"):
        m(IDS, MASK, mode="surrogate", record=True)


def test_unit_thresholds_by_hand():
    """Per-unit θ at the 100th percentile: each residual unit's step is its own max |activation| / L.

    Hidden 2, L = 4. The embedding of the one real token (the other is padding, and ignored) is
    LayerNorm([a, b]) = [-1, 1] for any a < b, so both units' max |x| is 1: θ = 1/4, scales 1.
    The layer's attn_out with zero attention weights is LayerNorm(0 + x) = [-1, 1] again; with
    the output LayerNorm's gain set to [4, 1] the output is [-4, 1]: θ_output = 4/4 = 1 (the
    population's max) and the unit scales [1, 1/4] (units' max 4 and 1, over 4).
    """
    from spikeprune.training._convert import calibrate_thresholds

    cfg = SpikingBertConfig(vocab_size=4, hidden_size=2, num_layers=1, head_dim=1, heads=2, intermediate_sizes=2,
                            timesteps=4, max_position_embeddings=4, type_vocab_size=1, family="converted", levels=4,
                            readout="cls", residual_thresholds="unit")
    m = SpikingBertForSequenceClassification(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.embeddings.word_embeddings.weight[1] = torch.tensor([0.0, 3.0])
        m.embeddings.LayerNorm.weight.fill_(1.0)
        layer = m.layers[0]
        layer.attn_norm.weight.fill_(1.0)
        layer.out_norm.weight.copy_(torch.tensor([4.0, 1.0]))
    batch = {"input_ids": torch.tensor([[1, 0]]), "attention_mask": torch.tensor([[1, 0]]),
             "token_type_ids": torch.zeros(1, 2, dtype=torch.long)}
    found = calibrate_thresholds(m, [batch], percentile=100.0)
    assert found["encoder"] == pytest.approx(0.25) and found["layers.0.attn_out"] == pytest.approx(0.25)
    assert found["layers.0.output"] == pytest.approx(1.0)
    assert torch.allclose(encoder_theta(m), torch.tensor([0.25, 0.25]), atol=1e-5)
    assert torch.allclose(layer.theta("attn_out"), torch.tensor([0.25, 0.25]), atol=1e-5)
    assert torch.allclose(layer.theta("output"), torch.tensor([1.0, 0.25]), atol=1e-5)
    assert torch.allclose(layer.unit_scales[1], torch.tensor([1.0, 0.25]), atol=1e-5)
    assert layer.theta("query").shape == ()  # the other populations keep one θ


def test_unit_thresholds_need_the_converted_family():
    with pytest.raises(SpikepruneError, match="residual_thresholds='unit'"):
        SpikingBertConfig(residual_thresholds="unit")
    with pytest.raises(SpikepruneError, match="residual_thresholds 'channel' is unknown"):
        SpikingBertConfig(family="converted", residual_thresholds="channel")


@pytest.fixture(scope="module", params=["converted", "spikingbert"])
def family_prepared(request, tmp_path_factory, glue_dir) -> tuple[str, Path]:
    """A tiny prepared base of each family at T = 8: the converted one as the quick preset makes it
    (calibrated thresholds, a short QAT distillation), the SpikingBERT one with its readout
    standardised and a surrogate distillation."""
    from spikeprune.training._prepare import prepare
    from spikeprune.training._presets import PRESETS

    preset = dataclasses.replace(PRESETS["tiny"], family=request.param, timesteps=8)
    return request.param, prepare("sst2", glue_dir, tmp_path_factory.mktemp(request.param), preset=preset)


@pytest.mark.integration
def test_prepare_search_and_export_a_base_of_each_family(family_prepared, tmp_path, glue_dir, ray_local):
    from spikeprune import (BaseBundle, CompressionConfig, PreparedRecord, SearchSettings, export_trial,
                            run_search, run_trial)

    family, prepared = family_prepared
    record = PreparedRecord.read(prepared)
    assert record.preset_config["family"] == family and record.timesteps == [8, 8]
    base = BaseBundle.load(prepared, glue_dir)
    assert base.student.config.family == family
    if family == "converted":   # calibrated thresholds and the teacher's [CLS] pooler
        assert base.student.config.readout == "cls"
        assert all((layer.thresholds > 0).all() for layer in base.student.layers)
    else:                       # the mean rate, standardised
        assert base.student.config.readout == "mean"
    dense = run_trial(base, CompressionConfig(), max_examples=16)
    if family == "converted":
        assert dense.report.firing_rates[0]["context"] > 0  # the attention path carries spikes
    small = run_trial(base, CompressionConfig(heads=1, neurons=32, timesteps=[4, 8], weight_bits=4,
                                              recovery_steps=1), max_examples=16)
    assert small.report.sops < dense.report.sops

    space = tmp_path / "space.yaml"
    space.write_text("name: conv\nheads: {per_layer: true, min: 1, max: 2}\ntimesteps: {min: 2, max: 8, step: 2}\n"
                     "objectives: [{name: metric, direction: maximize}, {name: sops, direction: minimize}]\n")
    study = run_search(SearchSettings(prepared=prepared, space=space, study_name="conv", n_trials=3,
                                      workers=2, run_dir=tmp_path, max_examples=16, progress=False)).study
    done = [t for t in study.trials if t.values is not None]
    assert len(done) >= 3
    exported = export_trial(study, done[-1], tmp_path / "export", prepared, glue_dir)
    assert exported.ok, exported.problems
