"""Outlines 1.x as an engine: JSON-schema generation over a transformers model.

Outlines returns text, not token ids, so parity is text-level. Its default backend
(outlines_core) was seen ignoring integer bounds and emitting flexible whitespace; the
`json_schema` check's failures on its output are reported as findings, not as failures of
the case (they are Outlines' behaviour, not a device bug).

Beam search is not declared: Outlines 1.3's logits processor keeps one guide per sequence
and does not follow beam reordering, so `num_beams > 1` fails on CPU already with
"ValueError: No next state found for the current state" (seen with outlines 1.3.3).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from harness.engines import register
from harness.engines.base import Capabilities, Engine, Generation, Placement, Request
from harness.engines.hf_transformers import TransformersEngine


@register
class OutlinesEngine(Engine):
    name = "outlines"
    model: Any
    capabilities = Capabilities(
        features=frozenset({"json_schema"}),
        devices=frozenset({"cpu", "cuda", "auto"}),
        simulated=True,
        token_ids=False,
        findings=frozenset({"json_schema"}),
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import outlines  # noqa: F401
        except ImportError:
            return "outlines is not installed (pip install 'samedevice[engines]')"
        return TransformersEngine.unavailable_reason()

    def load(self, request: Request, placement: Placement) -> None:
        import outlines
        from transformers import AutoTokenizer

        self.hf = TransformersEngine()
        self.hf.load(dataclasses.replace(request, options=None), placement)  # outlines' options are not transformers'
        tokenizer = AutoTokenizer.from_pretrained(request.model_dir)
        self.model = outlines.from_transformers(self.hf.model, tokenizer)  # type: ignore[arg-type]

    def modules(self) -> list[torch.nn.Module]:
        return self.hf.modules()

    def generate(self, request: Request) -> Generation:
        import outlines
        from outlines.types import JsonSchema

        spec = request.spec
        output_type = JsonSchema(json.dumps(spec.json_schema)) if spec.json_schema is not None else None
        generator = outlines.Generator(self.model, output_type)
        kwargs: dict = {"max_new_tokens": spec.max_new_tokens}
        if not spec.sampling.greedy:
            kwargs |= {"do_sample": True, "temperature": spec.sampling.temperature}
            if spec.sampling.top_k:
                kwargs["top_k"] = spec.sampling.top_k
            if spec.sampling.top_p:
                kwargs["top_p"] = spec.sampling.top_p
        if request.options is not None:
            kwargs |= request.options.generate  # the scenario's own arguments win
        texts = []
        for prompt in spec.prompts:
            request.on_phase("prefill")
            torch.manual_seed(spec.sampling.seed)
            texts.append(str(generator(prompt, **kwargs)))
        return Generation(tokens=[[] for _ in texts], texts=texts)

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        return self.hf.teacher_forced_logits(ids)

    def close(self) -> None:
        self.model = None
        self.hf.close()
