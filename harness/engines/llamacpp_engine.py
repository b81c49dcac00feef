"""llama.cpp (`llama-cpp-python`) as an engine, on GGUF files written from the same weights.

Optional: the wheel builds from source (about 8 minutes), so it lives in the `llamacpp`
extra and its own nox session, and is skipped with a reason where it is not installed.
Token ids are compared, not text. `quantization.format: q8_0` loads the Q8_0 file; every
other scenario loads the f32 file. `cuda:0` offloads every layer (needs a CUDA build).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from harness.engines import register
from harness.engines.base import Capabilities, Engine, Generation, Placement, Request


@register
class LlamaCppEngine(Engine):
    name = "llamacpp"
    llm: Any
    capabilities = Capabilities(
        features=frozenset({"logit_bias", "json_schema", "quantization"}),
        devices=frozenset({"cpu", "cuda"}),
        # llama.cpp's JSON-schema-to-grammar conversion does not enforce numeric bounds
        # (seen: "age": -7511518687786936 against minimum 0): a finding, not a device bug.
        findings=frozenset({"json_schema"}),
        # GGUF export (harness.models.gguf) writes llama models.
        families=frozenset({"llama"}),
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return "llama-cpp-python is not installed (nox -s llamacpp builds it, about 8 minutes)"
        return None

    def load(self, request: Request, placement: Placement) -> None:
        from llama_cpp import Llama

        from harness.models.gguf import gguf_file

        quant = request.spec.quantization
        if quant is not None and quant.format != "q8_0":
            raise NotImplementedError(f"the llamacpp adapter writes f32 and q8_0 GGUF files, not {quant.format}")
        path = gguf_file(request.model_dir, "q8_0" if quant is not None else "f32")
        self.llm = Llama(
            model_path=str(path), n_ctx=_context_length(request), logits_all=True, verbose=False,
            n_gpu_layers=0 if placement.kind == "cpu" else -1, seed=request.spec.sampling.seed, n_threads=2,
        )

    def generate(self, request: Request) -> Generation:
        spec = request.spec
        sampling = spec.sampling
        bias = spec.logit_bias
        processors: Any = None
        if bias:
            ids, values = np.array(list(bias)), np.array(list(bias.values()), dtype=np.float32)

            def add_bias(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
                scores[ids] += values
                return scores

            processors = [add_bias]
        grammar = None
        if spec.json_schema is not None:
            from llama_cpp import LlamaGrammar

            grammar = LlamaGrammar.from_json_schema(json.dumps(spec.json_schema), verbose=False)
        tokens = []
        for prompt in request.prompt_ids:
            request.on_phase("prefill")
            self.llm.reset()
            out: list[int] = []
            for token in self.llm.generate(
                prompt, temp=sampling.temperature, top_k=1 if sampling.greedy else (sampling.top_k or 0),
                top_p=sampling.top_p or 1.0, repeat_penalty=sampling.repetition_penalty or 1.0,
                logits_processor=processors, grammar=grammar, reset=True,
            ):
                out.append(int(token))
                if len(out) == 1:
                    request.on_phase("decode")
                if len(out) >= spec.max_new_tokens or token == spec.stop_id:
                    break
            tokens.append(out)
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens])

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32))

    def close(self) -> None:
        self.llm = None


def _context_length(request: Request) -> int:
    """The model's own max_position_embeddings (a generated model's is its max_seq_len)."""
    positions = request.model.max_positions if request.model is not None else None
    return positions or 512
