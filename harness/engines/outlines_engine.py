"""Outlines as an engine: JSON-schema generation over a transformers model (Outlines 1.x
here; 0.0.28-0.2.x through outlines_compat.py).

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
from harness.engines.hf_transformers import TRANSFORMERS_TRANSFERS, TransformersEngine
from harness.engines.outlines_compat import generate_legacy, is_legacy, legacy_problem, wrap_model
from harness.engines.versions import engine_problem
from harness.format.scenario import Budget


@register
class OutlinesEngine(Engine):
    name = "outlines"
    model: Any
    capabilities = Capabilities(
        features=frozenset({"json_schema"}),
        devices=frozenset({"cpu", "cuda", "auto"}),
        runs_on_torch=True,
        token_ids=False,
        findings=frozenset({"json_schema"}),
        # transformers' generate() underneath: its profile. Under a JSON schema, outlines_core's
        # torch path copies each token's bitmask to the logits' device and back to the CPU
        # (a round trip per token, outlines/backends/outlines_core.py) and reads a scalar (a sync).
        transfers=TRANSFORMERS_TRANSFERS,
        feature_transfers={"json_schema": TRANSFORMERS_TRANSFERS.model_copy(
            update={"decode": Budget(h2d=1, d2h=1, syncs=2)})},
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return engine_problem(cls.name) or legacy_problem()  # versions: harness/engines/versions.py

    def load(self, request: Request, placement: Placement) -> None:
        from transformers import AutoTokenizer

        self.hf = TransformersEngine()
        self.hf.load(dataclasses.replace(request, options=None), placement)  # outlines' options are not transformers'
        tokenizer = AutoTokenizer.from_pretrained(request.model_dir)
        self.model = wrap_model(self.hf.model, tokenizer, request.model_dir)  # Outlines 1.x or older

    def modules(self) -> list[torch.nn.Module]:
        return self.hf.modules()

    def generate(self, request: Request) -> Generation:
        if is_legacy():
            return generate_legacy(self, request)  # Outlines before 1.0 (outlines_compat.py)
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
