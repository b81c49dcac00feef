"""The bundled reference implementation as an engine: every scenario feature, both model
families, every fault switch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness.engines import register
from harness.engines.base import TORCH_DTYPES, Capabilities, Engine, Generation, Placement, Request
from harness.scenario import FAULTS, FEATURES

if TYPE_CHECKING:
    from reference_impl import GenerateConfig, Transformer



@register
class ReferenceEngine(Engine):
    name = "reference"
    capabilities = Capabilities(
        features=frozenset(FEATURES),
        devices=frozenset({"cpu", "cuda", "auto"}),
        simulated=True,
        faults=frozenset(FAULTS),
    )

    model: Transformer | None = None

    def load(self, request: Request, placement: Placement) -> None:
        from reference_impl import load_model

        s = request.scenario
        quantization = s.features.quantization
        self.model = load_model(
            request.model_dir,
            list(placement.devices),
            TORCH_DTYPES[s.model.dtype],
            quantization=quantization.format if quantization else None,
            quantize_router=quantization.router if quantization else False,
            faults=s.faults,
        )

    def generate(self, request: Request) -> Generation:
        from reference_impl import beam_search, generate

        assert self.model is not None, "generate() before load()"
        config = build_config(request)
        if config.num_beams == 1:
            tokens = [generate(self.model, ids, config, request.on_phase) for ids in request.prompt_ids]
            return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens])
        results = [beam_search(self.model, ids, config, request.on_phase) for ids in request.prompt_ids]
        tokens = [r.beams[0].tokens for r in results]
        return Generation(
            tokens=tokens,
            texts=[request.decode(t) for t in tokens],
            extra={"beams": [[{"tokens": b.tokens, "score": b.score} for b in r.beams] for r in results]},
            decode_steps=sum(r.steps - 1 for r in results),  # a beam that ended early is shorter
        )

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        from reference_impl import teacher_forced_logits

        assert self.model is not None, "teacher_forced_logits() before load()"
        return teacher_forced_logits(self.model, ids)

    def close(self) -> None:
        self.model = None


def build_config(request: Request) -> GenerateConfig:
    """The scenario's sampling and features as a reference_impl GenerateConfig."""
    from reference_impl import GenerateConfig, JsonSpec

    s = request.scenario
    f = s.features
    sampled = s.sampling.mode == "sample"
    json_spec = None
    if f.json_schema is not None:
        json_spec = JsonSpec(f.json_schema.schema_, (request.model_dir / "tokenizer.json").read_text(), request.eos_id)
    return GenerateConfig(
        max_new_tokens=s.max_new_tokens,
        eos_id=request.eos_id if s.stop_at_eos else None,
        temperature=(s.sampling.temperature or 1.0) if sampled else 0.0,
        top_k=s.sampling.top_k,
        top_p=s.sampling.top_p,
        repetition_penalty=s.sampling.repetition_penalty,
        seed=s.sampling.seed,
        logit_bias=resolve_logit_bias(request),
        kv_cache=f.kv_cache.kind if f.kv_cache else "static",
        json=json_spec,
        num_beams=f.beam_search.num_beams if f.beam_search else 1,
        length_penalty=f.beam_search.length_penalty if f.beam_search else 1.0,
        num_return=f.beam_search.num_return if f.beam_search else 1,
    )


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
