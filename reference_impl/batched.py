"""Padded batches: several prompts generated together, each row as it would be alone.

The rows are padded to the longest prompt, on the left or on the right, and share the
cache's slots. What keeps a row equal to its prompt run alone (`Padded`, in `model`):

- a mask of the slots that hold the row's real tokens: its padding is never attended to;
- per-row RoPE positions: a row's first real token is position 0 wherever its slot is;
- per-row logits at the end of prefill: a right-padded row's last real slot, not the last slot;
- per-row EOS: a row that chose its stop token ends there; the batch goes on for the others
  (the finished row's further tokens are computed and dropped, never returned).

Transfers: the prompt ids, the mask and the positions go to the devices once, in prefill (a
copy of the mask and positions per device of the model); each decode step reads the chosen
tokens back in one device-to-host copy, as `generate` does, and moves nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from reference_impl.generate import (
    GenerateConfig,
    _noop,
    build_pipeline,
    prompt_tensor,
    to_input_device,
)
from reference_impl.model import Padded, Transformer
from reference_impl.sampling import next_token

Padding = Literal["left", "right"]


def padded_rows(prompts: list[list[int]], pad_id: int, padding: Padding) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    return [[pad_id] * (width - len(p)) + p if padding == "left" else p + [pad_id] * (width - len(p)) for p in prompts]


def row_state(model: Transformer, prompts: list[list[int]], length: int, padding: Padding) -> Padded:
    """The rows' real slots [B, length] (slots after the prompts hold generated tokens: real)
    and the prompt slots' positions [B, width], on every device of the model."""
    width = max(len(p) for p in prompts)
    valid = torch.ones(len(prompts), length, dtype=torch.bool)
    positions = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        pad = width - len(prompt)
        real = range(pad, width) if padding == "left" else range(len(prompt))
        valid[row, :width] = False
        valid[row, real.start : real.stop] = True
        positions[row, real.start : real.stop] = torch.arange(len(prompt))  # padding: 0, masked out
    devices = dict.fromkeys([model.input_device, *model.block_devices])
    on = {d: (valid if "padding_mask_on_cpu" in model.faults else valid.to(d)) for d in devices}
    at = {d: (positions if "position_ids_on_cpu" in model.faults else positions.to(d)) for d in devices}
    return Padded(valid=on, positions=at)


@torch.inference_mode()
def generate_batch(
    model: Transformer,
    prompts: list[list[int]],
    config: GenerateConfig,
    pad_id: int,
    padding: Padding = "left",
    on_phase: Callable[[str], None] = _noop,
) -> list[list[int]]:
    """Generated token ids per row of one padded batch (greedy; logit bias applies)."""
    unsupported = [what for what, present in (
        ("beam search", config.num_beams > 1), ("a JSON schema", config.json is not None),
        ("sampling", config.temperature > 0), ("a repetition penalty", config.repetition_penalty is not None),
        (f"the {config.kv_cache} KV cache", config.kv_cache != "static")) if present]
    if unsupported:
        raise ValueError(f"generate_batch() runs greedy rows on the static cache, not with {', '.join(unsupported)}")
    on_phase("prefill")
    width = max(len(p) for p in prompts)
    ids = prompt_tensor(model, padded_rows(prompts, pad_id, padding))  # [B, width]
    pipeline = build_pipeline(model, ids, config)
    length = width + config.max_new_tokens
    padded = row_state(model, prompts, length, padding)
    model.setup_caches(len(prompts), "static", length)
    if padding == "left":  # every row's last real token is in the last slot
        last = model(ids, 0, last_only=True, padded=padded)  # [B, V]
    else:
        logits = model(ids, 0, padded=padded)  # [B, width, V]
        last = torch.stack([logits[row, len(p) - 1] for row, p in enumerate(prompts)])
    # [B, 1]: the first generated token follows the row's last real one, wherever its slot is
    padded.positions = {d: p.amax(dim=1, keepdim=True) + 1 for d, p in padded.positions.items()}
    token = next_token(pipeline(last), 0.0, None, None, None)  # [B]
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(config.max_new_tokens):
        for row, value in enumerate(token.cpu().tolist()):  # the one read-back per step
            if not done[row]:
                out[row].append(value)
                done[row] = value == config.stop_id or len(out[row]) >= config.max_new_tokens
        if all(done):
            return out
        if step == 0:
            on_phase("decode")
        logits = model(to_input_device(model, token), width + step, last_only=True, padded=padded)
        padded.advance()
        token = next_token(pipeline(logits), 0.0, None, None, None)
    return out
