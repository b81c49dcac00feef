"""User-style inference code carrying the four founding bugs (classes 1-4 of
docs/bug-classes.md), each with its upstream fix behind `fixed=True`, plus a decode loop with
a silent host round trip.

The tests run these on simulated GPUs and check the failure names the op, the devices and
the line marked `# BUG n` below, as a GPU user would see it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def apply_logit_bias(logits: Tensor, bias: Tensor, fixed: bool = False) -> Tensor:
    """mistral.rs #398: the sampler moved the logits to the CPU, the bias stayed on the GPU."""
    if not fixed:
        logits = logits.cpu()
    return logits + bias  # BUG 1


def attend_with_past(key_states: Tensor, past_len: int, fixed: bool = False) -> Tensor:
    """Petals #570: a dummy past cache converted with `.to(dtype)` only stays on the CPU."""
    batch, heads, _, dim = key_states.shape
    past = torch.zeros(batch, heads, past_len, dim)
    past = past.to(dtype=key_states.dtype, device=key_states.device) if fixed else past.to(key_states.dtype)
    return torch.cat([past, key_states], dim=2)  # BUG 2


def reorder_cache(layers: list[Tensor], num_beams: int, fixed: int = 0) -> list[Tensor]:
    """Outlines #651 / #660: beam ancestors built on the CPU (fixed=0), then on the first
    layer's device while layers sit on several GPUs (fixed=1), then per layer (fixed=2)."""
    ancestors = torch.arange(num_beams - 1, -1, -1)
    if fixed >= 1:
        ancestors = ancestors.to(layers[0].device)
    reordered = []
    for layer in layers:
        index = ancestors.to(layer.device) if fixed >= 2 else ancestors
        reordered.append(torch.index_select(layer, 0, index))  # BUG 3
    return reordered


def dequantize(qweight: Tensor, scale: Tensor, device: torch.device) -> Tensor:
    return (qweight.float() * scale).to(device)


def quantized_linear(x: Tensor, qweight: Tensor, scale: Tensor, fixed: bool = False) -> Tensor:
    """Candle #1823: weights dequantized onto the CPU unconditionally."""
    weight = dequantize(qweight, scale, qweight.device if fixed else torch.device("cpu"))
    return F.linear(x, weight)  # BUG 4


def greedy_decode(embed: Tensor, head: Tensor, first: int, steps: int, stray: bool, on_start=None) -> list[int]:
    """A toy decode loop; `stray` adds a silent host round trip of the hidden state per step.
    `on_start` is called once the loop's input is on the device (the harness's phase mark)."""
    token = torch.tensor([first], device=embed.device)
    if on_start is not None:
        on_start()
    tokens = []
    for _ in range(steps):
        hidden = embed[token]
        if stray:
            hidden = hidden.cpu().to(embed.device)  # STRAY
        token = (hidden @ head).argmax(-1)
        tokens.append(token.item())
    return tokens


def marked_line(marker: str) -> int:
    """Line number of the line ending with `# <marker>` in this file."""
    with open(__file__) as source:
        for number, line in enumerate(source, start=1):
            if line.rstrip().endswith(f"# {marker}"):
                return number
    raise LookupError(marker)
