"""The bundled reference implementation as an engine."""

from __future__ import annotations

import torch

from harness.engines import register
from harness.engines.base import Capabilities, Engine, Generation, Placement, Request

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register
class ReferenceEngine(Engine):
    name = "reference"
    capabilities = Capabilities(
        features=frozenset({"logit_bias"}),
        devices=frozenset({"cpu", "cuda", "auto"}),
        simulated=True,
    )

    def load(self, request: Request, placement: Placement) -> None:
        from reference_impl import load_model

        spec = request.scenario.model
        if spec.family != "llama":
            raise NotImplementedError(f"reference engine: family {spec.family} is not implemented yet")
        self.model = load_model(request.model_dir, list(placement.devices), _DTYPES[spec.dtype])

    def generate(self, request: Request) -> Generation:
        from reference_impl import GenerateConfig, generate

        s = request.scenario
        sampled = s.sampling.mode == "sample"
        config = GenerateConfig(
            max_new_tokens=s.max_new_tokens,
            eos_id=request.eos_id if s.stop_at_eos else None,
            temperature=(s.sampling.temperature or 1.0) if sampled else 0.0,
            top_k=s.sampling.top_k,
            top_p=s.sampling.top_p,
            repetition_penalty=s.sampling.repetition_penalty,
            seed=s.sampling.seed,
            logit_bias=resolve_logit_bias(request),
        )
        tokens = [generate(self.model, ids, config, request.on_phase) for ids in request.prompt_ids]
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens])

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        from reference_impl import teacher_forced_logits

        return teacher_forced_logits(self.model, ids)

    def close(self) -> None:
        self.model = None


def resolve_logit_bias(request: Request) -> dict[int, float]:
    """The scenario's bias as token id -> value (text entries: every token of the string)."""
    feature = request.scenario.features.logit_bias
    if feature is None:
        return {}
    bias = dict(feature.ids)
    for text, value in feature.text.items():
        for token_id in request.encode(text):
            bias[token_id] = value
    return bias
