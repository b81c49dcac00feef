"""Token selection as small pure functions, all on the logits' device, none syncing.

`logits` are [B, V] float32. Randomness comes from an explicit `torch.Generator` that lives
on the logits' device, so a seed gives the same tokens run after run.
"""

from __future__ import annotations

import torch
from torch import Tensor


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """transformers' rule: divide positive logits of seen tokens by penalty, multiply negatives."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) > p  # keep the token that crosses p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_no_sync(probs: Tensor, generator: torch.Generator) -> Tensor:
    """Exponential-race sampling (gpt-fast): argmax(p / q), q ~ Exp(1). No host sync,
    unlike torch.multinomial, which checks its input on the host."""
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / q, dim=-1)


def next_token(
    logits: Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Token ids [B]; temperature 0 means greedy."""
    if temperature <= 0 or generator is None:
        return torch.argmax(logits, dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return sample_no_sync(logits.softmax(-1), generator)
