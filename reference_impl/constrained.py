"""JSON-schema constrained decoding with llguidance: one matcher per row (beam), the token
mask computed on the host by llguidance and applied on the logits' device.

Transfer profile: llguidance writes a packed bitmask ([B, V/32] int32, one bit per token)
in host memory, so each step makes exactly one host-to-device copy, of that bitmask (64
bytes per row for a 512-token vocabulary); it is unpacked and applied on the logits' device.
A grammar engine that runs on the host cannot avoid that copy; scenarios budget it
(`h2d: 1` per decode token). transformers PR #38558 kept such a mask on another device than
the scores: the `mask_on_cpu` switch.

Compact JSON (`whitespace_flexible: false`): no whitespace between tokens, so a small
model's output is short and the schema decides its shape.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import Tensor


@lru_cache(maxsize=8)
def _tokenizer(tokenizer_json: str, vocab: int, eos_id: int):
    from llguidance import LLTokenizer

    return LLTokenizer(tokenizer_json, n_vocab=vocab, eos_token=eos_id)


class JsonConstraint:
    def __init__(
        self,
        schema: dict[str, Any],
        tokenizer_json: str,
        rows: int,
        vocab: int,
        eos_id: int,
        device: torch.device,
        faults: frozenset[str] = frozenset(),
    ) -> None:
        from llguidance import LLMatcher

        grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        first = LLMatcher(_tokenizer(tokenizer_json, vocab, eos_id), grammar, log_level=0)
        if first.is_error():
            raise ValueError(f"llguidance rejected the JSON schema: {first.get_error()}")
        self.matchers = [first] + [first.deep_copy() for _ in range(rows - 1)]
        self.vocab = vocab
        # Pinned host memory for a GPU: a non_blocking upload from pageable memory makes the
        # host wait (a hidden sync per step). The next step overwrites the bitmask only after
        # the step's blocking token read-back on the same stream, which orders the upload first.
        self.bitmask = torch.full((rows, (vocab + 31) // 32), -1, dtype=torch.int32,
                                  pin_memory=torch.device(device).type == "cuda")
        self.on_host = "mask_on_cpu" in faults  # transformers PR #38558
        self.shifts = torch.arange(32, dtype=torch.int32, device="cpu" if self.on_host else device)

    def apply(self, logits: Tensor) -> Tensor:
        """Logits with every token the grammar forbids at -inf, row by row."""
        # What llguidance.torch.fill_next_token_bitmask does, without importing that module
        # (it applies torch.compile at import time: dynamo, seconds, warnings).
        row_bytes = self.bitmask.shape[1] * self.bitmask.element_size()
        for row, matcher in enumerate(self.matchers):
            matcher.unsafe_compute_mask_ptr(self.bitmask[row].data_ptr(), row_bytes)
        packed = self.bitmask if self.on_host else self.bitmask.to(logits.device, non_blocking=True)  # the H2D
        bits = (packed[:, :, None] >> self.shifts) & 1  # [B, V/32, 32]
        allowed = bits.view(bits.shape[0], -1)[:, : self.vocab].bool()  # [B, V]
        return logits.masked_fill(~allowed, float("-inf"))

    def advance(self, tokens: list[int], rows: list[int] | None = None) -> None:
        """Feed each row's chosen token to its matcher (`rows`: only these rows, in order)."""
        for row, token in zip(range(len(tokens)) if rows is None else rows, tokens, strict=True):
            matcher = self.matchers[row]
            if not matcher.consume_token(token):
                raise RuntimeError(f"row {row}: the grammar refused token {token}: {matcher.get_error()}")

    def reorder(self, ancestors: list[int]) -> None:
        """Beam search: row i now continues row ancestors[i]."""
        self.matchers = [self.matchers[a].deep_copy() for a in ancestors]

    def stopped(self, row: int = 0) -> bool:
        return self.matchers[row].is_stopped()
