"""A tiny greedy engine over a transformers llama, with a logit bias: the code under test."""

import os

import torch

BUG = os.environ.get("SAMEDEVICE_EXAMPLE_BUG") == "1"
BANNED = 7  # a token the engine never emits (a logit bias of -inf)


@torch.no_grad()
def greedy(model, ids: torch.Tensor, steps: int) -> list[int]:
    """`steps` greedy tokens after `ids` (on the model's first device), token BANNED banned."""
    out = []
    for _ in range(steps):
        logits = model(input_ids=ids).logits[:, -1]
        # the bug (mistral.rs #398's shape): the bias built on the host, not beside the logits
        bias = torch.zeros(logits.shape[-1], device="cpu" if BUG else logits.device)
        bias[BANNED] = float("-inf")
        token = (logits + bias).argmax(-1, keepdim=True)
        out.append(int(token.item()))
        ids = torch.cat([ids, token.to(ids.device)], dim=1)
    return out
