"""GPU test idioms of engine projects, on simulated GPUs: each must do what it does on a real
GPU, never leave the work on the CPU while the test passes (a false pass)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.devices import simulated_gpus


@pytest.mark.parametrize("move", [
    pytest.param(lambda m: m.to("cuda:0"), id="positional"),
    pytest.param(lambda m: m.to(device="cuda:0"), id="keyword"),
    pytest.param(lambda m: m.to(device=torch.device("cuda", 0)), id="keyword-device"),
    pytest.param(lambda m: m.to(device="cuda:0", dtype=torch.float16), id="keyword-with-dtype"),
    pytest.param(lambda m: m.to(torch.float16).to(device=0), id="keyword-int"),
])
def test_a_module_moved_to_a_gpu_lands_there_however_the_call_is_written(move):
    with simulated_gpus(count=1):
        model = nn.Linear(4, 4)
        move(model)
        assert {p.device for p in model.parameters()} == {torch.device("cuda", 0)}
        # the bug a GPU test exists for: inputs left on the CPU fail as on a GPU
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            model(torch.ones(2, 4, dtype=model.weight.dtype))
