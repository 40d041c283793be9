"""Compression operators on a spiking BERT: importance scores, head/neuron pruning, per-layer
timesteps, and per-layer weight quantization (the codes and their packing are ``_quantize.py``'s).

Which heads and FFN neurons go is decided once per base model by an importance score; the search
only decides how many each layer keeps (docs/DESIGN.md §5). Two scores, both cached in
importance.safetensors under "{method}.{unit}.{layer}" (method grad|activity, unit head|neuron):

- ``grad`` (Michel et al., 2019): E_x |∂L(x)/∂ξ| for a mask ξ = 1 on each head's context output
  and on each FFN neuron, through the surrogate (straight-through) gradient.
- ``activity``: mean firing rate of each head's context neurons and of each intermediate neuron
  over the real tokens and timesteps of a batched simulation.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from spikeprune.errors import SpikepruneError

from spikeprune.models._config import FLOAT_BITS, CompressionConfig, SpikingBertConfig
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.models._quantize import quantize, quantized_weights

METHODS: tuple[str, ...] = ("grad", "activity")
IMPORTANCE_NAME = "importance.safetensors"


# ----------------------------------------------------------------------------- importance
def importance_shapes(config: SpikingBertConfig, methods: Iterable[str] = METHODS) -> dict[str, int]:
    """Key -> length of every score tensor a model with ``config`` has."""
    return {f"{method}.{unit}.{l}": size
            for method in methods
            for l in range(config.num_layers)
            for unit, size in (("head", config.heads[l]), ("neuron", config.intermediate_sizes[l]))}


@contextlib.contextmanager
def pre_hooks(hooks: dict[nn.Module, Callable[[Tensor], Tensor | None]]) -> Iterator[None]:
    """Run each function on its module's input while the block runs (a returned tensor replaces it)."""
    def wrap(fn: Callable[[Tensor], Tensor | None]) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            out = fn(args[0])
            return None if out is None else (out, *args[1:])
        return hook
    handles = [module.register_forward_pre_hook(wrap(fn)) for module, fn in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def compute_importance(model: SpikingBertForSequenceClassification,
                       batches: Iterable[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Gradient and activity scores of every head and FFN neuron over the calibration ``batches``
    (dicts with input_ids, attention_mask, token_type_ids, labels). The model is left unchanged."""
    cfg = model.config
    layers = list(model.layers)
    totals = {key: torch.zeros(size, dtype=torch.float64) for key, size in importance_shapes(cfg).items()}
    examples = tokens = 0
    device = next(model.parameters()).device

    def accumulate(key: str, per_unit: Tensor) -> None:
        totals[key] += per_unit.detach().to("cpu", torch.float64)

    for batch in batches:
        if batch.get("labels") is None:
            raise SpikepruneError("calibration batches need labels for the gradient importance; "
                                  "pass labelled (train or dev) batches")
        batch = {key: None if value is None else value.to(device) for key, value in batch.items()}
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch.get("token_type_ids"))
        size = int(batch["input_ids"].shape[0])
        examples += size
        tokens += int(batch["attention_mask"].sum())

        # Activity: spike trains [T, B, L, D] entering attn_out (context) and output (intermediate).
        # Padding is silent, so summing over B and L and dividing by real tokens gives the mean rate
        # (of spikes of either sign: the converted family's carry ±θ).
        activity = {}
        for l, layer in enumerate(layers):
            heads = (layer.num_heads, layer.head_dim)
            activity[layer.attn_out] = lambda s, l=l, heads=heads: accumulate(
                f"activity.head.{l}", (s != 0).float().mean(dim=0).unflatten(-1, heads).mean(dim=-1).sum(dim=(0, 1)))
            activity[layer.output] = lambda s, l=l: accumulate(
                f"activity.neuron.{l}", (s != 0).float().mean(dim=0).sum(dim=(0, 1)))
        with torch.no_grad(), pre_hooks(activity):
            model(**inputs, mode="batched")

        # Gradient: a per-example mask of ones on each head's context and each FFN neuron. The loss
        # is summed over the batch so each example's mask gets that example's own gradient.
        head_masks = [torch.ones(size, layer.num_heads, device=device, requires_grad=True) for layer in layers]
        neuron_masks = [torch.ones(size, layer.output.in_features, device=device, requires_grad=True)
                        for layer in layers]
        masking = {}
        for layer, head_mask, neuron_mask in zip(layers, head_masks, neuron_masks):
            masking[layer.attn_out] = lambda x, m=head_mask, d=layer.head_dim: x * m.repeat_interleave(d, 1)[:, None]
            masking[layer.output] = lambda x, m=neuron_mask: x * m[:, None]
        with torch.enable_grad(), pre_hooks(masking):
            out = model(**inputs, labels=batch["labels"], mode="surrogate")
            grads = torch.autograd.grad(out.loss * size, head_masks + neuron_masks)
        for l in range(cfg.num_layers):
            accumulate(f"grad.head.{l}", grads[l].abs().sum(dim=0))
            accumulate(f"grad.neuron.{l}", grads[cfg.num_layers + l].abs().sum(dim=0))

    if examples == 0:
        raise SpikepruneError("no calibration batches were given; pass at least one labelled batch")
    return {key: (value / (examples if key.startswith("grad.") else tokens)).to(torch.float32)
            for key, value in totals.items()}


def check_importance(scores: dict[str, Tensor], config: SpikingBertConfig,
                     methods: Iterable[str] = METHODS, source: str = "importance scores",
                     exact: bool = False) -> None:
    """Raise if ``scores`` lack a key or a shape of ``config`` (or, with ``exact``, hold extra keys)."""
    expected = importance_shapes(config, methods)
    missing = sorted(set(expected) - set(scores))
    unexpected = sorted(set(scores) - set(expected)) if exact else []
    if missing or unexpected:
        raise SpikepruneError(f"{source} do not fit this {config.num_layers}-layer model: missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}; recompute them for this model")
    for key, size in expected.items():
        if tuple(scores[key].shape) != (size,):
            raise SpikepruneError(f"{source}: {key} has shape {tuple(scores[key].shape)} but the model has "
                                  f"{size} units there; scores belong to the base model, prune that one")
        if not torch.isfinite(scores[key]).all():
            raise SpikepruneError(f"{source}: {key} holds NaN or infinite values; recompute the scores")


def save_importance(scores: dict[str, Tensor], path: str | Path) -> Path:
    """Write the scores whole or not at all (a temporary file renamed): a killed prepare leaves
    no torn file that a rerun would take as done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in scores.items()}, str(tmp),
              metadata={"spikeprune": "importance"})
    tmp.replace(path)
    return path


def load_importance(path: str | Path, config: SpikingBertConfig) -> dict[str, Tensor]:
    """Load cached scores and check they belong to a model with ``config``."""
    path = Path(path)
    if not path.is_file():
        raise SpikepruneError(f"{path} not found; compute it with compute_importance (`spikeprune prepare`)")
    try:
        scores = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise SpikepruneError(f"{path} is not a readable safetensors file ({type(e).__name__}); "
                              f"recompute it") from None
    check_importance(scores, config, source=str(path), exact=True)
    return scores


# -------------------------------------------------------------------------------- pruning
def _top(score: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores, ties to the lower index, in ascending (original) order."""
    order = torch.sort(score, descending=True, stable=True).indices[:k]
    return order.sort().values


def select_units(model: SpikingBertForSequenceClassification, keep_heads: int | list[int],
                 keep_neurons: int | list[int], scores: dict[str, Tensor],
                 method: str = "grad") -> tuple[list[Tensor], list[Tensor]]:
    """Per layer, the indices of the heads and of the FFN neurons to keep."""
    if method not in METHODS:
        raise SpikepruneError(f"importance method {method!r} is unknown; use one of {METHODS}")
    cfg = model.config
    check_importance(scores, cfg, methods=(method,))
    keep = CompressionConfig(heads=keep_heads, neurons=keep_neurons).resolve(cfg)
    heads = [_top(scores[f"{method}.head.{l}"], k) for l, k in enumerate(keep.heads)]
    neurons = [_top(scores[f"{method}.neuron.{l}"], k) for l, k in enumerate(keep.neurons)]
    return heads, neurons


def _head_rows(heads: Tensor, head_dim: int) -> Tensor:
    """Q/K/V rows (= attn_out columns) of the given heads: head h owns rows h·d .. (h+1)·d - 1."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def prune(model: SpikingBertForSequenceClassification, keep_heads: int | list[int],
          keep_neurons: int | list[int], scores: dict[str, Tensor],
          method: str = "grad") -> SpikingBertForSequenceClassification:
    """A smaller copy keeping the ``keep_heads[l]`` / ``keep_neurons[l]`` best heads / FFN neurons of
    layer l: rows of query/key/value/intermediate and columns of attn_out/output are dropped."""
    cfg = model.config
    if any(bits != 32 for bits in cfg.weight_bits):
        raise SpikepruneError("prune the float model, then quantize it; this model is already quantized "
                              f"(weight_bits {cfg.weight_bits})")
    heads, neurons = select_units(model, keep_heads, keep_neurons, scores, method)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    for l, (kept_heads, kept_neurons) in enumerate(zip(heads, neurons)):
        rows = _head_rows(kept_heads, cfg.head_dim)
        p = f"layers.{l}."
        for name in ("query", "key", "value"):
            for part in ("weight", "bias"):
                state[f"{p}{name}.{part}"] = state[f"{p}{name}.{part}"].index_select(0, rows)
        state[f"{p}attn_out.weight"] = state[f"{p}attn_out.weight"].index_select(1, rows)
        for part in ("weight", "bias"):
            state[f"{p}intermediate.{part}"] = state[f"{p}intermediate.{part}"].index_select(0, kept_neurons)
        state[f"{p}output.weight"] = state[f"{p}output.weight"].index_select(1, kept_neurons)
    config = dataclasses.replace(cfg, heads=[len(h) for h in heads],
                                 intermediate_sizes=[len(n) for n in neurons])
    pruned = SpikingBertForSequenceClassification(config)
    pruned.load_state(state, source="prune")
    return pruned.train(model.training)


def _dropped(kept: Tensor, size: int) -> Tensor:
    drop = torch.ones(size, dtype=torch.bool)
    drop[kept] = False
    return drop.nonzero().flatten()


def mask(model: SpikingBertForSequenceClassification, keep_heads: int | list[int],
         keep_neurons: int | list[int], scores: dict[str, Tensor],
         method: str = "grad") -> SpikingBertForSequenceClassification:
    """The units ``prune`` removes, silenced instead (same shapes): the reference that pruning is exact.

    A dropped head gets zero query/key/value rows *and biases*: its K and V neurons then receive zero
    current, never reach the threshold (> 0), and its context is probs·0 = 0, so its context neurons
    never fire either; its attn_out columns are zeroed too. A dropped FFN neuron gets a zero
    intermediate row and bias (GELU(0) = 0, so it never fires) and a zero output column.
    """
    heads, neurons = select_units(model, keep_heads, keep_neurons, scores, method)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer, kept_heads, kept_neurons in zip(masked.layers, heads, neurons):
            rows = _head_rows(_dropped(kept_heads, layer.num_heads), layer.head_dim)
            for linear in (layer.query, layer.key, layer.value):
                linear.weight[rows] = 0.0
                linear.bias[rows] = 0.0
            layer.attn_out.weight[:, rows] = 0.0
            dropped = _dropped(kept_neurons, layer.intermediate.out_features)
            layer.intermediate.weight[dropped] = 0.0
            layer.intermediate.bias[dropped] = 0.0
            layer.output.weight[:, dropped] = 0.0
    return masked


# ------------------------------------------------------------------------------- temporal
def set_timesteps(model: SpikingBertForSequenceClassification, timesteps: int | list[int],
                  boundary: str | None = None) -> SpikingBertForSequenceClassification:
    """A copy running layer l for ``timesteps[l]`` steps (and, if given, a new boundary rule)."""
    config = dataclasses.replace(model.config, timesteps=timesteps,
                                 boundary=model.config.boundary if boundary is None else boundary)
    shortened = copy.deepcopy(model)
    shortened.config = config
    return shortened


def quantize_model(model: SpikingBertForSequenceClassification,
                   weight_bits: float | list[float]) -> SpikingBertForSequenceClassification:
    """A copy of ``model`` with layer l's Linear weights quantized to ``weight_bits[l]``.

    Layers already quantized may only keep their width: their float weights are gone, so a
    different width would silently compound two roundings.
    """
    config = dataclasses.replace(model.config, weight_bits=weight_bits)
    for l, (old, new) in enumerate(zip(model.config.weight_bits, config.weight_bits)):
        if old != FLOAT_BITS and old != new:
            raise SpikepruneError(f"layer {l} is already quantized to {old:g} bits and cannot become {new:g}; "
                                  f"quantize the float model instead")
    quantized = copy.deepcopy(model)
    quantized.config = config
    with torch.no_grad():
        for name, bits in quantized_weights(config):
            weight = quantized.get_submodule(name).weight
            weight.copy_(quantize(weight, bits))
    return quantized
