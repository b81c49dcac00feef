"""Token selection: small pure functions, all on the logits' device, none syncing, and the
`LogitsPipeline` that holds their per-request state (bias row, seen tokens, generator,
constraint) on that device, built once per request.

`logits` are [B, V] float32 (B: 1, or the beams). Randomness comes from an explicit
`torch.Generator` that lives on the logits' device, so a seed gives the same tokens run
after run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from reference_impl.constrained import JsonConstraint


def dense_bias(bias: dict[int, float], vocab: int, device: torch.device) -> Tensor | None:
    """The bias as a [V] row built on the logits' device, once (mistral.rs #398's fix)."""
    if not bias:
        return None
    row = torch.zeros(vocab)
    for token_id, value in bias.items():
        row[token_id] += value
    return row.to(device)  # one host-to-device copy, at prefill


def add_logit_bias(logits: Tensor, bias: Tensor, faults: frozenset[str]) -> Tensor:
    if "logit_bias_on_cpu" in faults:
        logits = logits.cpu()  # mistral.rs #398: the sampler took logits to the host, the bias stayed
    return logits + bias


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """transformers' rule: divide positive logits of seen tokens by penalty, multiply negatives."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(-1)
    drop_sorted = probs.cumsum(-1) - probs > p  # keep the token that crosses p
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


@dataclass
class LogitsPipeline:
    """Bias, repetition penalty and constraint mask, in that order, for rows of logits."""

    bias: Tensor | None = None  # [V]
    seen: Tensor | None = None  # [B, V] bool: tokens of the prompt and of the output so far
    penalty: float = 1.0
    constraint: JsonConstraint | None = None
    faults: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(
        cls,
        prompt: Tensor,  # [B, S] on the input device
        vocab: int,
        device: torch.device,
        bias: dict[int, float],
        penalty: float | None,
        constraint: JsonConstraint | None,
        faults: frozenset[str],
    ) -> LogitsPipeline:
        seen = None
        if penalty is not None:
            seen = torch.zeros(prompt.shape[0], vocab, dtype=torch.bool, device=device)
            seen.scatter_(1, prompt.to(device), True)
        return cls(dense_bias(bias, vocab, device), seen, penalty or 1.0, constraint, faults)

    def __call__(self, logits: Tensor) -> Tensor:
        if "stray_roundtrip_per_step" in self.faults:
            logits = logits.cpu().to(logits.device)  # vLLM #3384: a .cpu() in the sampler
        if self.bias is not None:
            logits = add_logit_bias(logits, self.bias, self.faults)
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, self.penalty)
        if self.constraint is not None:
            logits = self.constraint.apply(logits)
        return logits

    def observe(self, tokens: Tensor) -> None:
        """The tokens [B] just chosen, on the logits' device."""
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)

    def reorder(self, ancestors: Tensor) -> None:
        """Beam search: row i now continues row ancestors[i] (an index on the logits' device)."""
        if self.seen is not None:
            self.seen = self.seen.index_select(0, ancestors)
