"""Put a model's blocks on one device or spread them over several (`auto`).

Loading goes through the meta device and `load_state_dict(assign=True)`: each weight is
copied once, straight to the device of the module that owns it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from reference_impl.model import ModelArgs, Transformer, rope_tables


def split_layers(num_layers: int, devices: list[str]) -> list[torch.device]:
    """Contiguous, balanced layer groups: 5 layers on 2 devices -> [0, 0, 0, 1, 1]."""
    per_device, extra = divmod(num_layers, len(devices))
    plan: list[torch.device] = []
    for index, device in enumerate(devices):
        plan += [torch.device(device)] * (per_device + (1 if index < extra else 0))
    return plan


def load_model(path: Path, devices: list[str], dtype: torch.dtype = torch.float32) -> Transformer:
    """Load a transformers-format llama directory onto `devices` (one, or several for auto)."""
    args = ModelArgs.from_hf_config(path)
    with torch.device("meta"):
        model = Transformer(args)
    model.block_devices = split_layers(args.num_layers, devices)
    first, last = torch.device(devices[0]), torch.device(devices[-1])

    state = {}
    for name, tensor in load_file(str(path / "model.safetensors")).items():
        name = name.removeprefix("model.")
        if name.startswith("layers."):
            device = model.block_devices[int(name.split(".")[1])]
        elif name.startswith("embed_tokens"):
            device = first
        else:  # final norm and lm_head
            device = last
        state[name] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, assign=True, strict=True)

    for block, device in zip(model.layers, model.block_devices):
        with torch.device(device):
            block.self_attn.cos, block.self_attn.sin = rope_tables(args)
    return model.eval()
