"""A user's own test, the kind engine projects keep for CUDA only: a model on cuda:0 and a
generate step. With samedevice installed it runs in CPU-only CI too, on simulated GPUs,
and its device and transfer checks are the harness's (README "Inside your own tests")."""

import pytest
import torch
from torch import nn

from harness.frontends.testing import assert_transfers

VOCAB = 64


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 32)
        self.head = nn.Linear(32, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))  # [B, S, V]


def generate(model: TinyLM, prompt: torch.Tensor, steps: int, banned: int) -> list[int]:
    """Greedy decoding with one token banned by a logit bias."""
    device = prompt.device
    bias = torch.zeros(VOCAB, device=device)  # built where the logits are (mistral.rs #398's fix)
    bias[banned] = -1e9
    ids, out = prompt, []
    for _ in range(steps):
        logits = model(ids)[:, -1] + bias
        token = logits.argmax(-1, keepdim=True)  # stays on the device
        out.append(int(token.cpu()))  # the one read-back per step
        ids = token
    return out


@pytest.mark.samedevice(devices=["cpu", "cuda:0"])
def test_greedy_generate_bans_the_token_and_reads_back_one_per_step(samedevice_target, transfer_ledger):
    model = TinyLM().eval().to(samedevice_target.device)
    prompt = torch.tensor([[1, 2, 3]], device=samedevice_target.device)
    with transfer_ledger.track(model):
        tokens = generate(model, prompt, steps=8, banned=7)
    assert 7 not in tokens and len(tokens) == 8
    if samedevice_target.device != "cpu":
        assert_transfers(transfer_ledger, decode={"h2d": 0, "d2h": 1, "syncs": 0})
