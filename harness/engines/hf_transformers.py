"""transformers (+ accelerate for `auto`) as an engine: `generate()` as users call it.

The model loads on the CPU from the tiny-model directory, then moves to its device, or for
`auto` is dispatched by accelerate over the GPUs with a balanced layer map (the same split
the reference uses), so real and simulated runs take the same path. Decoding phases are
marked by a logits processor: its first call comes right after the prefill forward.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from harness.engines import register
from harness.engines.base import TORCH_DTYPES, Capabilities, Engine, Generation, Placement, Request
from harness.engines.hf_compat import dtype_argument, sequence_bias_argument
from harness.engines.reference import resolve_logit_bias
from harness.versions import engine_problem


def balanced_device_map(num_layers: int, devices: tuple[str, ...]) -> dict[str, str]:
    """Contiguous layer groups; embeddings with the first group, norm and head with the last."""
    per_device, extra = divmod(num_layers, len(devices))
    device_map = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0]}
    layer = 0
    for index, device in enumerate(devices):
        for _ in range(per_device + (1 if index < extra else 0)):
            device_map[f"model.layers.{layer}"] = device
            layer += 1
    device_map |= {"model.norm": devices[-1], "lm_head": devices[-1]}
    return device_map


class PhaseMarker:
    """A forward pre-hook on the model: the first forward of a generation is the prefill,
    every later one a decode step. Works for any engine built on a transformers model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forwards = 0
        self.request: Request | None = None
        self.handle = model.register_forward_pre_hook(self._before_forward)

    def start(self, request: Request) -> None:
        """Call before each prompt's generation."""
        self.request, self.forwards = request, 0
        request.on_phase("prefill")

    def stop(self) -> int:
        """Decode steps of the generation just finished."""
        self.request = None
        return max(self.forwards - 1, 0)

    def _before_forward(self, module: torch.nn.Module, args: object) -> None:
        if self.request is not None and self.forwards == 1:
            self.request.on_phase("decode")
        self.forwards += 1


class JsonSchemaProcessor:
    """A transformers logits processor constraining every row to a JSON schema with
    llguidance (the reference implementation's `JsonConstraint`: mask computed on the host,
    applied on the scores' device). Rows are re-synchronised from `input_ids` each step, so
    beam search's reordering is followed too. Reading the generated ids back costs one
    device-to-host copy per step: a host-side grammar needs the tokens."""

    def __init__(self, request: Request, prompt_len: int, rows: int) -> None:
        self.request, self.prompt_len, self.rows = request, prompt_len, rows
        self.consumed: list[list[int]] = [[] for _ in range(rows)]
        self.constraint: Any = None

    def _build(self, device: torch.device) -> None:
        """On the first call, on the scores' device: under accelerate's split, generate()
        hands processors scores on the input ids' device, not the lm_head's (a first version
        built it on the lm_head's device and the harness caught it: cuda:0 vs cuda:1)."""
        from reference_impl.constrained import JsonConstraint

        schema = self.request.scenario.features.json_schema
        assert schema is not None
        directory = self.request.model_dir
        vocab = json.loads((directory / "config.json").read_text())["vocab_size"]
        self.constraint = JsonConstraint(schema.schema_, str(directory / "tokenizer.json"), self.rows, vocab,
                                         self.request.eos_id, device)
        self.fresh = self.constraint.matchers[0].deep_copy()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.constraint is None:
            self._build(scores.device)
        generated = input_ids[:, self.prompt_len:].tolist()
        for row, tokens in enumerate(generated):
            done = self.consumed[row]
            if tokens[: len(done)] != done:  # a beam took over this row: replay its history
                self.constraint.matchers[row] = self.fresh.deep_copy()
                done = []
            if len(tokens) > len(done):
                self.constraint.advance(tokens[len(done):], rows=[row] * (len(tokens) - len(done)))
            self.consumed[row] = tokens
        return self.constraint.apply(scores)


@register
class TransformersEngine(Engine):
    name = "transformers"
    model: Any  # a PreTrainedModel, possibly dispatched by accelerate
    capabilities = Capabilities(
        features=frozenset({"logit_bias", "beam_search", "json_schema"}),
        devices=frozenset({"cpu", "cuda", "auto"}),
        simulated=True,
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return engine_problem(cls.name)  # versions declared in harness/versions.py

    def load(self, request: Request, placement: Placement) -> None:
        from transformers import AutoModelForCausalLM

        model: Any = AutoModelForCausalLM.from_pretrained(request.model_dir, **dtype_argument(TORCH_DTYPES[request.scenario.model.dtype]))
        model.eval()
        if placement.kind == "auto":
            from accelerate import dispatch_model

            device_map = balanced_device_map(model.config.num_hidden_layers, placement.devices)
            # main_device: else accelerate picks one from a set. skip_keys: the cache stays where
            # each layer put it, as from_pretrained(device_map=...) dispatches (transformers passes
            # model._skip_keys_device_placement); without it a tuple past_key_values handed to the
            # model (Outlines 0.0.x) is moved whole to the main device.
            model = dispatch_model(model, device_map=device_map, main_device=placement.devices[0],
                                   skip_keys=model._skip_keys_device_placement)
        elif placement.devices[0] != "cpu":
            model = model.to(placement.devices[0])
        self.model = model
        self.input_device = model.get_input_embeddings().weight.device
        self.phases = PhaseMarker(model)

    def generate(self, request: Request) -> Generation:
        s = request.scenario
        beams = s.features.beam_search
        kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_new_tokens,
            "min_new_tokens": 0 if s.stop_at_eos else s.max_new_tokens,
            "eos_token_id": request.eos_id,
            "pad_token_id": request.eos_id,
            "do_sample": s.sampling.mode == "sample",
        }
        if s.sampling.mode == "sample":
            kwargs |= {"temperature": s.sampling.temperature or 1.0, "top_k": s.sampling.top_k or 0,
                       "top_p": s.sampling.top_p or 1.0}
        if s.sampling.repetition_penalty:
            kwargs["repetition_penalty"] = s.sampling.repetition_penalty
        bias = resolve_logit_bias(request)
        if bias:
            kwargs["sequence_bias"] = sequence_bias_argument(bias)
        if beams is not None:
            kwargs |= {"num_beams": beams.num_beams, "length_penalty": beams.length_penalty,
                       "num_return_sequences": beams.num_return, "output_scores": True,
                       "return_dict_in_generate": True, "early_stopping": True}
        tokens: list[list[int]] = []
        notes: list[str] = []
        extra: dict[str, Any] = {"beams": []}
        decode_steps = 0
        for ids in request.prompt_ids:
            self.phases.start(request)
            torch.manual_seed(s.sampling.seed)
            prompt = torch.tensor([ids], device=self.input_device)
            if s.features.json_schema is not None:
                from transformers import LogitsProcessorList

                rows = beams.num_beams if beams is not None else 1
                kwargs["logits_processor"] = LogitsProcessorList([JsonSchemaProcessor(request, len(ids), rows)])
            out = self.model.generate(prompt, **kwargs)
            decode_steps += self.phases.stop()
            if beams is not None:
                sequences = out.sequences[:, len(ids):].tolist()
                scores = out.sequences_scores.tolist()
                extra["beams"].append([{"tokens": _strip(t, request.eos_id), "score": sc} for t, sc in zip(sequences, scores, strict=True)])
                tokens.append(_strip(sequences[0], request.eos_id))
            else:
                tokens.append(_strip(out[0, len(ids):].tolist(), request.eos_id, keep_eos=True))
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens], notes=notes,
                          extra=extra if beams is not None else {}, decode_steps=decode_steps)

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(torch.tensor([ids], device=self.input_device)).logits
        return logits[0].float().cpu()

    def close(self) -> None:
        self.model = None


def _strip(tokens: list[int], eos_id: int, keep_eos: bool = False) -> list[int]:
    """Tokens up to EOS (kept when keep_eos) and without the padding generate() adds."""
    if eos_id in tokens:
        end = tokens.index(eos_id)
        return tokens[: end + 1] if keep_eos else tokens[:end]
    return tokens
