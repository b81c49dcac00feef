"""mistral.rs (the `mistralrs` wheel) as an engine: the engine behind bug class 1.

The PyPI wheel is a CPU build (CUDA needs mistral.rs's CUDA build), so only `cpu` is
declared. It returns text, not token ids: parity is text-level. Quirks handled here: the
config needs a top-level `rope_theta` (tinymodel writes it), the tokenizer is passed as
`tokenizer_json`, the CPU KV cache is f16 unless MISTRALRS_CPU_KV_F32=1, and a completion
request still goes through a chat template, so a pass-through template is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.engines import register
from harness.engines.base import Capabilities, Engine, Generation, Placement, Request

_PASS_THROUGH_TEMPLATE = '{{ messages[0]["content"] }}'


@register
class MistralRsEngine(Engine):
    name = "mistralrs"
    runner: Any
    capabilities = Capabilities(
        features=frozenset({"logit_bias", "json_schema"}),
        devices=frozenset({"cpu"}),
        token_ids=False,
        teacher_forcing=False,
        deterministic=False,  # under sampling: the CPU build cannot be seeded
        # The adapter names mistral.rs's Llama architecture.
        families=frozenset({"llama"}),
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import mistralrs  # noqa: F401
        except ImportError:
            return "mistralrs is not installed (pip install 'samedevice[engines]')"
        return None

    def load(self, request: Request, placement: Placement) -> None:
        from mistralrs import Architecture, Runner, Which

        os.environ.setdefault("MISTRALRS_CPU_KV_F32", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if request.model is not None and request.model.family != "llama":  # Capabilities.families skips these
            raise NotImplementedError("the mistralrs adapter loads llama models only")
        directory = Path(request.model_dir)
        template = directory / "passthrough_chat_template.jinja"
        if not template.exists():
            template.write_text(_PASS_THROUGH_TEMPLATE)
        which = Which.Plain(model_id=str(directory), tokenizer_json=str(directory / "tokenizer.json"),
                            arch=Architecture.Llama)
        self.runner = Runner(
            which=which,  # type: ignore[arg-type]  # the stub types Which's variants apart
            # No `seed=`: the CPU build refuses it ("cannot seed the CPU rng"); sampled runs
            # are therefore not reproducible and parity for them is text-level at best.
            token_source="none", no_paged_attn=True, chat_template=str(template),
        )

    def generate(self, request: Request) -> Generation:
        from mistralrs import CompletionRequest

        spec = request.spec
        sampling = spec.sampling
        kwargs: dict = {"max_tokens": spec.max_new_tokens, "ignore_eos": spec.stop_id is None,
                        "temperature": sampling.temperature}
        if not sampling.greedy:
            kwargs |= {"top_k": sampling.top_k, "top_p": sampling.top_p}
        if sampling.repetition_penalty:
            kwargs["repetition_penalty"] = sampling.repetition_penalty
        if spec.logit_bias:
            kwargs["logit_bias"] = {int(k): float(v) for k, v in spec.logit_bias.items()}
        if spec.json_schema is not None:
            kwargs |= {"grammar": json.dumps(spec.json_schema), "grammar_type": "json_schema"}
        texts = []
        for prompt in spec.prompts:
            request.on_phase("prefill")
            response = self.runner.send_completion_request(CompletionRequest(prompt=prompt, model="default", **kwargs))
            texts.append(response.choices[0].text)
        # One request generates every token: no step the harness can see (and nothing is
        # tracked: the engine is not torch, and runs on the CPU only).
        return Generation(tokens=[[] for _ in texts], texts=texts, decode_steps=0)

    def close(self) -> None:
        self.runner = None
