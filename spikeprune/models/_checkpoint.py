"""The saved-model format: one folder with ``config.json`` and ``model.safetensors``, never pickle.

``SpikingBertForSequenceClassification.save_pretrained`` and ``from_pretrained`` go through here,
as do exports. A model whose layers are quantized can be saved *packed*: each quantized Linear
weight ``<name>.weight`` is replaced by ``<name>.weight.packed`` (uint8 codes at the layer's bit
width, _quantize.py), ``<name>.weight.scale`` (float32, one per output channel) and ``<name>.weight.shape`` (int64).
Loading unpacks to exactly the float weights that were saved, so a packed export evaluates
bit-identically to the model it came from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from spikeprune.errors import SpikepruneError

from spikeprune.models._config import SpikingBertConfig
from spikeprune.models._quantize import pack, quantized_weights, unpack

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Suffixes of the tensors that replace ``<name>.weight`` in a packed checkpoint.
PACKED, SCALE, SHAPE = ".weight.packed", ".weight.scale", ".weight.shape"


def pack_state_dict(state: dict[str, Tensor], config: SpikingBertConfig) -> dict[str, Tensor]:
    """Replace every quantized Linear weight by its packed form; checks the weights are on the grid."""
    packed_state = dict(state)
    for name, bits in quantized_weights(config):
        weight = packed_state.pop(f"{name}.weight")
        codes, scale, shape = pack(weight, bits)
        if not torch.equal(unpack(codes, scale, shape, bits), weight.to(torch.float32)):
            raise SpikepruneError(f"{name}.weight is not {bits:g}-bit quantized although the config says so; "
                                  f"make the model with quantize_model before saving it packed")
        packed_state[name + PACKED] = codes
        packed_state[name + SCALE] = scale
        packed_state[name + SHAPE] = torch.tensor(shape, dtype=torch.int64)
    return packed_state


def unpack_state_dict(state: dict[str, Tensor], config: SpikingBertConfig) -> dict[str, Tensor]:
    """Turn packed weights back into float ``<name>.weight`` tensors; a state without any is returned as is."""
    names = sorted(key[:-len(PACKED)] for key in state if key.endswith(PACKED))
    if not names:
        return state
    widths = dict(quantized_weights(config))
    unexpected = [name for name in names if name not in widths]
    if unexpected:
        raise SpikepruneError(f"packed weights for {unexpected[:3]} but the config keeps those layers at 32 bits; "
                              f"config.json and model.safetensors disagree, re-export the model")
    unpacked = {key: value for key, value in state.items() if not key.endswith((PACKED, SCALE, SHAPE))}
    for name in names:
        if name + SCALE not in state or name + SHAPE not in state:
            raise SpikepruneError(f"{name}{PACKED} has no {SCALE} or {SHAPE} beside it; re-export the model")
        shape = tuple(int(d) for d in state[name + SHAPE].tolist())
        unpacked[f"{name}.weight"] = unpack(state[name + PACKED], state[name + SCALE], shape, widths[name])
    return unpacked


def save(config: SpikingBertConfig, state: dict[str, Tensor], folder: str | Path, packed: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors``, quantized weights packed when ``packed``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    metadata = {"format": "pt", "spikeprune": "1"}
    if packed:
        state = pack_state_dict(state, config)
        metadata["weight_bits"] = json.dumps(config.weight_bits)
    config.save(folder / CONFIG_NAME)
    save_file(state, str(folder / WEIGHTS_NAME), metadata=metadata)
    # safetensors creates its file private (rw-------); a saved model is an ordinary file.
    umask = os.umask(0)
    os.umask(umask)
    (folder / WEIGHTS_NAME).chmod(0o666 & ~umask)
    return folder


def load(folder: str | Path) -> tuple[SpikingBertConfig, dict[str, Tensor], str]:
    """The config and float weights of a saved folder (packed or not), and the weights' path for errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpikepruneError(f"model folder {folder} does not exist; train one with `spikeprune prepare`")
    config = SpikingBertConfig.load(folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise SpikepruneError(f"{weights} is missing; the folder must hold {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise SpikepruneError(f"{weights} is not a readable safetensors file ({type(e).__name__}); re-export the model") from None
    return config, unpack_state_dict(state, config), str(weights)
