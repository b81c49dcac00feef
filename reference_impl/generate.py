"""The generation loop: prefill, then one token per decode step.

Transfer profile (what the harness budgets, per decode step):
- device-to-host: one, the chosen token (needed on the host to stop at EOS and to feed a
  grammar). No other host sync.
- host-to-device: none, except the JSON-schema mask (one packed bitmask per step, see
  `constrained`) and the offloaded cache (one fetch per layer, see `cache`).
- device-to-device, under `auto`: one per device boundary crossed by the activations, and
  the chosen token's hop back from the last device to the embedding's.
The prompt, the bias row and the first mask go to the device once, in prefill.

`GenerateConfig(compile=True)` runs the decode steps compiled (`compiled`: torch.compile,
CUDA graphs on CUDA) where that is supported, i.e. the static cache on one device; anything
else runs eagerly, and `compiled.unsupported_reason(model, config)` says why. The transfer
profile is the same: the compiled step's position lives on the device and is advanced there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from reference_impl import compiled
from reference_impl.constrained import JsonConstraint
from reference_impl.model import Transformer
from reference_impl.sampling import LogitsPipeline, next_token


@dataclass
class JsonSpec:
    schema: dict[str, Any]
    tokenizer_json: str  # the text of tokenizer.json, for llguidance
    eos_id: int  # ends the output once the grammar is complete


@dataclass
class GenerateConfig:
    max_new_tokens: int = 16
    eos_id: int | None = None  # None: never stop early (a JSON grammar still stops at its EOS)
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    kv_cache: str = "static"  # static | offloaded | external
    json: JsonSpec | None = None
    num_beams: int = 1  # > 1: beam search (see `beam`)
    length_penalty: float = 1.0
    num_return: int = 1
    compile: bool = False  # decode steps under torch.compile where supported (see `compiled`)

    @property
    def stop_id(self) -> int | None:
        if self.eos_id is not None:
            return self.eos_id
        return self.json.eos_id if self.json is not None else None


def _noop(phase: str) -> None:
    pass


def prompt_tensor(model: Transformer, rows: list[list[int]]) -> Tensor:
    """Prompt ids [B, S] on the embedding's device: one host-to-device copy."""
    device = model.input_device
    if "input_on_first_device" in model.faults and device.type != "cpu":
        device = torch.device(device.type, 0)  # lm-eval-harness #1575: `self.device`, not the embedding's
    return torch.tensor(rows, device=device)


def prefill(model: Transformer, ids: Tensor, kind: str, cache_length: int | None = None,
            on_phase: Callable[[str], None] = _noop) -> Tensor:
    """Fill the caches (of `cache_length` positions, default max_seq_len) with the prompt
    [B, S]; logits [B, V] of its last position.

    `external`: the caller's side of the Petals path. A first prefill of all but the last
    prompt token builds the past, which goes to the host in float32 (what a server sends
    back) and is handed to the model as its external past; the last token runs on top
    (still prefill: marked as such, so the harness does not take it for a decode step).
    """
    if kind != "external":
        model.setup_caches(ids.shape[0], kind, cache_length)
        return model(ids, 0, last_only=True)
    model.setup_caches(ids.shape[0], "static", cache_length)
    length = ids.shape[1] - 1
    if length:
        model(ids[:, :length], 0, last_only=True)
    model.use_past(model.export_past(length))
    on_phase("prefill")
    return model(ids[:, length:], length, last_only=True)


def build_pipeline(model: Transformer, ids: Tensor, config: GenerateConfig) -> LogitsPipeline:
    device = model.output_device
    constraint = None
    if config.json is not None:
        spec = config.json
        constraint = JsonConstraint(spec.schema, spec.tokenizer_json, ids.shape[0], model.args.vocab_size,
                                    spec.eos_id, device, model.faults)
    return LogitsPipeline.build(ids, model.args.vocab_size, device, config.logit_bias,
                                config.repetition_penalty, constraint, model.faults)


def to_input_device(model: Transformer, tokens: Tensor) -> Tensor:
    """Chosen tokens [B] as next input [B, 1]; under auto they hop from the last device."""
    step = tokens.view(-1, 1)
    if step.device != model.input_device:
        step = step.to(model.input_device)
    return step


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_ids: list[int],
    config: GenerateConfig,
    on_phase: Callable[[str], None] = _noop,
) -> list[int]:
    """Generated token ids for one prompt (batch 1): greedy or sampled."""
    if config.num_beams > 1:
        raise ValueError("generate() is batch 1; use beam.beam_search for num_beams > 1")
    on_phase("prefill")
    ids = prompt_tensor(model, [prompt_ids])  # [1, S]
    pipeline = build_pipeline(model, ids, config)
    generator = None
    if config.temperature > 0:
        generator = torch.Generator(device=model.output_device).manual_seed(config.seed)

    def choose(logits: Tensor) -> Tensor:
        token = next_token(pipeline(logits), config.temperature, config.top_k, config.top_p, generator)
        pipeline.observe(token)
        return token  # [1], on the logits' device

    decode = decoder(model, config, len(prompt_ids))
    token = choose(prefill(model, ids, config.kv_cache, decode.cache_length, on_phase))
    out: list[int] = []
    while True:
        if "token_read_non_blocking" in model.faults:
            host = token.to("cpu", non_blocking=True)  # flashinfer #564: no sync before the read below
            value = host.tolist()[0]  # on a GPU: may read the token before the copy landed
        else:
            value = token.cpu().tolist()[0]  # the one read-back per step
        out.append(value)
        if pipeline.constraint is not None:
            pipeline.constraint.advance([value])
        if len(out) >= config.max_new_tokens or value == config.stop_id:
            return out
        if len(out) == 1:
            on_phase("decode")
        if "pageable_upload_per_step" in model.faults:  # the next input rebuilt on the host, uploaded from pageable memory
            token = choose(decode(torch.tensor([[value]]).to(model.input_device, non_blocking=True)))
        else:
            token = choose(decode(to_input_device(model, token)))


class Decode(Protocol):
    cache_length: int | None  # positions the static cache needs; None: max_seq_len

    def __call__(self, tokens: Tensor) -> Tensor: ...


class EagerDecode:
    """Decode steps run as they are written: the position is a host int."""

    cache_length: int | None = None

    def __init__(self, model: Transformer, start: int) -> None:
        self.model, self.position = model, start

    def __call__(self, tokens: Tensor) -> Tensor:
        """Logits [B, V] for the next tokens [B, 1]."""
        logits = self.model(tokens, self.position, last_only=True)
        self.position += 1
        return logits


def decoder(model: Transformer, config: GenerateConfig, start: int) -> Decode:
    """The decode step for a request whose prompt holds `start` tokens: compiled if asked
    and supported, else eager."""
    if config.compile and compiled.unsupported_reason(model, config) is None:
        return compiled.CompiledDecode(model, start, start + config.max_new_tokens)
    return EagerDecode(model, start)


@torch.inference_mode()
def teacher_forced_logits(model: Transformer, ids: list[int]) -> Tensor:
    """Logits [len(ids), V] on the CPU for every position of `ids`, in one forward pass."""
    model.setup_caches(batch=1)
    tokens = torch.tensor([ids], device=model.input_device)
    return model(tokens, 0)[0].cpu()
