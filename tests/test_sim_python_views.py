"""What Python code sees of a simulated tensor is what it sees of a CUDA tensor: torch.tensor
over lists holding them, and `type(t) == torch.Tensor`.

A plain Tensor is not a Python sequence (`PySequence_Check` is false: its `__getitem__` is a
mapping slot), so torch.tensor takes each tensor element as a scalar and reads it with
`item()`. SimTensor reroutes `__getitem__` in Python, which makes it a sequence, and
torch.tensor's shape inference then called `len()` on a 0-d element: "len() of a 0-d
tensor", on simulated GPUs only. transformers 4.44-4.48 beam search hits it at
generation/beam_search.py:404, `indices[i, : len(best_idx)] = torch.tensor(best_idx)`, with
`best_idx` a tuple of 0-d index tensors on the GPU.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from harness.devices import SimTensor, simulated_gpus
from harness.devices.ledger import Ledger

_is_sequence = ctypes.pythonapi.PySequence_Check
_is_sequence.argtypes, _is_sequence.restype = [ctypes.py_object], ctypes.c_int


def test_why_a_simulated_tensor_needs_its_elements_read_for_torch_tensor():
    """The mechanism behind the fix; if this changes, `host_elements` may be unneeded."""
    assert _is_sequence(torch.tensor(3)) == 0, "a plain (CPU or CUDA) tensor is no Python sequence"
    assert "__getitem__" in SimTensor.__dict__
    with simulated_gpus():
        assert _is_sequence(torch.tensor(3, device="cuda:0")) == 1


def test_beam_search_finalize_pattern_builds_the_index_row_as_on_a_gpu():
    """beam_search.py:404 of transformers 4.44-4.48, on a simulated GPU: the index tensor is
    built on the host from 0-d device tensors (one host read each), then copied into a row."""
    ledger = Ledger()
    with simulated_gpus(ledger=ledger):
        input_ids = torch.zeros(1, 5, dtype=torch.long, device="cuda:0")
        steps = torch.tensor([2, 0, 1], device="cuda:0")
        best_idx = tuple(steps[i] for i in range(3))  # 0-d tensors on cuda:0, as beams record them
        indices = input_ids.new(1, 5)
        indices.fill_(-1)
        row = torch.tensor(best_idx)
        indices[0, : len(best_idx)] = row
        assert row.device == torch.device("cpu"), "torch.tensor without device= builds on the host"
        result = indices.cpu()
    assert row.dtype == torch.long
    assert result.tolist() == [[2, 0, 1, -1, -1]]
    syncs = sum(n for (_, kind, op, _), n in ledger.sites.items() if kind == "sync" and op == "tensor")
    assert syncs == 3, "one host read per element, as item() on a GPU"


def test_elements_keep_their_dtype_and_nesting_and_go_where_device_says():
    with simulated_gpus():
        half = torch.tensor(1.5, dtype=torch.float16, device="cuda:0")
        assert torch.tensor([half, half]).dtype == torch.float16, "dtype inferred from the tensors"
        nested = [[torch.tensor(1, device="cuda:0"), 2], (torch.tensor(3, device="cuda:1"), 4)]
        on_gpu = torch.tensor(nested, device="cuda:1")
        assert type(on_gpu) is SimTensor and on_gpu.device == torch.device("cuda", 1)
        assert on_gpu.tolist() == [[1, 2], [3, 4]]
        assert torch.as_tensor([torch.tensor(7, device="cuda:0")]).tolist() == [7]
        assert torch.asarray([torch.tensor(8, device="cuda:0")]).tolist() == [8]
        base = torch.zeros(1, device="cuda:0")
        assert base.new_tensor([torch.tensor(5.0, device="cuda:0")]).tolist() == [5.0]


def test_a_multi_element_tensor_inside_a_list_fails_as_on_a_gpu():
    with pytest.raises(TypeError) as on_cpu:
        torch.tensor([torch.tensor([1, 2])])
    with simulated_gpus(), pytest.raises(TypeError) as simulated:
        torch.tensor([torch.tensor([1, 2], device="cuda:0")])
    assert str(simulated.value) == str(on_cpu.value)


def test_type_compares_equal_to_tensor_as_for_a_cuda_tensor():
    """Outlines 0.1.x-0.2.x return processed logits only when `type(logits) == torch.Tensor`
    (outlines/processors/base_logits_processor.py `_from_torch`), else raise TypeError; on a
    real GPU that holds. Identity and hashing stay the subclass's own."""
    with simulated_gpus():
        x = torch.ones(2, device="cuda:0")
    assert isinstance(x, torch.Tensor)
    assert type(x) == torch.Tensor and torch.Tensor == type(x)  # noqa: E721 (== is the point)
    assert (type(x) != torch.Tensor) is False  # noqa: E721
    assert type(x) is SimTensor and type(x) is not torch.Tensor
    assert {torch.Tensor: "plain"}.get(type(x)) is None, "type-keyed tables still tell them apart"
    assert SimTensor != int  # noqa: E721
