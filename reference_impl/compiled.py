"""The compiled decode step: one token's forward pass under `torch.compile`, as gpt-fast
does it: inductor's default mode on the CPU (with its C++ wrapper), CUDA graphs on CUDA
(mode="reduce-overhead").

    generate(model, prompt, GenerateConfig(compile=True))   decode steps compiled where supported
    unsupported_reason(model, config) -> str | None          why a request would run eagerly

The model code is the eager code (`model`): only the position changes type. Every shape is
fixed, so one graph serves every step: the position is a [1] tensor on the model's device,
made there once per request (a fill, no copy) and advanced in place after each step, so
the compiled step neither recompiles nor copies anything host-to-device. RoPE rows and the
cache write are indexed with it, and attention reads the whole static cache, masked past
the position. The cache is sized to the request (prompt plus new tokens, rounded up to a
power of two, at least 64) rather than to max_seq_len, so the masked attention reads few
unused positions and requests of similar length share one graph. Prefill, the logits
pipeline and token choice stay eager.

Cost: the first decode step of each (model shapes, dtype, batch, cache length) compiles,
once per process (seconds; `benchmarks/reference_vs_transformers.py` prints it); another
model object of the same shapes reuses the graph.

CUDA: not yet run on a GPU in this project (no GPU where it was written). As in gpt-fast,
the KV cache buffers are static graph inputs, mutated in place; the token and the position
are not, so CUDA graph trees copy them into the graph's own buffers before each replay:
two small device-to-device copies per step that the real-CUDA ledger may count.

Supported: generate() (batch 1) with the static KV cache, the whole model on one cpu or
cuda device. Beam search, the offloaded and external caches (their shapes follow the
position) and `auto` placement run eagerly. Simulated GPUs cannot be traced: inside
`simulated_gpus` dynamo is disabled, so the same function runs eagerly there (the position
tensor path, still device-clean); the harness does not ask for compile on them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from reference_impl.model import Transformer

if TYPE_CHECKING:
    from reference_impl.generate import GenerateConfig

MIN_CACHE = 64
RECOMPILE_LIMIT = 64


def unsupported_reason(model: Transformer, config: GenerateConfig) -> str | None:
    """None if `generate` can run this request's decode steps compiled, else why not."""
    if config.num_beams > 1:
        return "beam search runs eagerly"
    if config.kv_cache != "static":
        return f"the {config.kv_cache} KV cache changes shape every step; only the static cache compiles"
    devices = {*model.block_devices, model.input_device, model.output_device}
    if len(devices) > 1:
        return f"the model spans {len(devices)} devices; compiled decode needs one"
    device = model.input_device
    if device.type not in ("cpu", "cuda"):
        return f"compiled decode runs on cpu or cuda, not {device.type}"
    return None


def cache_length(needed: int, max_seq_len: int) -> int:
    """Positions for a request that needs `needed`: a power of two, at least MIN_CACHE."""
    length = MIN_CACHE
    while length < needed:
        length *= 2
    return min(length, max_seq_len)


def _decode_step(model: Transformer, tokens: Tensor, position: Tensor) -> Tensor:
    return model(tokens, position, last_only=True)


@functools.cache
def compiled_step(device_type: str):
    """`_decode_step` under torch.compile for a device type, made once per process."""
    # CUDA graphs on CUDA: one replay per step. On the CPU, inductor's C++ wrapper calls the
    # step's kernels from C++, not Python: about a third off a hidden-64 step, more compile.
    mode = "reduce-overhead" if device_type == "cuda" else None
    options = {"cpp_wrapper": True} if device_type == "cpu" else None
    # Not fullgraph=True: that raises where dynamo is off (simulated GPUs) instead of running
    # eagerly. tests/test_reference_compiled.py checks there are no graph breaks.
    # One graph per model configuration (shapes, dtype, quantization, cache length): allow
    # more than dynamo's default 8 before it falls back to running the step eagerly.
    return torch.compile(  # type: ignore[call-overload]  # torch 2.13's overloads omit recompile_limit
        _decode_step, mode=mode, options=options, dynamic=False, recompile_limit=RECOMPILE_LIMIT)


class CompiledDecode:
    """Decode steps through the compiled forward; the position lives on the device."""

    def __init__(self, model: Transformer, start: int, end: int) -> None:
        self.model = model
        self.cache_length: int | None = cache_length(end, model.args.max_seq_len)
        self.position = torch.full((1,), start, dtype=torch.long, device=model.input_device)
        self.cuda_graphs = model.input_device.type == "cuda"
        self.step = compiled_step(model.input_device.type)

    def __call__(self, tokens: Tensor) -> Tensor:
        """Logits [B, V] for the next tokens [B, 1]."""
        if self.cuda_graphs:  # the previous step's outputs are consumed: the graph may reuse them
            torch.compiler.cudagraph_mark_step_begin()
        logits = self.step(self.model, tokens, self.position)
        self.position += 1
        return logits
