"""The bundled reference inference implementation: readable, device-clean, fast.

One module per concern: `model` (llama decoder, KV cache, RoPE), `placement` (loading onto
one or several devices), `sampling`, `generate` (the prefill/decode loop).
"""

from reference_impl.generate import GenerateConfig, generate, teacher_forced_logits
from reference_impl.model import ModelArgs, Transformer
from reference_impl.placement import load_model

__all__ = ["GenerateConfig", "ModelArgs", "Transformer", "generate", "load_model", "teacher_forced_logits"]
