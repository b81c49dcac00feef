"""The bundled reference implementation as an engine: every scenario feature, both model
families, every fault switch."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import torch

from harness.engines import register
from harness.engines.base import (
    DEFAULT_FEATURE_TRANSFERS,
    DEFAULT_TRANSFERS,
    TORCH_DTYPES,
    Capabilities,
    Engine,
    Generation,
    Placement,
    Request,
)
from harness.format.scenario import FAULTS, FEATURES, Budget, PhaseBudgets

# Its steady state per decode token (measured; README "Transfer profiles"): the default
# profile, and on a split model the hidden state crossing to the second GPU and back (two D2D,
# whatever the depth), plus the beam index sent to the second GPU's cache reorder in beam search.
_AUTO = {"auto": PhaseBudgets(decode=Budget(d2d=2))}
REFERENCE_TRANSFERS = DEFAULT_TRANSFERS.model_copy(update=_AUTO)
REFERENCE_FEATURE_TRANSFERS = {
    **{name: profile.model_copy(update=_AUTO) for name, profile in DEFAULT_FEATURE_TRANSFERS.items()},
    "beam_search": DEFAULT_TRANSFERS.model_copy(update={"auto": PhaseBudgets(decode=Budget(d2d=3))}),
}

if TYPE_CHECKING:
    from reference_impl import GenerateConfig, Transformer



@register
class ReferenceEngine(Engine):
    name = "reference"
    capabilities = Capabilities(
        features=frozenset(FEATURES),
        devices=frozenset({"cpu", "cuda", "auto"}),
        runs_on_torch=True,
        batching=True,  # reference_impl.batched: padded rows, per-row positions, mask and EOS
        faults=frozenset(FAULTS),
        # What reference_impl loads faithfully (its greedy ids equal transformers'); it refuses
        # configs it cannot honour (rope scaling, biases, tied head) when it loads.
        families=frozenset({"llama", "mixtral"}),
        # The default (harness/engines/base.py) with its D2D on auto.
        transfers=REFERENCE_TRANSFERS,
        feature_transfers=REFERENCE_FEATURE_TRANSFERS,
    )

    model: Transformer | None = None

    @classmethod
    def feature_unavailable(cls, feature: str) -> str | None:
        needs = {"json_schema": "llguidance", "quantization": "gguf"}.get(feature)
        if needs is not None and importlib.util.find_spec(needs) is None:
            return f"{needs} is not installed (pip install {needs})"
        return None

    def load(self, request: Request, placement: Placement) -> None:
        from reference_impl import load_model

        spec = request.spec
        self.model = load_model(
            request.model_dir,
            list(placement.devices),
            TORCH_DTYPES[spec.dtype],
            quantization=spec.quantization.format if spec.quantization else None,
            quantize_router=spec.quantization.router if spec.quantization else False,
            faults=spec.faults,
        )

    def generate(self, request: Request) -> Generation:
        from reference_impl import beam_search, generate

        assert self.model is not None, "generate() before load()"
        config = build_config(request)
        notes = compile_notes(self.model, config, request)
        if request.spec.batch is not None:
            return self._generate_batches(request, config, notes)
        if config.num_beams == 1:
            tokens = [generate(self.model, ids, config, request.on_phase) for ids in request.prompt_ids]
            return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens], notes=notes)
        results = [beam_search(self.model, ids, config, request.on_phase) for ids in request.prompt_ids]
        tokens = [r.beams[0].tokens for r in results]
        return Generation(
            tokens=tokens,
            texts=[request.decode(t) for t in tokens],
            extra={"beams": [[{"tokens": b.tokens, "score": b.score} for b in r.beams] for r in results]},
            decode_steps=sum(r.steps - 1 for r in results),  # a beam that ended early is shorter
            notes=notes,
        )

    def _generate_batches(self, request: Request, config: GenerateConfig, notes: list[str]) -> Generation:
        from reference_impl.batched import generate_batch

        assert self.model is not None and request.spec.batch is not None
        batch, prompts = request.spec.batch, request.prompt_ids
        tokens: list[list[int]] = []
        for group in batch.groups(len(prompts)):  # the EOS id pads (masked out: any id would do)
            tokens += generate_batch(self.model, [prompts[i] for i in group], config, request.eos_id, batch.padding,
                                     request.on_phase)
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens], notes=notes)

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        from reference_impl import teacher_forced_logits

        assert self.model is not None, "teacher_forced_logits() before load()"
        return teacher_forced_logits(self.model, ids)

    def close(self) -> None:
        self.model = None


def build_config(request: Request) -> GenerateConfig:
    """The resolved spec as a reference_impl GenerateConfig, field by field."""
    from reference_impl import GenerateConfig, JsonSpec

    spec = request.spec
    json_spec = None
    if spec.json_schema is not None:
        json_spec = JsonSpec(spec.json_schema, (request.model_dir / "tokenizer.json").read_text(), spec.eos_id)
    return GenerateConfig(
        max_new_tokens=spec.max_new_tokens,
        eos_id=spec.stop_id,
        temperature=spec.sampling.temperature,
        top_k=spec.sampling.top_k,
        top_p=spec.sampling.top_p,
        repetition_penalty=spec.sampling.repetition_penalty,
        seed=spec.sampling.seed,
        logit_bias=dict(spec.logit_bias),
        kv_cache=spec.kv_cache or "static",
        json=json_spec,
        num_beams=spec.beams.num_beams if spec.beams else 1,
        length_penalty=spec.beams.length_penalty if spec.beams else 1.0,
        num_return=spec.beams.num_return if spec.beams else 1,
        # engine_options.reference.compile: never on simulated GPUs, which cannot be traced
        compile=bool(request.options and request.options.compile) and not simulated() and spec.batch is None,
    )


def simulated() -> bool:
    from harness.devices.state import STATE

    return STATE.active


def compile_notes(model: Transformer, config: GenerateConfig, request: Request) -> list[str]:
    """Why `compile: true` did not compile this case's decode steps, if it did not."""
    from reference_impl import compiled

    if not (request.options and request.options.compile):
        return []
    if request.spec.batch is not None:
        return ["compile not applied: padded batches decode eagerly"]
    if simulated():
        return ["compile ignored: simulated GPUs cannot be traced by torch.compile; decoded eagerly"]
    why = compiled.unsupported_reason(model, config)
    return [f"compile not applied: {why}; decoded eagerly"] if why else ["decode step compiled (torch.compile)"]
