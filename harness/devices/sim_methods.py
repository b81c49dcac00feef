"""Tensor methods rerouted on `SimTensor`, and the device moves they share with the mode layer.

Some Tensor methods never reach `__torch_dispatch__` on a CPU-only build: their C++ binding
takes a CUDA device guard first and fails with "PyTorch is not linked with support for cuda
devices" (`__getitem__`, `int()`, `nonzero`, ...), or parses a device it cannot resolve
(`.cuda()`, `.to(1)`). Those are Python methods on the subclass (`REROUTED`), so they work
in any thread, with or without the function mode; the probe test in
tests/test_sim_probe.py tells which ones a torch version needs.
Each one computes on the inner CPU tensor with torch-function handling off (our own mode
need not see our own inner calls) and records the transfer or sync a GPU would make.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harness.devices import errors, sim_streams
from harness.devices.sim_streams import ASYNC
from harness.devices.sim_tensor import (
    CPU,
    CUDA,
    SimDispatchMode,
    SimTensor,
    check_index,
    copy_between,
    functorch_inner,
    functorch_wrapped,
    sim_index,
    wrap,
)
from harness.devices.state import record

_no_tf = torch._C.DisableTorchFunction
_parse_to = torch._C._nn._parse_to
_RealDevice = torch.device  # torch.device is swapped for a look-alike inside the simulation
_dtype = torch.dtype
_functorch_level = torch._C._functorch.maybe_current_level  # None outside vmap and friends


def parse_device(device: Any) -> Any:
    """cuda index (an int) for a CUDA device (ints are cuda indices, as on a GPU build), -1 for
    the CPU, else the `torch.device` itself (meta, ...), which passes through untouched."""
    if isinstance(device, int) and not isinstance(device, bool):
        return check_index(device)
    if isinstance(device, str):
        device = _RealDevice(device)
    if device.type == "cuda":
        return check_index(device.index)
    if device.type == "cpu":
        return -1
    return device


def map_int_device(value: Any) -> Any:
    """`5` -> `cuda:5`: a CPU-only torch cannot resolve a bare int (no accelerator)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return CUDA[check_index(value)]
    return value


def move(t: Any, target: int, dtype=None, memory_format=None, copy: bool = False, op: str = "to",
         non_blocking: bool = False) -> Any:
    """`t` (CPU or simulated) on `target` (-1: CPU), converted to `dtype`, as `Tensor.to` does.
    A non-blocking copy follows PyTorch's rules for pinned and pageable memory (sim_streams)."""
    if functorch_wrapped(t):
        return _move_wrapped(t, target, dtype, memory_format, copy, op)
    source = t._dev if type(t) is SimTensor else -1
    inner = t._inner if source != -1 else t
    kwargs: dict[str, Any] = {"dtype": dtype or inner.dtype, "copy": copy or source != target}
    if memory_format is not None:
        kwargs["memory_format"] = memory_format
    if source != -1 and ASYNC.watch:
        sim_streams.device_read(t)
    with _no_tf():
        out = inner.to(**kwargs)
    if source == target:
        if out is inner:
            return t
    elif target == -1:
        sim_streams.copy_d2h(out, source, inner.nbytes, non_blocking, op, fresh=True)
    elif source == -1:
        sim_streams.copy_h2d(inner, inner.nbytes, target, non_blocking, op)
    else:
        record("d2d", inner.nbytes, op)
    if target == -1:
        return out
    out = wrap(out, target)
    if ASYNC.watch:
        sim_streams.written_by_copy(out, f"copied with {op}(non_blocking={non_blocking})", fresh=True)
    return out


def _move_wrapped(t: Any, target: int, dtype, memory_format, copy: bool, op: str) -> Any:
    """`move` for a tensor under torch.vmap (transformers 4.5x builds its attention masks
    there): aten's `_to_copy` goes through functorch's wrappers to the SimTensor inside,
    whose dispatch handler counts a device-to-host or device-to-device copy."""
    source = sim_index(t)
    same_dtype = dtype is None or dtype == t.dtype
    if source == target and same_dtype and not copy and memory_format in (None, torch.preserve_format):
        return t  # as Tensor.to: nothing to do, the tensor itself
    device = CPU if target == -1 else CUDA[check_index(target)]
    kwargs: dict[str, Any] = {"dtype": dtype or t.dtype, "device": device}
    if memory_format is not None:
        kwargs["memory_format"] = memory_format
    if source == -1 and target != -1:
        record("h2d", functorch_inner(t).nbytes, op)  # a host tensor: no SimTensor handler sees it
    with _no_tf(), SimDispatchMode():  # the mode turns a host source's cuda device into a SimTensor
        return torch.ops.aten._to_copy.default(t, **kwargs)


def tensor_to(t: Any, *args: Any, **kwargs: Any) -> Any:
    """`Tensor.to` for a CPU or simulated receiver: ints are cuda indices, and cross-device
    moves are counted."""
    kwargs = dict(kwargs)
    copy = kwargs.pop("copy", False)
    args = tuple(map_int_device(a) for a in args)
    if "device" in kwargs:
        kwargs["device"] = map_int_device(kwargs["device"])
    # positional `copy`: to(dtype|other, non_blocking, copy) or to(device, dtype, non_blocking, copy)
    copy_position = 2 if args and isinstance(args[0], (_dtype, Tensor)) else 3
    if len(args) > copy_position:
        copy, args = args[copy_position], args[:copy_position]
    with _no_tf():
        device, dtype, non_blocking, memory_format = _parse_to(*args, **kwargs)
    current = t._dev if type(t) is SimTensor else sim_index(t)  # the common case without a call
    target = current if device is None else parse_device(device)
    if type(target) is not int:  # meta and friends
        inner = t._inner if type(t) is SimTensor else t
        with _no_tf():
            return inner.to(device=target, dtype=dtype, copy=copy)
    if current == -1 and target == -1:
        with _no_tf():
            return Tensor.to(t, *args, copy=copy, **kwargs)  # type: ignore[call-overload]
    return move(t, target, dtype, memory_format, copy, "to", non_blocking)


# --- the rerouted methods -----------------------------------------------------------------


def _to(self, *args, **kwargs):
    if not kwargs and len(args) == 1 and type(args[0]) is _dtype:  # x.to(torch.float32): the common case
        with _no_tf():
            out = self._inner.to(args[0])
        return self if out is self._inner else wrap(out, self._dev)
    return tensor_to(self, *args, **kwargs)


def _cuda(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
    return move(self, parse_device("cuda" if device is None else map_int_device(device)), op="cuda",
                non_blocking=non_blocking)


def _cpu(self, memory_format=torch.preserve_format):
    return move(self, -1, op="cpu")


def index_arg(self_device: torch.device, self_index: int, index: Any, op: str) -> Any:
    """An indexing key with simulated tensors replaced by their inner ones. CPU index tensors
    and Python sequences are copied to the device on a GPU (H2D); boolean masks are a nonzero,
    a host sync; index tensors on another device fail as in libtorch."""
    if type(index) is tuple:
        return tuple(index_arg(self_device, self_index, i, op) for i in index)
    if type(index) is SimTensor:
        if index._dev != self_index:
            raise IndexError(errors.index_message(self_device))
        if index._inner.dtype in (torch.bool, torch.uint8):
            record("sync", 0, op)
        return index._inner
    if isinstance(index, Tensor):
        if self_index != -1:
            if index.device.type != "cpu":
                raise IndexError(errors.index_message(self_device))
            record("h2d", index.nbytes, op)
            if index.dtype in (torch.bool, torch.uint8):
                record("sync", 0, op)
        return index
    if type(index) is list and self_index != -1:
        record("h2d", 8 * len(index), op)
        return [index_arg(self_device, self_index, i, op) for i in index]
    return index


def _advanced(index: Any) -> bool:
    keys = index if type(index) is tuple else (index,)
    return any(isinstance(k, (Tensor, list)) for k in keys)


def functorch_getitem(self: Any, index: Any) -> Any | None:
    """`self[index]` under torch.vmap, where `self` or an index tensor is functorch's wrapper
    (transformers 4.5x: `padding_mask[batch_idx, kv_idx]` in masking_utils.py); None when
    neither is. Index tensors go to aten.index, as torch's TransformGetItemToIndex does (C++
    indexing would ask for a CUDA device guard), and dispatch checks their devices."""
    if _functorch_level() is None:  # not inside a transform: the common case, one C call
        return None
    keys = index if type(index) is tuple else (index,)
    if not (functorch_wrapped(self) or any(isinstance(k, Tensor) and functorch_wrapped(k) for k in keys)):
        return None
    with _no_tf(), SimDispatchMode():
        if all(isinstance(k, Tensor) for k in keys):
            return torch.ops.aten.index.Tensor(self, list(keys))
        if not _advanced(index):
            return _basic_index(self, keys)
        return Tensor.__getitem__(self, index)  # tensors mixed with slices: not followed yet (C++ wants a CUDA guard)


def functorch_setitem(self: Any, index: Any, value: Any) -> bool:
    """`self[index] = value` under torch.vmap, where `self` or an index tensor is functorch's
    wrapper (flex attention's `dense_mask[rows, cols] = ...` in create_block_mask); False
    when neither is. As `functorch_getitem`: index tensors go to aten.index_put_."""
    if _functorch_level() is None:
        return False
    keys = index if type(index) is tuple else (index,)
    if not (functorch_wrapped(self) or any(isinstance(k, Tensor) and functorch_wrapped(k) for k in keys)):
        return False
    with _no_tf(), SimDispatchMode():
        if all(isinstance(k, Tensor) for k in keys):
            if not isinstance(value, Tensor):
                value = torch.full((), value, dtype=self.dtype, device=self.device)
            torch.ops.aten.index_put_.default(self, list(keys), value)
        elif not _advanced(index):
            view = _basic_index(self, keys)
            view.copy_(value) if isinstance(value, Tensor) else view.fill_(value)
        else:
            Tensor.__setitem__(self, index, value)  # tensors mixed with slices: not followed yet
    return True


def _basic_index(t: Tensor, keys: tuple) -> Tensor:
    """t[keys] for ints, slices, None and Ellipsis, as the views torch's indexing makes."""
    remaining = sum(1 for k in keys if k is not None and k is not Ellipsis)  # keys that take a dim
    dim = 0
    for k in keys:
        if k is None:
            t = torch.ops.aten.unsqueeze.default(t, dim)
            dim += 1
        elif k is Ellipsis:
            dim = t.dim() - remaining  # the dims that no key names
        elif isinstance(k, slice):
            t = torch.ops.aten.slice.Tensor(t, dim, k.start, k.stop, 1 if k.step is None else k.step)
            dim, remaining = dim + 1, remaining - 1
        else:
            t = torch.ops.aten.select.int(t, dim, int(k))
            remaining -= 1
    return t


def _getitem(self, index):
    vmapped = functorch_getitem(self, index)
    if vmapped is not None:
        return vmapped
    if type(index) is tuple:
        key = index_arg(CUDA[self._dev], self._dev, index, "__getitem__") if _advanced(index) else index
    elif isinstance(index, (int, slice)) or index is None or index is Ellipsis:
        key = index  # basic indexing: a view, nothing moves
    else:
        key = index_arg(CUDA[self._dev], self._dev, index, "__getitem__")
    with _no_tf():
        return wrap(self._inner[key], self._dev)


def setitem(self: Any, index: Any, value: Any) -> None:
    """`self[index] = value` for a CPU or simulated `self` (basic indexing copies across
    devices; advanced indexing is an index_put_, which wants the value on self's device)."""
    if functorch_setitem(self, index, value):
        return
    simulated = type(self) is SimTensor
    self_index = self._dev if simulated else -1
    self_device = CUDA[self_index] if simulated else self.device
    key = index_arg(self_device, self_index, index, "__setitem__")
    if isinstance(value, Tensor):
        value_device = CUDA[value._dev] if type(value) is SimTensor else value.device
        crossing = value_device != self_device and not (value.dim() == 0 and value_device.type == "cpu")
        if crossing and _advanced(index):
            raise IndexError(errors.index_put_values_message(self_device, value_device))
        if crossing:
            record("d2d" if simulated and value_device.type == "cuda" else "h2d" if simulated else "d2h",
                   value.nbytes, "__setitem__")
        value = value._inner if type(value) is SimTensor else value
    inner = self._inner if simulated else self
    with _no_tf():
        inner[key] = value


def _sync_read(name: str, read):
    def method(self, *args, **kwargs):
        if ASYNC.watch:
            sim_streams.device_read(self)
        record("sync", 0, name)
        with _no_tf():
            return read(self._inner, *args, **kwargs)

    method.__name__ = name
    return method


def _format(self, format_spec):
    if self.dim() == 0:
        record("sync", 0, "__format__")
        with _no_tf():
            return self._inner.item().__format__(format_spec)
    return object.__format__(self, format_spec)


def _numpy(self, *, force=False):
    if not force:
        raise TypeError(errors.numpy_message(CUDA[self._dev]))
    return move(self, -1, op="numpy").numpy()


def _array(self, dtype=None):
    raise TypeError(errors.numpy_message(CUDA[self._dev]))


def _contiguous(self, memory_format=torch.contiguous_format):
    with _no_tf():
        out = self._inner.contiguous(memory_format=memory_format)
    return self if out is self._inner else wrap(out, self._dev)


def _nonzero(self, *, out=None, as_tuple=False):
    record("sync", 0, "nonzero")
    with _no_tf():
        result = self._inner.nonzero(as_tuple=as_tuple)
    if as_tuple:
        return tuple(wrap(r, self._dev) for r in result)
    result = wrap(result, self._dev)
    return result if out is None else copy_between(out, result)


def host_elements(data: Any, op: str) -> Any:
    """`data` for torch.tensor & co. with each simulated tensor inside a list or tuple replaced
    by its inner CPU tensor, counting the host read a GPU makes for it (one sync per element,
    as `item()`); `data` itself when nothing inside is simulated.

    Needed because SimTensor is a Python sequence and a plain Tensor is not: its rerouted
    Python `__getitem__` fills the type's `sq_item` slot, so `PySequence_Check` is true for it.
    torch.tensor's shape inference (`compute_sizes` in torch/csrc/utils/tensor_new.cpp) walks
    down while `PySequence_Check` holds and calls `len()` on the element: `len() of a 0-d
    tensor` for a 0-d SimTensor, where a real CUDA tensor is taken as a scalar and read with
    `item()` (`recursive_store` -> `store_scalar`). transformers 4.46-4.48 beam search does
    exactly that: `torch.tensor(best_idx)` over a tuple of 0-d index tensors
    (generation/beam_search.py:404)."""
    if type(data) is SimTensor:
        record("sync", 0, op)
        return data._inner
    if type(data) is list or type(data) is tuple:
        items = [host_elements(item, op) for item in data]
        if any(new is not old for new, old in zip(items, data, strict=True)):
            return items if type(data) is list else tuple(items)
    return data


def new_from_data(self: Any, data: Any, op: str, **kwargs: Any) -> Any:
    """`torch.tensor(data, device=...)` / `x.new_tensor(data)` with a simulated target: host
    data is an H2D copy on a GPU, data on another GPU a D2D one."""
    device = kwargs.pop("device", None)
    if device is not None:
        target = parse_device(map_int_device(device))
    elif type(self) is SimTensor or type(data) is SimTensor:
        target = self._dev if type(self) is SimTensor else data._dev
    else:
        target = -1
    source = data._inner if type(data) is SimTensor else host_elements(data, op)
    with _no_tf():
        out = torch.tensor(source, **kwargs)
        if type(target) is not int:
            return out.to(target)
    if type(data) is SimTensor:
        if data._dev != target:
            record("d2h" if target == -1 else "d2d", out.nbytes, op)
    elif target != -1:
        record("h2d", out.nbytes, op)
    return out if target == -1 else wrap(out, target)


def _new_tensor(self, data, dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False):
    kwargs = {"dtype": dtype or self.dtype}
    if device is not None:
        kwargs["device"] = device
    return new_from_data(self, data, "new_tensor", **kwargs)


def _new(self, *args, **kwargs):
    """The legacy constructor: `x.new(2, 3)`, `x.new([1, 2])`, `x.new(tensor)`, `x.new()`."""
    device = kwargs.pop("device", None)
    target = self._dev if device is None else parse_device(map_int_device(device))
    args = tuple(a._inner if type(a) is SimTensor else a for a in args)
    with _no_tf():
        out = self._inner.new(*args, **kwargs)
    if len(args) == 1 and isinstance(args[0], (list, tuple)) and not isinstance(args[0], torch.Size):
        record("h2d", out.nbytes, "new")
    return out if target == -1 else wrap(out, target)


def _copy_(self, src, non_blocking=False):
    return copy_between(self, src, non_blocking)


def _data_ptr(self):
    return self._inner.data_ptr()


def _untyped_storage(self):
    return self._inner.untyped_storage()


def _pin_memory(self, device=None):
    raise RuntimeError(f"cannot pin '{self.type()}' only dense CPU tensors can be pinned")


def _record_stream(self, stream):
    sim_streams.record_stream(self, stream)  # its memory is not reused before `stream`'s work on it is waited for


BEFORE_DISPATCH = "fails before dispatch"
# name -> (method, why). BEFORE_DISPATCH: the C++ binding fails on a bare wrapper (the probe
# test checks that these, and only these, still do); the others name a sync or a transfer,
# parse devices, give PyTorch's message for a CUDA tensor, or reach past the wrapper.
REROUTED: dict[str, tuple[Any, str]] = {
    "__getitem__": (_getitem, BEFORE_DISPATCH),
    "__setitem__": (setitem, BEFORE_DISPATCH),
    "tolist": (_sync_read("tolist", Tensor.tolist), BEFORE_DISPATCH),
    "__int__": (_sync_read("__int__", Tensor.__int__), BEFORE_DISPATCH),
    "__float__": (_sync_read("__float__", Tensor.__float__), BEFORE_DISPATCH),
    "__index__": (_sync_read("__index__", Tensor.__index__), BEFORE_DISPATCH),
    "__complex__": (_sync_read("__complex__", Tensor.__complex__), BEFORE_DISPATCH),
    "nonzero": (_nonzero, BEFORE_DISPATCH),
    "new_tensor": (_new_tensor, BEFORE_DISPATCH),
    "new": (_new, BEFORE_DISPATCH),
    "copy_": (_copy_, BEFORE_DISPATCH),
    "contiguous": (_contiguous, BEFORE_DISPATCH),
    "cuda": (_cuda, BEFORE_DISPATCH),
    "numpy": (_numpy, BEFORE_DISPATCH),
    "pin_memory": (_pin_memory, BEFORE_DISPATCH),
    "item": (_sync_read("item", Tensor.item), "names the sync"),
    "__bool__": (_sync_read("__bool__", Tensor.__bool__), "names the sync"),
    "__format__": (_format, "reads the value, as for a CPU tensor"),
    "to": (_to, "ints are cuda indices; counts the transfer"),
    "cpu": (_cpu, "counts the transfer"),
    "__array__": (_array, "PyTorch's message for a CUDA tensor"),
    "data_ptr": (_data_ptr, "a wrapper has no storage (accelerate finds tied weights by pointer)"),
    "untyped_storage": (_untyped_storage, "a wrapper has no storage"),
    "record_stream": (_record_stream, "a simulated stream is no torch.Stream to the argument parser"),
}

for _name, (_method, _why) in REROUTED.items():
    setattr(SimTensor, _name, _method)
