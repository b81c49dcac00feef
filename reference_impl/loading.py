"""The reference implementation's loading: a transformers-format checkpoint onto one device or
spread over several (`auto`, its own contiguous layer split). Not the `Placement` a case asks an
engine for (`harness.engines.base`), nor the harness's check of where the weights went
(`harness.engines.weights`).

Loading goes through the meta device and `load_state_dict(assign=True)`: each weight is
converted to this implementation's layout on the host (q/k/v and gate/up fused, dense
projections transposed, experts stacked, quantized if asked) and copied once, straight to
the device of the module that owns it; those on the CPU then go into one buffer backed by
huge pages (`hostmem`). Checkpoint names are transformers' (llama: `mlp.{gate,up,down}_proj`;
mixtral: `block_sparse_moe.gate`, `block_sparse_moe.experts.{e}.w1/w2/w3`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from reference_impl import faults as fault_switches
from reference_impl import hostmem
from reference_impl.model import ModelArgs, Transformer, rope_tables
from reference_impl.quantize import Linear, QuantizedWeight, quantize_modules


def split_layers(num_layers: int, devices: list[str]) -> list[torch.device]:
    """Contiguous, balanced layer groups: 5 layers on 2 devices -> [0, 0, 0, 1, 1]."""
    per_device, extra = divmod(num_layers, len(devices))
    plan: list[torch.device] = []
    for index, device in enumerate(devices):
        plan += [torch.device(device)] * (per_device + (1 if index < extra else 0))
    return plan


def convert_checkpoint(hf: dict[str, Tensor], args: ModelArgs) -> dict[str, Tensor]:
    """transformers' names and layout -> ours, every weight still [..., out, in]."""
    state = {
        "tok_embeddings.weight": hf["model.embed_tokens.weight"],
        "norm.weight": hf["model.norm.weight"],
        "output.weight": hf["lm_head.weight"],
    }
    for i in range(args.num_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        state[q + "attention_norm.weight"] = hf[p + "input_layernorm.weight"]
        state[q + "ffn_norm.weight"] = hf[p + "post_attention_layernorm.weight"]
        state[q + "attention.wqkv.weight"] = torch.cat([hf[f"{p}self_attn.{n}_proj.weight"] for n in "qkv"])
        state[q + "attention.wo.weight"] = hf[p + "self_attn.o_proj.weight"]
        if args.num_experts:
            moe, experts = p + "block_sparse_moe.", range(args.num_experts)
            state[q + "feed_forward.gate.weight"] = hf[moe + "gate.weight"]
            state[q + "feed_forward.w13.weight"] = torch.stack(
                [torch.cat((hf[f"{moe}experts.{e}.w1.weight"], hf[f"{moe}experts.{e}.w3.weight"])) for e in experts])
            state[q + "feed_forward.w2.weight"] = torch.stack([hf[f"{moe}experts.{e}.w2.weight"] for e in experts])
        else:
            state[q + "feed_forward.w13.weight"] = torch.cat((hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]))
            state[q + "feed_forward.w2.weight"] = hf[p + "mlp.down_proj.weight"]
    return state


def _finish_layout(model: Transformer, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Transpose what a dense `Linear` holds; quantize what a `QuantizedWeight` holds."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        owner_name = name.rpartition(".")[0]
        owner = model.get_submodule(owner_name)
        if isinstance(owner, QuantizedWeight):
            for buffer, value in QuantizedWeight.quantize(tensor, owner.fmt).items():
                out[f"{owner_name}.{buffer}"] = value
        elif isinstance(owner, Linear):
            out[name] = tensor.t().contiguous()  # [in, out]
        else:
            out[name] = tensor
    return out


def _device_for(name: str, model: Transformer, first: torch.device, last: torch.device) -> torch.device:
    if name.startswith("layers."):
        if ".feed_forward.gate." in name and "router_on_cpu" in model.faults:
            return torch.device("cpu")  # mistral.rs #1447: the router left off the layer's device
        return model.block_devices[int(name.split(".")[1])]
    return first if name.startswith("tok_embeddings") else last  # final norm and head: last


def load_model(
    path: Path,
    devices: list[str],
    dtype: torch.dtype = torch.float32,
    quantization: str | None = None,
    quantize_router: bool = True,
    faults: Iterable[str] = (),
) -> Transformer:
    """Load a transformers-format llama or mixtral directory onto `devices` (one, or several
    for auto), optionally quantized, with the given fault switches on."""
    args = ModelArgs.from_hf_config(path)
    with torch.device("meta"):
        model = Transformer(args)
        if quantization:
            quantize_modules(model, quantization, quantize_router)
    model.set_faults(fault_switches.resolve(faults))
    model.block_devices = split_layers(args.num_layers, devices)
    first, last = torch.device(devices[0]), torch.device(devices[-1])

    state = _finish_layout(model, convert_checkpoint(load_file(str(path / "model.safetensors")), args))
    for name, tensor in state.items():
        cast = dtype if tensor.is_floating_point() and not name.endswith(".scales") else tensor.dtype
        state[name] = tensor.to(device=_device_for(name, model, first, last), dtype=cast)
    model.load_state_dict(hostmem.pack_host_tensors(state), assign=True, strict=True)

    tables: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}  # built once per device, shared
    for block, device in zip(model.layers, model.block_devices, strict=True):
        if device not in tables:
            cos, sin = rope_tables(args, device, dtype)
            tables[device] = cos, sin, torch.arange(args.max_seq_len, device=device)
        block.attention.cos, block.attention.sin, block.attention.positions = tables[device]
    return model.eval()
