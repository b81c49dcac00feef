"""The generation loop: prefill, then one token per decode step.

Transfer profile (what the harness budgets): the prompt goes to the device once in prefill;
each decode step reads back only the chosen token (one device-to-host copy, for stopping)
and makes no other host sync and no host-to-device copy. Under `auto`, activations hop
once per device boundary and the token hops back to the first device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from reference_impl.model import Transformer
from reference_impl.sampling import apply_repetition_penalty, next_token


@dataclass
class GenerateConfig:
    max_new_tokens: int = 16
    eos_id: int | None = None  # None: never stop early
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)


def _noop(phase: str) -> None:
    pass


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_ids: list[int],
    config: GenerateConfig,
    on_phase: Callable[[str], None] = _noop,
) -> list[int]:
    """Generated token ids for one prompt (batch 1)."""
    on_phase("prefill")
    model.setup_caches(batch=1)
    logits_device = model.output_device
    ids = torch.tensor([prompt_ids], device=model.input_device)  # [1, S]
    bias = _dense_bias(config.logit_bias, model.args.vocab_size, logits_device)
    seen = None
    if config.repetition_penalty is not None:
        seen = torch.zeros(1, model.args.vocab_size, dtype=torch.bool, device=logits_device)
        seen[0, ids[0].to(logits_device)] = True
    generator = None
    if config.temperature > 0:
        generator = torch.Generator(device=logits_device).manual_seed(config.seed)

    def choose(logits: Tensor) -> Tensor:
        if bias is not None:
            logits = logits + bias
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, config.repetition_penalty or 1.0)
        token = next_token(logits, config.temperature, config.top_k, config.top_p, generator)
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        return token  # [1], on the logits' device

    token = choose(model(ids, 0)[:, -1])
    position = len(prompt_ids)
    out: list[int] = []
    while True:
        value = token.cpu().tolist()[0]  # the one read-back per step: needed to stop at EOS
        out.append(value)
        if len(out) >= config.max_new_tokens or value == config.eos_id:
            return out
        if len(out) == 1:
            on_phase("decode")
        step_input = token.view(1, 1)
        if step_input.device != model.input_device:
            step_input = step_input.to(model.input_device)  # auto: the last device hands back
        token = choose(model(step_input, position)[:, -1])
        position += 1


@torch.inference_mode()
def teacher_forced_logits(model: Transformer, ids: list[int]) -> Tensor:
    """Logits [len(ids), V] on the CPU for every position of `ids`, in one forward pass."""
    model.setup_caches(batch=1)
    tokens = torch.tensor([ids], device=model.input_device)
    return model(tokens, 0)[0].cpu()


def _dense_bias(bias: dict[int, float], vocab: int, device: torch.device) -> Tensor | None:
    """The bias as a [V] row built once on the logits' device (mistral.rs #398's fix)."""
    if not bias:
        return None
    row = torch.zeros(vocab)
    for token_id, value in bias.items():
        row[token_id] += value
    return row.to(device)
