"""The torch-function layer of the simulation: devices in arguments, and the fast path.

`SimFunctionMode` sees every torch function call (before argument parsing), so it handles:
- factories and `*_like`/`new_*` calls with `device=` (a CPU-only torch fails in parsing:
  "Torch not compiled with CUDA enabled"): run on the CPU, wrap the result; meta passes;
- `.to()` / `.cuda()` / indexing with a CPU-tensor receiver, ints as cuda indices;
- generators: a CPU generator given to a simulated op fails as on a GPU, and the reverse;
- host syncs that the fast path would hide from dispatch (nonzero, unique, ...), in-place
  ops that change sizes (`t_`, `unsqueeze_`), libtorch's own check in
  scaled_dot_product_attention;
- the fast path: a call whose tensors are all simulated on one device runs straight on the
  inner CPU tensors, so its aten ops never reach Python again. That halves the cost of the
  simulation. Anything else (a CPU tensor, two devices) goes down to `__torch_dispatch__`,
  which knows libtorch's rules per aten op.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._device as _device_module
from torch import Tensor
from torch.overrides import TorchFunctionMode

from harness.devices import errors, sim_streams
from harness.devices.sim_methods import (
    functorch_getitem,
    functorch_setitem,
    host_elements,
    map_int_device,
    new_from_data,
    parse_device,
    setitem,
    tensor_to,
)
from harness.devices.sim_streams import ASYNC
from harness.devices.sim_tensor import (
    CUDA,
    SimDispatchMode,
    SimTensor,
    become,
    copy_between,
    device_of,
    sim_index,
    wrap,
    wrap_result,
)
from harness.devices.state import NO_STAND_IN, record, stand_in

_NO_KWARGS: Any = MappingProxyType({})  # read-only: handlers copy before changing kwargs
_make_wrapper = Tensor._make_wrapper_subclass
_strided = torch.strided
_functorch_level = torch._C._functorch.maybe_current_level  # None outside vmap and friends


class SimFunctionMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        handler = _HANDLERS.get(func)
        if handler is None:
            handler = _HANDLERS[func] = _handler_for(func)
        if ASYNC.watch:  # a pending copy, a side stream, ...: the race check looks at the op
            return _watched(handler, func, args, kwargs or _NO_KWARGS)
        return handler(func, args, kwargs or _NO_KWARGS)


def _watched(handler, func, args, kwargs):
    stream = sim_streams.before_op(func, args, kwargs)
    out = handler(func, args, kwargs)
    if stream is not None:
        sim_streams.after_op(stream, out, args)
    return out


def _passthrough(func, args, kwargs):
    return func(*args, **kwargs) if kwargs else func(*args)


def _wrap_out(out: Any, index: int, first_inner: Any, first: Any) -> Any:
    """Results on the simulated device; an in-place op's result is its receiver itself."""
    return first if out is first_inner and first_inner is not None else wrap_result(out, index)


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _slow(func, args, kwargs):
    """Down to `__torch_dispatch__`, which knows libtorch's rule for each aten op."""
    with SimDispatchMode():
        return func(*args, **kwargs) if kwargs else func(*args)


def _fast(func, args, kwargs):
    """Run on the inner tensors when every tensor argument is simulated on one device;
    otherwise let dispatch decide. The hot path of the simulation: the loop is written out
    here (no helper calls, no pytree) and a single-tensor result is wrapped inline."""
    if kwargs:
        return _with_kwargs(func, args, kwargs)
    index = -1
    plain = False
    inner = []
    for a in args:
        kind = type(a)
        if kind is SimTensor:
            d = a._dev
            if d != index:
                if index != -1:
                    return _slow(func, args, kwargs)  # two devices: dispatch raises libtorch's error
                index = d
            inner.append(a._inner)
        elif (kind is list or kind is tuple) and a and isinstance(a[0], Tensor):
            seq, index, odd = _unwrap_sequence(a, index)
            if odd:
                return _slow(func, args, kwargs)
            plain = plain or odd is None
            inner.append(kind(seq))
        else:
            if isinstance(a, Tensor):
                plain = True
            inner.append(a)
    if index == -1:
        if plain and _functorch_level() is not None and _vmapped_simulated(args):
            return _slow(func, args, kwargs)  # see _vmapped_simulated
        return func(*args)
    if plain:
        return _slow(func, args, kwargs)  # a CPU tensor among simulated ones: dispatch decides
    try:
        out = func(*inner)
    except (RuntimeError, NotImplementedError) as exc:
        out = stand_in(func, inner, None, exc)  # a CPU stand-in for a GPU kernel, else the gap is noted
        if out is NO_STAND_IN:
            raise
    if type(out) is Tensor:
        if out is inner[0]:
            return args[0]  # in-place, or a no-op like contiguous(): the receiver itself
        s = _make_wrapper(SimTensor, out.shape, out.stride(), out.storage_offset(), None, out.dtype, _strided,
                          CUDA[index])
        s._inner = out
        s._dev = index
        return s
    return _wrap_out(out, index, inner[0], args[0])


def _vmapped_simulated(args) -> bool:
    """A simulated tensor inside functorch's wrappers (torch.vmap): batching rules and
    composite kernels below create tensors on its CUDA device in C++ (`where(mask, x, 7)`
    makes 7 a tensor on x's device), which only the dispatch mode turns into simulated ones."""
    for a in args:
        if isinstance(a, Tensor) and sim_index(a) != -1:
            return True
        if (type(a) is list or type(a) is tuple) and any(isinstance(t, Tensor) and sim_index(t) != -1 for t in a):
            return True
    return False


def _unwrap_sequence(seq, index: int) -> tuple[list, int, bool | None]:
    """Inner tensors of a tensor list, the device index, and True when two simulated devices
    meet (None when a plain tensor is among them)."""
    out: list[Any] = []
    odd: bool | None = False
    for t in seq:
        if type(t) is SimTensor:
            if t._dev != index:
                if index != -1:
                    return out, index, True
                index = t._dev
            out.append(t._inner)
        else:
            if isinstance(t, Tensor):
                odd = None
            out.append(t)
    return out, index, odd


def _with_kwargs(func, args, kwargs):
    """`_fast` for calls with keyword arguments: `device=` (factories, *_like, new_*),
    `generator=`, `out=` and simulated tensors passed by keyword."""
    # The positional loop below repeats `_fast`'s on purpose: this is the per-op hot path,
    # and a shared helper would cost a Python call per op.
    index = -1
    plain = False
    inner = []
    for a in args:
        kind = type(a)
        if kind is SimTensor:
            if a._dev != index:
                if index != -1:
                    return _slow(func, args, kwargs)
                index = a._dev
            inner.append(a._inner)
        elif (kind is list or kind is tuple) and a and isinstance(a[0], Tensor):
            seq, index, odd = _unwrap_sequence(a, index)
            if odd:
                return _slow(func, args, kwargs)
            plain = plain or odd is None
            inner.append(kind(seq))
        else:
            plain = plain or isinstance(a, Tensor)
            inner.append(a)
    inner_kwargs = {}
    target: Any = None
    generator = None
    pinned = False
    for key, value in kwargs.items():
        if type(value) is SimTensor:
            if value._dev != index:
                if index != -1:
                    return _slow(func, args, kwargs)
                index = value._dev
            value = value._inner
        elif key == "device" and value is not None:
            target = parse_device(map_int_device(value))
            value = "cpu" if type(target) is int else target
        elif key == "generator" and value is not None:
            generator = value
        elif key == "pin_memory":
            pinned, value = value, False  # a CPU-only torch cannot pin: plain memory, marked pinned
        elif isinstance(value, Tensor):
            plain = True
        elif (type(value) is list or type(value) is tuple) and value and isinstance(value[0], Tensor) and key != "out":
            seq, index, odd = _unwrap_sequence(value, index)  # torch.gradient(spacing=[t, ...])
            if odd:
                return _slow(func, args, kwargs)
            plain = plain or odd is None
            value = type(value)(seq)
        inner_kwargs[key] = value
    if target is None and index == -1:
        if plain and _functorch_level() is not None and _vmapped_simulated((*args, *kwargs.values())):
            return _slow(func, args, kwargs)
        if generator is not None and getattr(generator, "_sim_index", None) is not None:
            raise RuntimeError(errors.generator_message("cpu", "cuda", _name(func)))
        out = func(*args, **inner_kwargs)  # nothing simulated: the call as made (unpinned)
        return sim_streams.mark_pinned(out) if pinned and isinstance(out, Tensor) else out
    if target is not None and type(target) is not int:  # meta & co: computed from the inner tensors
        return func(*inner, **inner_kwargs)
    if target is None:
        if plain:
            return _slow(func, args, kwargs)
        target = index
    if generator is not None:
        on_gpu = getattr(generator, "_sim_index", None) is not None
        if on_gpu != (target != -1):
            expected, found = ("cuda", "cpu") if target != -1 else ("cpu", "cuda")
            raise RuntimeError(errors.generator_message(expected, found, _name(func)))
    try:
        out = func(*inner, **inner_kwargs)
    except (RuntimeError, NotImplementedError) as exc:
        out = stand_in(func, inner, inner_kwargs, exc)  # a CPU stand-in for a GPU kernel, else the gap is noted
        if out is NO_STAND_IN:
            raise
    if target == -1:
        return sim_streams.mark_pinned(out) if pinned and isinstance(out, Tensor) else out
    if "out" in kwargs and out is inner_kwargs["out"]:
        return kwargs["out"]
    return _wrap_out(out, target, inner[0] if inner else None, args[0] if args else None)


# --- calls with a CPU-tensor receiver, or failing before dispatch -------------------------


def _to(func, args, kwargs):
    return tensor_to(*args, **kwargs)


def _cuda(func, args, kwargs):
    self_, *rest = args
    if type(self_) is SimTensor:
        return self_.cuda(*rest, **kwargs)
    device = rest[0] if rest else kwargs.get("device")
    non_blocking = rest[1] if len(rest) > 1 else kwargs.get("non_blocking", False)
    return tensor_to(self_, "cuda" if device is None else map_int_device(device), non_blocking=non_blocking)


def _refuse_simulated_index(self_: Tensor, index: Any) -> None:
    """A CPU tensor indexed with a simulated (CUDA) tensor fails in libtorch."""
    keys = index if type(index) is tuple else (index,)
    if any(type(k) is SimTensor for k in keys):
        raise IndexError(errors.index_message(self_.device))


def _getitem(func, args, kwargs):
    self_, index = args
    if type(self_) is SimTensor:
        return self_[index]
    vmapped = functorch_getitem(self_, index)
    if vmapped is not None:
        return vmapped
    _refuse_simulated_index(self_, index)
    return func(self_, index)


def _setitem(func, args, kwargs):
    self_, index, value = args
    if type(self_) is SimTensor:
        return self_.__setitem__(index, value)
    if functorch_setitem(self_, index, value):
        return None
    _refuse_simulated_index(self_, index)
    if type(value) is SimTensor:
        return setitem(self_, index, value)  # a device value into host memory: a D2H copy
    return func(*args, **kwargs)


def _copy_(func, args, kwargs):
    dst, src = args[0], args[1]
    if type(dst) is SimTensor or type(src) is SimTensor:
        return copy_between(dst, src, kwargs.get("non_blocking", args[2] if len(args) > 2 else False))
    return func(*args, **kwargs)


def _from_data(op: str):
    """torch.tensor / as_tensor / asarray: data onto a simulated device is a host copy."""
    shares = op != "tensor"  # as_tensor/asarray keep data already on the target device

    def factory(func, args, kwargs):
        data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
        device = kwargs.get("device")
        if device is None and type(data) is not SimTensor:
            host = host_elements(data, op)  # simulated scalars in a list: read to the host
            if host is not data and args:
                args = (host, *args[1:])
            elif host is not data:
                kwargs = {**kwargs, "data" if "data" in kwargs else "obj": host}
            return func(*args, **kwargs)
        dtype = kwargs.get("dtype")
        if shares and type(data) is SimTensor and (device is None or parse_device(map_int_device(device)) == data._dev):
            return data if dtype in (None, data.dtype) else data.to(dtype)
        options = {"dtype": dtype} if dtype is not None else {}
        if device is not None:
            options["device"] = device
        return new_from_data(None, data, op, **options)

    return factory


def _new_tensor(func, args, kwargs):
    self_, data = args[0], args[1]
    if "device" in kwargs or type(data) is SimTensor:
        kwargs = dict(kwargs)
        kwargs.setdefault("dtype", self_.dtype)
        kwargs.pop("requires_grad", None)
        return new_from_data(self_, data, "new_tensor", **kwargs)
    return func(*args, **kwargs)


def _pin_memory(func, args, kwargs):
    """Pinned host memory needs a GPU runtime: a CPU-only torch refuses, a GPU build copies."""
    self_ = args[0]
    if type(self_) is SimTensor:
        return self_.pin_memory()
    if sim_streams.is_pinned(self_):
        return self_
    return sim_streams.mark_pinned(self_.clone(memory_format=torch.contiguous_format))


def _is_pinned(func, args, kwargs):
    """Host memory pinned inside the simulation (pin_memory(), pin_memory=True, a non-blocking
    `.to("cpu")`) answers True."""
    return sim_streams.is_pinned(args[0]) or func(*args, **kwargs)


def _sdpa(func, args, kwargs):
    """libtorch checks query, key and value before choosing a kernel, with its own message."""
    q, k, v = args[:3]
    devices = [device_of(t) for t in (q, k, v)]
    if not (devices[0] == devices[1] == devices[2]):
        raise RuntimeError(errors.sdpa_message(*devices))
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    if isinstance(mask, Tensor) and device_of(mask) != devices[0]:
        # the math kernel adds the mask to the scores: a TensorIterator check
        raise RuntimeError(errors.iter_message(devices[0], device_of(mask), "wrapper_CUDA_add_Tensor"))
    return _fast(func, args, kwargs)


def _contiguous(func, args, kwargs):
    """`contiguous()` of a simulated tensor under torch.vmap: the C++ binding would take a
    CUDA device guard (a SimTensor receiver is rerouted in Python and never comes here)."""
    self_ = args[0]
    if _functorch_level() is None or sim_index(self_) == -1:
        return func(*args, **kwargs)
    memory_format = kwargs.get("memory_format", args[1] if len(args) > 1 else torch.contiguous_format)
    if self_.is_contiguous(memory_format=memory_format):
        return self_
    with SimDispatchMode():
        return torch.ops.aten.clone.default(self_, memory_format=memory_format)


def _metadata_inplace(func, args, kwargs):
    """t_, unsqueeze_, resize_, set_...: compute on the inner tensor, then swap a wrapper with
    the new sizes into the receiver (a wrapper's metadata is fixed at creation)."""
    self_ = args[0]
    if type(self_) is not SimTensor:
        return _fast(func, args, kwargs)
    if _fast(func, args, kwargs) is self_:
        become(self_, wrap(self_._inner, self_._dev))  # same inner, new sizes
    return self_


_METADATA_INPLACE = (
    Tensor.t_, Tensor.transpose_, Tensor.unsqueeze_, Tensor.squeeze_, Tensor.swapdims_, Tensor.swapaxes_,
    Tensor.resize_, Tensor.resize_as_, Tensor.as_strided_, Tensor.set_,
)


def _sync(op: str, when=None):
    """Functions whose result size or value must reach the host first: a host sync on a GPU
    (the fast path never shows their aten ops to dispatch, which counts them otherwise)."""

    def synced(func, args, kwargs):
        if any(type(a) is SimTensor for a in args) and (when is None or when(args, kwargs)):
            record("sync", 0, op)
        return _fast(func, args, kwargs)

    return synced


_SYNCS = {
    (torch.nonzero, torch.argwhere, Tensor.argwhere): _sync("nonzero"),
    (torch.masked_select, Tensor.masked_select): _sync("masked_select"),
    (torch.unique, Tensor.unique, torch.unique_consecutive, Tensor.unique_consecutive): _sync("unique"),
    (torch.equal, Tensor.equal): _sync("equal"),
    (torch.allclose, Tensor.allclose): _sync("allclose"),
    (torch.is_nonzero, Tensor.is_nonzero): _sync("is_nonzero"),
    (torch.bincount, Tensor.bincount): _sync("bincount"),
    (torch.where,): _sync("nonzero", lambda args, kwargs: len(args) + len(kwargs) == 1),
    (torch.repeat_interleave, Tensor.repeat_interleave): _sync(
        "repeat_interleave",
        lambda args, kwargs: isinstance(kwargs.get("repeats", args[1] if len(args) > 1 else args[0]), Tensor)
        and kwargs.get("output_size") is None,
    ),
}

# Passed straight through: device queries must see the wrapper, and the methods SimTensor
# reroutes in Python only come here with a CPU receiver.
_PASS_THROUGH = {
    Tensor.get_device, Tensor.type, Tensor.__repr__, Tensor.__str__,
    Tensor.__format__, Tensor.dim, Tensor.size, Tensor.stride, Tensor.numel, Tensor.is_contiguous,
    Tensor.element_size, Tensor.is_floating_point, Tensor.is_complex, Tensor.__len__,
    Tensor.data_ptr, Tensor.untyped_storage, Tensor.storage_offset, Tensor.ndimension, Tensor.nelement,
    Tensor.__hash__, Tensor.requires_grad_, Tensor.__reduce_ex__, Tensor.__deepcopy__,
    Tensor.__iter__, Tensor.__array__, Tensor.numpy, Tensor.item, Tensor.tolist,
    Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__, Tensor.nonzero,
    Tensor.new, Tensor.cpu, Tensor.__complex__,
}

_SPECIAL = {
    Tensor.to: _to,
    Tensor.cuda: _cuda,
    Tensor.__getitem__: _getitem,
    Tensor.__setitem__: _setitem,
    Tensor.copy_: _copy_,
    Tensor.new_tensor: _new_tensor,
    Tensor.pin_memory: _pin_memory,
    Tensor.is_pinned: _is_pinned,
    Tensor.contiguous: _contiguous,
    torch.tensor: _from_data("tensor"),
    torch.as_tensor: _from_data("as_tensor"),
    torch.asarray: _from_data("asarray"),
    F.scaled_dot_product_attention: _sdpa,
    torch._C._nn.scaled_dot_product_attention: _sdpa,
    torch._C._nn._parse_to: _passthrough,  # parses a device, creates nothing
}

_SPECIAL.update(dict.fromkeys(_METADATA_INPLACE, _metadata_inplace))
for _functions, _handler in _SYNCS.items():
    _SPECIAL.update(dict.fromkeys(_functions, _handler))
_HANDLERS: dict[Any, Any] = {}


def _with_default_device(handler):
    """Factories under `torch.set_default_device("cuda")`: that DeviceContext sits below this
    mode on the stack and would add the device only after this mode let the call through."""

    def factory(func, args, kwargs):
        device = _device_module.CURRENT_DEVICE
        if device is not None and device.type == "cuda" and kwargs.get("device") is None:
            kwargs = {**kwargs, "device": device}
        return handler(func, args, kwargs)

    return factory


def _handler_for(func):
    handler = _SPECIAL.get(func)
    if handler is not None:
        return _with_default_device(handler) if func in _device_module._device_constructors() else handler
    if func in _device_module._device_constructors():
        return _with_default_device(_fast)
    if func in _PASS_THROUGH or getattr(func, "__name__", "") in ("__get__", "__set__"):
        return _passthrough
    return _fast
