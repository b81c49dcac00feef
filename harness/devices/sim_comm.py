"""torch._C's multi-GPU copies (`torch.nn.parallel.comm`: scatter, gather, broadcast), which
`nn.DataParallel` uses and a CPU-only torch lacks, for simulated GPUs.

Semantics of libtorch's torch/csrc/cuda/comm.cpp: a chunk or tensor already on its target
device is returned as is (a view, no copy); every other one is copied, and each copy is
counted in the ledger (op `scatter`, `broadcast`, `broadcast_coalesced` or `gather`) like
any `.to()`. Device indices are ints; -1 as gather's destination is the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch._utils import (
    _flatten_dense_tensors,
    _reorder_tensors_as,
    _take_tensors,
    _unflatten_dense_tensors,
)

from harness.devices.sim_methods import move
from harness.devices.sim_tensor import check_index, copy_between, sim_index
from harness.devices.state import STATE


def _device_name(index: int) -> str:
    return "cpu" if index == -1 else f"cuda:{index}"


def _check_same_sizes(tensors: Sequence[torch.Tensor], dim: int, what: str) -> list[int]:
    """Each tensor's size along `dim`; the other sizes must match the first tensor's."""
    first = list(tensors[0].shape)
    for tensor in tensors:
        expected = [*first[:dim], tensor.shape[dim], *first[dim + 1:]]
        if tensor.dim() != len(first) or list(tensor.shape) != expected:
            raise RuntimeError(f"{what} got an input of invalid size: got {list(tensor.shape)}, but expected {expected}")
    return [t.shape[dim] for t in tensors]


def broadcast(tensor: torch.Tensor, devices: Sequence[int]) -> list[torch.Tensor]:
    """A copy of `tensor` on each device; the tensor itself on its own device."""
    source = sim_index(tensor)
    return [tensor if d == source else move(tensor, check_index(d), op="broadcast") for d in devices]


def broadcast_out(tensor: torch.Tensor, out: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    for o in out:
        if sim_index(o) == -1:
            raise RuntimeError(f"Expected all output tensors to be CUDA tensors, but output tensor was on {o.device}")
        if o.shape != tensor.shape:
            raise RuntimeError(f"Expected all output tensors to have same shape as the source {list(tensor.shape)}, "
                               f"but got {list(o.shape)}")
        copy_between(o, tensor, op="broadcast")
    return list(out)


def broadcast_coalesced(tensors: Sequence[torch.Tensor], devices: Sequence[int], buffer_size: int) -> list[list]:
    """DataParallel's replicate: per device, copies of `tensors`; small ones travel flattened
    into one buffer of up to `buffer_size` bytes per dtype (one copy per buffer and device)."""
    devices = list(devices)
    if any(sim_index(t) != devices[0] for t in tensors):
        raise RuntimeError(f"All tensors must be on devices[0]: {devices[0]}")
    if any(t.is_sparse for t in tensors):
        raise NotImplementedError("simulated GPUs: broadcast_coalesced of sparse tensors is not simulated")
    outputs: list[list] = [list(tensors)] + [[] for _ in devices[1:]]
    for chunk in _take_tensors(tensors, buffer_size):
        flat = _flatten_dense_tensors(chunk)
        for out, device in zip(outputs[1:], devices[1:], strict=True):
            copied = move(flat, check_index(device), op="broadcast_coalesced")
            out.extend(t.detach() for t in _unflatten_dense_tensors(copied, chunk))
    return [outputs[0]] + [list(_reorder_tensors_as(o, tensors)) for o in outputs[1:]]


def scatter(tensor: torch.Tensor, devices: Sequence[int], chunk_sizes: Sequence[int] | None = None, dim: int = 0,
            streams: Any = None) -> list[torch.Tensor]:
    """`tensor` cut along `dim` (into `chunk_sizes`, else equal chunks), chunk i on devices[i]."""
    if not devices:
        raise RuntimeError("Expected at least one device to scatter to")
    if chunk_sizes is not None:
        chunk_sizes = list(chunk_sizes)
        if len(chunk_sizes) != len(devices):
            raise RuntimeError(f"Expected devices and chunk_sizes to be of same length, but got len(devices) = "
                               f"{len(devices)} and len(chunk_sizes) = {len(chunk_sizes)}")
        if sum(chunk_sizes) != tensor.size(dim):
            raise RuntimeError(f"given chunk sizes don't sum up to the tensor's size (sum(chunk_sizes) == "
                               f"{sum(chunk_sizes)}, but expected {tensor.size(dim)})")
        if any(size <= 0 for size in chunk_sizes):
            raise RuntimeError("Chunk size must be positive")
        chunks = tensor.split(chunk_sizes, dim)
    else:
        chunks = tensor.chunk(len(devices), dim)
    return [move(c, check_index(d), op="scatter") for c, d in zip(chunks, devices, strict=False)]


def scatter_out(tensor: torch.Tensor, out: Sequence[torch.Tensor], dim: int = 0, streams: Any = None) -> list:
    sizes = _check_same_sizes(out, dim, "Scatter")
    if sum(sizes) != tensor.size(dim):
        raise RuntimeError(f"Scatter: the output sizes along dim {dim} sum to {sum(sizes)}, "
                           f"but the tensor's size is {tensor.size(dim)}")
    for o, chunk in zip(out, tensor.split(sizes, dim), strict=True):
        copy_between(o, chunk, op="scatter")
    return list(out)


def _gather_into(tensors: Sequence[torch.Tensor], result: torch.Tensor, dim: int) -> torch.Tensor:
    for piece, tensor in zip(result.split([t.size(dim) for t in tensors], dim), tensors, strict=True):
        copy_between(piece, tensor, op="gather")
    return result


def _check_gather_inputs(tensors: Sequence[torch.Tensor], dim: int) -> list[int]:
    if not tensors:
        raise RuntimeError("Expected at least one tensor to gather from")
    for i, tensor in enumerate(tensors):
        if sim_index(tensor) == -1:
            raise RuntimeError(f"Expected all input tensors to be CUDA tensors, but input tensor at index {i} "
                               f"was on device {tensor.device}")
    return _check_same_sizes(tensors, dim, "Gather")


def gather(tensors: Sequence[torch.Tensor], dim: int = 0, destination: int | None = None) -> torch.Tensor:
    """`tensors` concatenated along `dim` on `destination` (None: the current device, -1: the CPU)."""
    dim = dim % tensors[0].dim() if tensors and tensors[0].dim() else dim
    sizes = _check_gather_inputs(tensors, dim)
    target = STATE.current if destination is None else destination
    shape = list(tensors[0].shape)
    shape[dim] = sum(sizes)
    device = _device_name(target if target == -1 else check_index(target))
    result = torch.empty(shape, dtype=tensors[0].dtype, device=device)
    return _gather_into(tensors, result, dim)


def gather_out(tensors: Sequence[torch.Tensor], out: torch.Tensor, dim: int = 0) -> torch.Tensor:
    dim = dim % tensors[0].dim() if tensors and tensors[0].dim() else dim
    sizes = _check_gather_inputs(tensors, dim)
    expected = list(tensors[0].shape)
    expected[dim] = sum(sizes)
    if list(out.shape) != expected:
        raise RuntimeError(f"Expected out tensor to have shape {expected}, but got {list(out.shape)}")
    return _gather_into(tensors, out, dim)


# torch._C attribute -> simulated version (set while simulated, see cuda_patch.patch_torch)
COLLECTIVES = {
    "_broadcast": broadcast,
    "_broadcast_out": broadcast_out,
    "_broadcast_coalesced": broadcast_coalesced,
    "_scatter": scatter,
    "_scatter_out": scatter_out,
    "_gather": gather,
    "_gather_out": gather_out,
}
