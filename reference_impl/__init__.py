"""The bundled reference inference implementation: readable, device-clean, fast.

One module per concern: `model` (llama and mixtral-style MoE decoders, RoPE), `cache` (KV
cache kinds), `placement` (loading onto one or several devices), `quantize` (int8, Q8_0,
Q4_0), `sampling` (bias, penalty, greedy/sampled choice), `constrained` (JSON schema via
llguidance), `generate` (the prefill/decode loop), `compiled` (the decode step under
torch.compile: `GenerateConfig(compile=True)`), `beam` (beam search) and `faults` (the
switches that put each known device bug back).
"""

from reference_impl.beam import Beam, BeamSearchResult, beam_search
from reference_impl.generate import GenerateConfig, JsonSpec, generate, teacher_forced_logits
from reference_impl.loading import load_model
from reference_impl.model import ModelArgs, Transformer

__all__ = [
    "Beam",
    "BeamSearchResult",
    "GenerateConfig",
    "JsonSpec",
    "ModelArgs",
    "Transformer",
    "beam_search",
    "generate",
    "load_model",
    "teacher_forced_logits",
]
