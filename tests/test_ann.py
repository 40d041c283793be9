"""ANN reference counts and energies checked against integers worked out by hand.

The dense network: hidden 4, two layers of two heads of head_dim 2 and 3 FFN neurons, 2 labels.
A trial keeps layer 0 whole at 4-bit weights and one head and 2 neurons of layer 1 in float.
Its record: 2 examples of 3 and 1 real tokens, so 4 tokens and 3² + 1² = 10 token pairs.
"""
from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
from optuna.distributions import IntDistribution

from spikeprune.costs._ann import (ANN_KINDS, ANN_NETWORKS, FLOAT_KINDS, PRODUCT_KINDS, AnnReference, ann_ops,
                                   ann_reference, format_ann)
from spikeprune.costs._ops import ENERGY_PRESETS, resolve_energy
from spikeprune.errors import SpikepruneError
from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._record import SimRecord
from spikeprune.records import PreparedRecord, TrialRecord
from spikeprune.results._report import pareto_figure, write_report
from spikeprune.results import analyse_study
from spikeprune.results._tables import trials_frame
from spikeprune.search._progress import study_status

from test_ops import IDS, MASK, tiny_config, tiny_model

DENSE = SpikingBertConfig(vocab_size=8, hidden_size=4, num_layers=2, head_dim=2, heads=2, intermediate_sizes=3,
                          timesteps=2, max_position_embeddings=4, num_labels=2, family="converted")
TRIAL = dataclasses.replace(DENSE, heads=[2, 1], intermediate_sizes=[3, 2], weight_bits=[4, 32])
RECORD = SimRecord(examples=2, tokens=3 + 1, token_pairs=3 * 3 + 1 * 1, layers=[{}, {}])


def totals(ops: dict[str, list[int]]) -> dict[str, int]:
    return {kind: sum(counts) for kind, counts in ops.items()}


def test_trial_structure_counts_by_hand() -> None:
    ops = ann_ops(TRIAL, RECORD.examples, RECORD.tokens, RECORD.token_pairs)
    # Layer 0 (2 heads -> inner 4, 3 neurons), per token: Q, K, V 4·4 each, attn_out 4·4,
    # FFN in 4·3, FFN out 3·4 = 48 + 16 + 12 + 12 = 88 MACs; 4 tokens -> 352.
    # Layer 1 (1 head -> inner 2, 2 neurons): 3·(4·2) + 2·4 + 4·2 + 2·4 = 48 per token -> 192.
    assert ops["projection"] == [352, 192, 0]
    # Q·Kᵀ and P·V: inner MACs per token pair each: 2·4·10 = 80, 2·2·10 = 40.
    assert ops["attention"] == [80, 40, 0]
    # Softmax, 4 ops per score: heads·pairs·4 = 2·10·4 = 80, 1·10·4 = 40.
    assert ops["softmax"] == [80, 40, 0]
    # Two LayerNorms of 4 units, 5 ops each, per token: 2·4·4·5 = 160 in each layer.
    assert ops["layernorm"] == [160, 160, 0]
    # GELU, 5 ops per FFN unit and token: 4·3·5 = 60, 4·2·5 = 40.
    assert ops["gelu"] == [60, 40, 0]
    # Bias adds per token: outputs 4+4+4+4+3+4 = 23 and 2+2+2+4+2+4 = 16 -> 92, 64;
    # pooler 4 and classifier 2 per example -> 12.
    assert ops["bias"] == [92, 64, 12]
    # Two residual adds of 4 units per token: 2·4·4 = 32 per layer.
    assert ops["residual"] == [32, 32, 0]
    # Embedding: 2 adds + LayerNorm 5 per unit and token: 4·4·7 = 112.
    assert ops["embedding"] == [0, 0, 112]
    # At [CLS] of each example: pooler 4·4, its tanh 4, classifier 4·2.
    assert (ops["pooler"], ops["tanh"], ops["classifier"]) == ([0, 0, 32], [0, 0, 8], [0, 0, 16])
    assert set(ops) == set(ANN_KINDS)
    assert sum(totals(ops)[k] for k in PRODUCT_KINDS) == 352 + 192 + 120 + 32 + 16 == 712
    assert sum(totals(ops)[k] for k in FLOAT_KINDS) == 112 + 320 + 120 + 100 + 8 + 168 + 64 == 892


def test_references_and_their_energy_by_hand() -> None:
    ref = ann_reference(DENSE, TRIAL, RECORD, "int45nm")
    # The dense teacher: both layers like the trial's layer 0.
    # MACs 2·352 + 2·80 + 32 + 16 = 912; float ops 112 + 320 + 160 + 120 + 8 + (2·92 + 12) + 64 = 980.
    assert (ref.teacher.macs, ref.teacher.float_ops) == (912 / 2, 980 / 2)
    assert ref.teacher.weight_bits == [32, 32] and ref.teacher.activation_bits == 32
    # fp32: every op 4.6 pJ but the 64 residual adds at 0.9: 1828·4.6 + 64·0.9 = 8466.4 pJ, /2 examples.
    assert ref.teacher.energy_uj == pytest.approx(8466.4 / 2 / 1e6)
    # int8 teacher: products of the layers at 0.2 + 0.03 pJ, pooler/classifier and float ops as fp32:
    # (704 + 160)·0.23 + 48·4.6 + 916·4.6 + 64·0.9 = 198.72 + 220.8 + 4213.6 + 57.6 = 4690.72 pJ.
    assert ref.teacher_int8.energy_uj == pytest.approx(4690.72 / 2 / 1e6)
    assert ref.teacher_int8.weight_bits == [8, 8] and ref.teacher_int8.activation_bits == 8
    # The twin keeps the trial's shape; its float layer 1 becomes 8-bit. An 8×4 multiply is half
    # the 8×8 one (0.1 pJ) plus an 8-bit add: 0.13 pJ. 352·0.13 + 192·0.23 = 89.92 pJ of projections;
    # attention 120·0.23 = 27.6; pooler/classifier 48·4.6 = 220.8; float 828·4.6 + 64·0.9 = 3866.4.
    assert ref.twin.weight_bits == [4, 8]
    assert ref.twin.energy_by_kind["projection"] == pytest.approx(89.92 / 2 / 1e6)
    assert ref.twin.energy_uj == pytest.approx((89.92 + 27.6 + 220.8 + 3866.4) / 2 / 1e6)
    assert (ref.twin.macs, ref.twin.float_ops) == (712 / 2, 892 / 2)
    assert (ref.examples, ref.tokens_per_example, ref.energy_model) == (2, 2.0, "int45nm")
    ratios = ref.ratios(2 * ref.teacher.energy_uj)
    assert ratios["teacher"] == pytest.approx(2.0)
    assert ratios["twin"] == pytest.approx(2 * 8466.4 / (89.92 + 27.6 + 220.8 + 3866.4))


def test_bit_blind_model_prices_the_twin_like_the_teacher() -> None:
    ref = ann_reference(DENSE, DENSE, RECORD, "float45nm")
    assert ref.twin.energy_uj == pytest.approx(ref.teacher.energy_uj)
    assert ref.teacher_int8.energy_uj == pytest.approx(ref.teacher.energy_uj)


def test_a_user_energy_model_prices_both_sides(tmp_path) -> None:
    path = tmp_path / "chip.json"
    path.write_text(json.dumps({"name": "chip", "ac_pj": 1, "mac_pj": 10, "int_add_pj": {"2": 0.1, "8": 0.4},
                                "int_mult_pj": {"2": 0.5, "8": 2}}))
    model = resolve_energy(str(path))
    # 8×4 multiply: 0.5 + (4 - 2)·1.5/6 = 1.0; the add is 8 bits wide (the activation's): 0.4.
    assert model.int_mac_pj(4) == pytest.approx(1.4) and model.int_mac_pj(32) == 10
    ref = ann_reference(DENSE, TRIAL, RECORD, str(path))
    assert ref.energy_model == "chip"
    assert ref.twin.energy_by_kind["projection"] == pytest.approx((352 * 1.4 + 192 * 2.4) / 2 / 1e6)
    assert ref.teacher.energy_by_kind["residual"] == pytest.approx(64 * 1 / 2 / 1e6)
    with pytest.raises(SpikepruneError, match="int_mult_pj needs at least two widths"):
        resolve_energy({"ac_pj": 1, "mac_pj": 1, "int_mult_pj": {"8": 0.2}})


def test_minilm_dense_macs_match_the_closed_form() -> None:
    """MiniLM-L6 (hidden 384, 12 heads of 32, FFN 1536): 6·(1,769,472·n + 768·n²) MACs in the
    encoder for one example of n tokens, plus the pooler 384² and the classifier 384·2."""
    minilm = SpikingBertConfig(num_layers=6, heads=12, head_dim=32, intermediate_sizes=1536, num_labels=2)
    for n in (1, 25, 64):
        ops = totals(ann_ops(minilm, 1, n, n * n))
        assert sum(ops[k] for k in PRODUCT_KINDS) == 6 * (1_769_472 * n + 768 * n * n) + 384 * 384 + 384 * 2


def test_counted_on_the_tokens_the_student_ran() -> None:
    """The record of a real run (test_ops' hand network: lengths 2 and 1) sets the ANN's tokens."""
    cfg = tiny_config()                                   # hidden 2, 2 heads of 1, FFN 2, 1 layer
    record = tiny_model()(IDS, MASK, record=True).record
    ref = ann_reference(cfg, cfg, record, "float45nm")
    # 3 tokens, pairs 2² + 1² = 5. Per token 3·(2·2) + 2·2 + 2·2 + 2·2 = 24 MACs -> 72;
    # attention 2·2·5 = 20; pooler 2·2·2 = 8, classifier 2·2·2 = 8: 108 over 2 examples.
    assert ref.teacher.macs == 108 / 2
    assert ref.tokens_per_example == 1.5


def test_round_trip_record_ratios_and_text() -> None:
    ref = ann_reference(DENSE, TRIAL, RECORD, "int45nm")
    assert AnnReference.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    stored = TrialRecord(report={"energy_uj": 3 * ref.twin.energy_uj}, ann=ref.to_dict())
    assert stored.ann_ratios["twin"] == pytest.approx(3.0) and set(stored.ann_ratios) == set(ANN_NETWORKS)
    assert TrialRecord(report={"energy_uj": 1.0}).ann_ratios is None
    text = format_ann(ref, ref.teacher.energy_uj)
    assert "fp32 teacher" in text and "W[4,8]A8" in text and "= 1x" in text
    with pytest.raises(SpikepruneError, match="not an ANN reference"):
        AnnReference.from_dict({"examples": 1})


def test_mismatched_or_empty_inputs_are_refused() -> None:
    with pytest.raises(SpikepruneError, match="another shape"):
        ann_reference(DENSE, dataclasses.replace(DENSE, hidden_size=8), RECORD)
    with pytest.raises(SpikepruneError, match="empty"):
        ann_reference(DENSE, DENSE, SimRecord())
    assert ENERGY_PRESETS["int45nm"].int_mac_pj(8) == pytest.approx(0.23)   # Horowitz 8-bit mult + add


# ------------------------------------------------------------------ where a user sees them
OBJECTIVES = [{"name": "metric", "direction": "maximize"}, {"name": "energy_uj", "direction": "minimize"}]


def ann_study(storage: str | None = None, prepared: str = "/nowhere") -> tuple[optuna.Study, AnnReference]:
    """A study of four trials whose energies are set multiples of the hand network's fp32 teacher
    (E): the baseline 2E (0.90), trial 1 0.5E (0.88), trial 2 E/4 (0.80), trial 3 3E (0.85, dominated)."""
    ref = ann_reference(DENSE, TRIAL, RECORD, "int45nm")
    e = ref.teacher.energy_uj
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="ann", storage=storage)
    study.set_user_attr("spikeprune", {"task": "sst2", "objectives": OBJECTIVES, "energy": "int45nm",
                                       "prepared": prepared, "space": {"objectives": OBJECTIVES}})
    for k, (metric, energy) in enumerate([(0.90, 2 * e), (0.88, e / 2), (0.80, e / 4), (0.85, 3 * e)]):
        study.add_trial(optuna.trial.create_trial(
            values=[metric, energy], params={"x": k}, distributions={"x": IntDistribution(0, 3)},
            user_attrs={"compression": {"heads": [2, 1], "neurons": [3, 2], "timesteps": [2, 2],
                                        "weight_bits": [4, 32], "recovery_steps": 0},
                        "metrics": {"metric": metric}, "report": {"energy_uj": energy, "sops": 1.0},
                        "ann": ref.to_dict(), "seeded": k == 0, "baseline": k == 0, "fidelity": 1.0},
            system_attrs={"constraints": [-1.0]}))
    return study, ref


def test_status_trials_and_export_config_show_the_ratios(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ann.db'}"
    _, ref = ann_study(url)
    status = study_status(url, "ann")
    assert f"ANN teacher on the baseline's examples: fp32 {ref.teacher.energy_uj:.4g} µJ" in status
    assert "x fp32 ANN  x int twin" in status
    # Trial 1 is 0.5x the fp32 teacher; the twin costs 2102.36 pJ against the teacher's 4233.2.
    row = next(line for line in status.splitlines() if line.lstrip().startswith("#1 "))
    assert f"{0.5:10.3g}  {0.5 * 4233.2 / 2102.36:10.3g}" in row
    frame = trials_frame(optuna.load_study(study_name="ann", storage=url))
    assert list(frame["energy_x.teacher"]) == pytest.approx([2, 0.5, 0.25, 3])
    assert list(frame["energy_x.teacher_int8"]) == pytest.approx(
        [k * 4233.2 / 2345.36 for k in (2, 0.5, 0.25, 3)])
    assert frame["ann.twin.energy_uj"][0] == pytest.approx(2102.36 / 1e6)
    summary = ref.summary(ref.teacher.energy_uj / 2)
    assert summary["spiking_x"]["teacher"] == pytest.approx(0.5) and summary["energy_uj"]["twin"] == ref.twin.energy_uj


def test_report_draws_the_ann_references(tmp_path) -> None:
    study, ref = ann_study()
    analysis = analyse_study(study)
    traces = {t.name: t for t in pareto_figure(analysis).data}
    e = ref.teacher.energy_uj
    # x: energy (the only cost), y: the metric; the lines span the trials' metrics 0.80..0.90.
    assert list(traces["fp32 ANN teacher"].x) == [e, e] and list(traces["fp32 ANN teacher"].y) == [0.80, 0.90]
    assert list(traces["int8 ANN teacher"].x) == [ref.teacher_int8.energy_uj] * 2
    # The front is trials 0, 1, 2; each twin at its trial's metric.
    assert list(traces["integer twins of the front"].y) == [0.90, 0.88, 0.80]
    assert "fp32 ANN teacher (dev metric)" not in traces     # the base cannot be read from here
    html = write_report(study, tmp_path / "r.html")[0].read_text()
    assert "x fp32 ANN" in html and "fp32 ANN teacher" in html
    # With the prepared base readable, the teacher is drawn at its dev metric and the lines reach it.
    PreparedRecord(task="sst2", preset="tiny", preset_config={"max_length": 8}, seed=0, glue_dir=None, base="b",
                   timesteps=[2, 2], layer_map=[0, 1], dev_examples=2, teacher_metrics={"metric": 0.95},
                   student_metrics={"metric": 0.9}).write(tmp_path)
    study, _ = ann_study(prepared=str(tmp_path))
    traces = {t.name: t for t in pareto_figure(analyse_study(study)).data}
    teacher = traces["fp32 ANN teacher (dev metric)"]
    assert (list(teacher.x), list(teacher.y)) == ([e], [0.95])
    assert list(traces["fp32 ANN teacher"].y) == [0.80, 0.95]
