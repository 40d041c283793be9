"""Operation counting checked against counts worked out by hand on a one-layer network.

The network: hidden 2, two heads of head_dim 1, intermediate 2, T = 3, threshold 1, IF (leak 1).
Every weight is a small binary fraction so each current, and so each spike, is exact.

A LayerNorm over two features maps [a, b] to sign(a - b)·[1, -1] (or [0, 0] when a == b), which
is what makes the whole run computable by hand. Every bias is 0 and Q's weight is 0, so all
attention scores are 0 and the softmax is uniform over the example's real keys.

Inputs (token ids; word embeddings P = [1, -1], N = [-1, 1], Z = [0, 0]; positions and types 0):
  example 0 = [P, N] (length 2), example 1 = [Z, pad] (length 1).
Embedding LayerNorm γ = [.5, .25], β = [.5, .5]: P -> [1, .25], N -> [0, .75], Z -> [.5, .5].
Token A = ex0 pos0, B = ex0 pos1, C = ex1 pos0. IF trains (t = 0, 1, 2) from constant current:
  1 -> 111, .75 -> 011 (.75, 1.5 fire, 1.25 fire), .5 -> 010 (.5, 1 fire, .5), .25 -> 000, 0 -> 000.

input x (per token, dims x0 | x1):     A 111 | 000    B 000 | 011    C 010 | 010       = 7 spikes
key   Wk = [[1, 0], [.5, .5]]:  k0 = IF(x0), k1 = IF(.5·(x0 + x1))
      A k0 111, k1 IF(.5,.5,.5) = 010;  B k0 000, k1 IF(0,.5,.5) = 001;  C k0 010, k1 IF(0,1,0) = 010
      = 3+1 + 0+1 + 1+1 = 7 spikes; key_x_len = 5 spikes (ex0) · 2 + 2 (ex1) · 1 = 12
value Wv = [[.5, .5], [0, 1]]:  v0 = IF(.5·(x0 + x1)), v1 = IF(x1)
      A v0 010, v1 000;  B v0 001, v1 011;  C v0 010, v1 010
      = 1+0 + 1+2 + 1+1 = 6 spikes; value_x_len = 4 · 2 + 2 · 1 = 10
context (uniform probs): ex0 both queries get (v_A + v_B)/2: head0 (0, .5, .5) -> 001,
      head1 (0, .5, .5) -> 001; ex1 gets v_C: 010, 010.   A 001|001  B 001|001  C 010|010 = 6
attn_out: pre-LN = Wo·c + x with Wo = [[0, 0], [1, 0]] -> [x0, x1 + c0]
      A (1,0) (1,0) (1,1) -> LN [1,-1] [1,-1] [0,0];  B (0,0) (0,1) (0,2) -> [0,0] [-1,1] [-1,1];
      C (0,0) (1,2) (0,0) -> [0,0] [-1,1] [0,0].  γ = [.5, .5], β = [.5, .25] makes
      [1,-1] -> [1, -.25], [-1,1] -> [0, .75], [0,0] -> [.5, .25]:
      A a0 IF(1,1,.5) = 110, a1 IF(-.25,-.25,.25) = 000;  B a0 IF(.5,0,0) = 000, a1 IF(.25,.75,.75) = 010;
      C a0 IF(.5,0,.5) = 001, a1 IF(.25,.75,.25) = 010                                          = 5
intermediate: GELU(Wi·a), Wi = [[2, 0], [1, 1]]; g1 = GELU(1) = .841, g2 = GELU(2) = 1.955
      A m0 IF(g2,g2,0) = 111 (1.955 fire .955, 2.909 fire 1.909, 1.909 fire), m1 IF(g1,g1,0) = 010
      B m0 000, m1 IF(0,g1,0) = 000;  C m0 IF(0,0,g2) = 001, m1 IF(0,g1,g1) = 001               = 6
output: pre-LN = Wout·m + a with Wout = I -> [m0 + a0, m1 + a1]
      A (2,0) (2,1) (1,0) -> [1,-1] ×3;  B (0,0) (0,1) (0,0) -> [0,0] [-1,1] [0,0];
      C (0,0) (0,1) (2,1) -> [0,0] [-1,1] [1,-1].  γ = [.5, .5], β = [.5, .5]:
      [1,-1] -> [1, 0], [-1,1] -> [0, 1], [0,0] -> [.5, .5]:
      A y0 111, y1 000;  B y0 IF(.5,0,.5) = 001, y1 IF(.5,1,.5) = 011;
      C y0 IF(.5,0,1) = 001, y1 IF(.5,1,0) = 010                                                = 8
"""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from spikeprune.models._config import SpikingBertConfig
from spikeprune.errors import SpikepruneError
from spikeprune.costs._ops import (
    ENERGY_PRESETS, MAC_KINDS, SOP_BUCKETS, EnergyModel, OpReport, count_ops, count_parameters, format_report,
    resolve_energy, size_bits)
from spikeprune.models._record import SimRecord
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.models._families import FAMILIES

IDS = torch.tensor([[1, 2], [3, 0]])
MASK = torch.tensor([[1, 1], [1, 0]])

# Hand trains from the module docstring: {population: {token: (dim0, dim1)}}, token = (example, pos).
A, B, C, PAD = (0, 0), (0, 1), (1, 0), (1, 1)
HAND_TRAINS = {
    "input": {A: ("111", "000"), B: ("000", "011"), C: ("010", "010")},
    "key": {A: ("111", "010"), B: ("000", "001"), C: ("010", "010")},
    "value": {A: ("010", "000"), B: ("001", "011"), C: ("010", "010")},
    "context": {A: ("001", "001"), B: ("001", "001"), C: ("010", "010")},
    "attn_out": {A: ("110", "000"), B: ("000", "010"), C: ("001", "010")},
    "intermediate": {A: ("111", "010"), B: ("000", "000"), C: ("001", "001")},
    "output": {A: ("111", "000"), B: ("001", "011"), C: ("001", "010")},
}
HAND_COUNTS = {"input": 7, "key": 7, "value": 6, "context": 6, "attn_out": 5, "intermediate": 6, "output": 8,
               "key_x_len": 12, "value_x_len": 10}


def tiny_config(**changes) -> SpikingBertConfig:
    cfg = SpikingBertConfig(vocab_size=4, hidden_size=2, num_layers=1, head_dim=1, heads=2, intermediate_sizes=2,
                            timesteps=3, max_position_embeddings=2, type_vocab_size=1, num_labels=2,
                            readout="cls")
    return dataclasses.replace(cfg, **changes)


def tiny_model() -> SpikingBertForSequenceClassification:
    model = SpikingBertForSequenceClassification(tiny_config()).eval()
    values = {
        "embeddings.word_embeddings.weight": [[0, 0], [1, -1], [-1, 1], [0, 0]],
        "embeddings.LayerNorm.weight": [.5, .25], "embeddings.LayerNorm.bias": [.5, .5],
        "layers.0.key.weight": [[1, 0], [.5, .5]],
        "layers.0.value.weight": [[.5, .5], [0, 1]],
        "layers.0.attn_out.weight": [[0, 0], [1, 0]],
        "layers.0.attn_norm.weight": [.5, .5], "layers.0.attn_norm.bias": [.5, .25],
        "layers.0.intermediate.weight": [[2, 0], [1, 1]],
        "layers.0.output.weight": [[1, 0], [0, 1]],
        "layers.0.out_norm.weight": [.5, .5], "layers.0.out_norm.bias": [.5, .5],
    }
    with torch.no_grad():
        for name, param in model.named_parameters():   # everything not listed (Q, biases, ...) is 0
            param.copy_(torch.tensor(values.get(name, 0.0)).expand_as(param))
    return model


def hand_record() -> SimRecord:
    return SimRecord(examples=2, tokens=3, token_pairs=2 * 2 + 1 * 1, layers=[dict(HAND_COUNTS)])


def expected_train(population: str) -> torch.Tensor:
    train = torch.zeros(3, 2, 2, 2)  # [T, B, L, D]; the padded position stays silent
    for (b, pos), dims in HAND_TRAINS[population].items():
        for d, bits in enumerate(dims):
            train[:, b, pos, d] = torch.tensor([float(c) for c in bits])
    return train


def test_every_spike_matches_the_hand_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    trains: dict[str, torch.Tensor] = {}
    neurons = {"input": model.encoder_neuron, **model.layers[0].neurons}
    for name, neuron in neurons.items():
        def capture(currents, theta=None, *, token_mask=None, name=name, run=neuron.run):
            trains[name] = run(currents, theta, token_mask=token_mask)
            return trains[name]
        monkeypatch.setattr(neuron, "run", capture)
    out = model(IDS, MASK, record=True)
    for name in ("input", *FAMILIES["spikingbert"].populations):
        assert torch.equal(trains[name], expected_train(name)), name
    assert out.record == hand_record()
    # The classifier reads the output rate: A [1, 0], B [1/3, 2/3], C [1/3, 1/3].
    assert torch.equal(out.hidden_rates[0], expected_train("output").mean(dim=0))
    assert model(IDS, MASK, record=True, mode="lockstep").record == hand_record()


def test_hand_computed_operations() -> None:
    report = count_ops(tiny_config(), hand_record())
    # Fan-outs: Q, K, V heads·head_dim = 2 each; attn_out 2 (hidden); intermediate 2; output 2.
    sops = {"query": 7 * 2, "key": 7 * 2, "value": 7 * 2,       # 7 input spikes × 2
            "attention": 12 + 10,                                # key_x_len + value_x_len
            "attn_out": 6 * 2,                                   # 6 context spikes × hidden 2
            "intermediate": 5 * 2,                               # 5 attn_out spikes × intermediate 2
            "output": 6 * 2,                                     # 6 intermediate spikes × hidden 2
            "residual": 7 + 5}                                   # input + attn_out spikes, 1 add each
    assert report.sops_per_layer == [{k: v / 2 for k, v in sops.items()}]
    assert report.totals["sops"] == 110 == sum(sops.values())
    assert report.sops == 55
    # MACs over 3 real tokens, T = 3, hidden 2 (constants: embedding 2 adds, LN 5, softmax 4, GELU 5).
    macs = {"embedding": 3 * 2 * (2 + 5),                        # tokens · H · (adds + LN), once
            "layernorm": 2 * 3 * 3 * 2 * 5,                      # 2 LNs · tokens · T · H · 5
            "softmax": 2 * 5 * 3 * 4,                            # heads · Σ len² (4 + 1) · T · 4
            "gelu": 3 * 3 * 2 * 5,                               # tokens · T · intermediate · 5
            "bias": 3 * 3 * (2 + 2 + 2 + 2 + 2 + 2),            # tokens · T · outputs of the 6 Linears
            "classifier": 2 * (2 + 2 * 2 + 2 + 2 + 2 * 2 + 2)}   # examples · (readout, pooler+bias, tanh, classifier+bias)
    assert list(report.macs_by_kind) == list(MAC_KINDS)
    assert report.macs_by_kind == {k: v / 2 for k, v in macs.items()}
    assert report.totals["macs"] == 572 == sum(macs.values())
    assert report.macs == 286
    # Firing rates: spikes / (neurons · T · tokens) = spikes / (2 · 3 · 3) for every population.
    assert report.firing_rates == [{"input": 7 / 18, "key": 7 / 18, "value": 6 / 18, "context": 6 / 18,
                                    "attn_out": 5 / 18, "intermediate": 6 / 18, "output": 8 / 18}]
    assert (report.sum_t, report.max_t, report.timesteps) == (3, 3, [3])
    # Neurons per token: encoder 2 + key 2, value 2, context 2, attn_out 2, intermediate 2, output 2.
    assert report.neurons == 14
    assert report.neuron_updates == 3 * (2 * 3 + 12 * 3) / 2
    # 74 parameters: embeddings (4 + 2 + 1)·2 + LN 4 = 18; layer 6 Linears of 2×2 + 2 and two LNs of 4
    # = 44; pooler 6, classifier 6. All float: 74 · 32 bits.
    assert report.parameters == 74
    assert report.size_bits == report.size_bits_packed == 74 * 32
    assert report.size_mb == 74 * 32 / 8 / 1e6
    # float45nm: 0.9 pJ per AC, 4.6 pJ per MAC: (0.9·110 + 4.6·572) pJ = 2730.2 pJ for 2 examples.
    assert report.energy_uj == pytest.approx(2730.2e-6 / 2, rel=1e-12)
    assert report.energy_by_kind["ac"] == pytest.approx(99e-6 / 2, rel=1e-12)
    assert report.totals["energy_uj"] == pytest.approx(2730.2e-6, rel=1e-12)
    assert (report.examples, report.tokens_per_example) == (2, 1.5)


def test_mean_readout_adds_one_add_per_token_and_unit() -> None:
    # Same spikes, readout over the 3 real tokens (lengths 2 and 1) instead of [CLS]:
    # 3 tokens · hidden 2 = 6 more float adds, nothing else changes.
    record = hand_record()
    cls = count_ops(tiny_config(), record)
    mean = count_ops(tiny_config(readout="mean"), record)
    assert mean.totals["macs"] - cls.totals["macs"] == 6
    assert mean.totals["sops"] == cls.totals["sops"]


def test_quantized_size_by_hand() -> None:
    # 24 encoder weights (six 2×2 Linears); the other 50 parameters stay float (1600 bits);
    # each of their 2 output channels carries a 32-bit scale (6 · 2 · 32 = 384 bits).
    assert size_bits(tiny_config(weight_bits=4)) == 1600 + 384 + 24 * 4
    assert size_bits(tiny_config(weight_bits=1.58)) == pytest.approx(1600 + 384 + 24 * math.log2(3), rel=1e-15)
    assert size_bits(tiny_config(weight_bits=1.58), packed=True) == 1600 + 384 + 24 * 2
    assert size_bits(tiny_config(weight_bits=1)) == 1600 + 384 + 24


@pytest.mark.parametrize("family,residual", [("spikingbert", "population"), ("converted", "population"),
                                             ("converted", "unit")])
def test_parameter_count_matches_the_model(family: str, residual: str) -> None:
    cfg = SpikingBertConfig(vocab_size=30, hidden_size=8, num_layers=3, head_dim=2, heads=[4, 1, 3],
                            intermediate_sizes=[16, 5, 9], timesteps=[4, 2, 3], max_position_embeddings=12,
                            num_labels=3, family=family, residual_thresholds=residual)
    assert count_parameters(cfg) == SpikingBertForSequenceClassification(cfg).num_parameters()


def test_int45nm_energy_by_hand_and_bits_lower_energy() -> None:
    int45 = ENERGY_PRESETS["int45nm"]
    assert int45.weight_ac_pj(8) == pytest.approx(0.03)
    assert int45.weight_ac_pj(4) == pytest.approx(0.03 - 4 * 0.07 / 24)   # linear in width
    assert int45.weight_ac_pj(1.58) == pytest.approx(0.03 - 6.42 * 0.07 / 24)
    assert int45.weight_ac_pj(32) == 0.9                                  # 32-bit layers are float
    four = count_ops(tiny_config(weight_bits=4), hand_record(), "int45nm")
    dense = count_ops(tiny_config(weight_bits=32), hand_record(), "int45nm")
    # Weight ACs (query, key, value, attn_out, intermediate, output) = 14·3 + 12 + 10 + 12 = 76 at the
    # 4-bit add; attention + residual = 22 + 12 = 34 float adds at 0.9 pJ; 572 MACs at 4.6 pJ.
    e4 = 76 * (0.03 - 4 * 0.07 / 24) + 34 * 0.9 + 572 * 4.6
    assert four.energy_uj == pytest.approx(e4 * 1e-6 / 2, rel=1e-12)
    assert dense.energy_uj == pytest.approx(2730.2e-6 / 2, rel=1e-12)
    assert four.energy_uj < dense.energy_uj
    assert four.sops == dense.sops and four.macs == dense.macs
    # The bit-width-blind preset ignores the width.
    assert count_ops(tiny_config(weight_bits=4), hand_record()).energy_uj == dense.energy_uj


def test_fewer_heads_shrink_the_fanout_exactly() -> None:
    full = count_ops(tiny_config(heads=2), hand_record())
    pruned = count_ops(tiny_config(heads=1), hand_record())
    for bucket in ("query", "key", "value"):                # 7 input spikes lose one head_dim each
        assert full.sops_per_layer[0][bucket] - pruned.sops_per_layer[0][bucket] == 7 * 1 / 2
    for bucket in ("attention", "attn_out", "intermediate", "output", "residual"):
        assert full.sops_per_layer[0][bucket] == pruned.sops_per_layer[0][bucket]
    assert full.totals["sops"] - pruned.totals["sops"] == 3 * 7
    assert full.totals["macs"] - pruned.totals["macs"] == 5 * 3 * 4 + 3 * 3 * 3   # softmax; Q/K/V biases
    narrow = count_ops(tiny_config(intermediate_sizes=1), hand_record())   # 5 attn_out spikes lose 1 each
    assert full.totals["sops"] - narrow.totals["sops"] == 5
    assert pruned.size_bits < full.size_bits and narrow.size_bits < full.size_bits


def test_per_layer_timesteps_set_latency_and_scale_dense_work() -> None:
    torch.manual_seed(0)
    cfg = SpikingBertConfig(vocab_size=20, hidden_size=8, num_layers=2, head_dim=2, heads=[3, 2],
                            intermediate_sizes=[12, 6], timesteps=[5, 2], max_position_embeddings=8)
    model = SpikingBertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 20, (3, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    record = model(ids, mask, record=True).record
    assert (record.examples, record.tokens, record.token_pairs) == (3, 6 + 4 + 1, 36 + 16 + 1)
    report = count_ops(cfg, record)
    assert (report.sum_t, report.max_t) == (7, 5)
    n = 11   # real tokens
    assert report.totals["macs"] == (n * 8 * 7 + 2 * n * 8 * 5 * (5 + 2) + 53 * 4 * (3 * 5 + 2 * 2)
                                     + n * 5 * (12 * 5 + 6 * 2) + n * (5 * (3 * 6 + 16 + 12) + 2 * (3 * 4 + 16 + 6))
                                     + 3 * (8 + 64 + 8 + 8 + 16 + 2) + n * 8)   # ... + mean readout adds
    assert report.neuron_updates == n * (8 * 5 + 5 * (3 * 6 + 16 + 12) + 2 * (3 * 4 + 16 + 6)) / 3
    for layer in report.firing_rates:
        assert all(0 <= rate <= 1 for rate in layer.values())
    same_t = count_ops(dataclasses.replace(cfg, timesteps=[5, 5]), record)
    assert (same_t.sum_t, same_t.max_t) == (10, 5)
    assert same_t.macs > report.macs and same_t.sops == report.sops


def test_merged_batches_count_like_one_batch() -> None:
    model = tiny_model()
    merged = SimRecord()
    for b in range(2):
        length = int(MASK[b].sum())
        merged.merge(model(IDS[b:b + 1, :length], MASK[b:b + 1, :length], record=True).record)
    assert merged == hand_record()
    assert count_ops(tiny_config(), merged) == count_ops(tiny_config(), hand_record())


def test_report_round_trips_through_json_and_formats() -> None:
    report = count_ops(tiny_config(weight_bits=1.58), hand_record(), "int45nm")
    again = OpReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    text = format_report(report)
    assert "SOPs 55" in text and "MACs 286" in text and "int45nm" in text
    assert all(bucket in text for bucket in SOP_BUCKETS)
    with pytest.raises(SpikepruneError):
        OpReport.from_dict({"sops": 1})


def test_custom_energy_models(tmp_path) -> None:
    custom = {"name": "chip", "ac_pj": 1.0, "mac_pj": 10.0, "int_add_pj": {"2": 0.1, "8": 0.4}}
    model = EnergyModel.from_dict(custom)
    assert model.weight_ac_pj(4) == pytest.approx(0.2) and model.weight_ac_pj(1) == pytest.approx(0.05)
    assert EnergyModel.from_dict(model.to_dict()) == model
    path = tmp_path / "chip.json"
    path.write_text(json.dumps(custom))
    assert resolve_energy(str(path)) == model
    report = count_ops(tiny_config(weight_bits=4), hand_record(), custom)
    assert report.energy_uj == pytest.approx((76 * 0.2 + 34 * 1.0 + 572 * 10.0) * 1e-6 / 2, rel=1e-12)
    assert report.energy_model["name"] == "chip"
    for bad in ("nope", {"ac_pj": 1.0}, {"ac_pj": "x", "mac_pj": 1}, {"ac_pj": -1, "mac_pj": 1},
                {"ac_pj": 1, "mac_pj": 1, "int_add_pj": {"8": 0.1}}):
        with pytest.raises(SpikepruneError) as info:
            resolve_energy(bad)
        assert "\n" not in str(info.value)


def test_records_that_do_not_fit_are_rejected() -> None:
    with pytest.raises(SpikepruneError, match="empty"):
        count_ops(tiny_config(), SimRecord())
    with pytest.raises(SpikepruneError, match="layers"):
        count_ops(tiny_config(num_layers=2), hand_record())
