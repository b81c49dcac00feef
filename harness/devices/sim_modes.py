"""The torch-function layer of the simulation: devices in arguments, and the fast path.

`SimFunctionMode` sees every torch function call (before argument parsing), so it handles:
- factories and `*_like`/`new_*` calls with `device=` (a CPU-only torch fails in parsing:
  "Torch not compiled with CUDA enabled"): run on the CPU, wrap the result; meta passes;
- `.to()` / `.cuda()` / indexing with a CPU-tensor receiver, ints as cuda indices;
- generators: a CPU generator given to a simulated op fails as on a GPU, and the reverse;
- functions that fail before dispatch on a wrapper (scaled_dot_product_attention);
- the fast path: a call whose tensors are all simulated on one device runs straight on the
  inner CPU tensors, so its aten ops never reach Python again. That halves the cost of the
  simulation. Anything else (a CPU tensor, two devices) goes down to `__torch_dispatch__`,
  which knows libtorch's rules per aten op.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from harness.devices import errors
from harness.devices.sim_methods import (
    index_arg,
    map_int_device,
    new_from_data,
    parse_device,
    setitem,
    tensor_to,
)
from harness.devices.sim_tensor import CUDA, SimDispatchMode, SimTensor, copy_between, device_of, wrap
from harness.devices.state import note_kernel_gap

class SimFunctionMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        handler = _HANDLERS.get(func)
        if handler is None:
            handler = _HANDLERS[func] = _handler_for(func)
        return handler(func, args, kwargs or {})


def _passthrough(func, args, kwargs):
    return func(*args, **kwargs)


def _wrap_out(out: Any, index: int, first_inner: Any, first: Any) -> Any:
    kind = type(out)
    if kind is Tensor:
        return first if out is first_inner else wrap(out, index)
    if kind is tuple or kind is list:
        return kind(wrap(o, index) if type(o) is Tensor else o for o in out)
    if type(out).__module__ == "torch.return_types":
        return kind([wrap(o, index) if type(o) is Tensor else o for o in out])
    return out


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _call_inner(func, args, kwargs):
    try:
        return func(*args, **kwargs)
    except (RuntimeError, NotImplementedError) as exc:
        if errors.is_kernel_gap(exc):
            note_kernel_gap(_name(func), exc)
        raise


def _slow(func, args, kwargs):
    """Down to `__torch_dispatch__`, which knows libtorch's rule for each aten op."""
    with SimDispatchMode():
        return func(*args, **kwargs)


def _fast(func, args, kwargs):
    """Unwrap when every tensor is simulated on one device; otherwise let dispatch decide."""
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
            seq = []
            for t in a:
                if type(t) is SimTensor:
                    if t._dev != index:
                        if index != -1:
                            return _slow(func, args, kwargs)
                        index = t._dev
                    seq.append(t._inner)
                else:
                    plain = plain or isinstance(t, Tensor)
                    seq.append(t)
            inner.append(kind(seq))
        else:
            if isinstance(a, Tensor):
                plain = True
            inner.append(a)
    if kwargs:
        return _with_kwargs(func, args, kwargs, inner, index, plain)
    if index == -1:
        return func(*args)
    if plain:
        return _slow(func, args, kwargs)  # a CPU tensor among simulated ones: dispatch decides
    return _wrap_out(_call_inner(func, inner, kwargs), index, inner[0], args[0])


def _with_kwargs(func, args, kwargs, inner, index, plain):
    inner_kwargs = {}
    target: Any = None
    generator = None
    for key, value in kwargs.items():
        if type(value) is SimTensor:
            if value._dev != index:
                if index != -1:
                    return _slow(func, args, kwargs)
                index = value._dev
            value = value._inner
        elif key == "device" and value is not None:
            target = parse_device(map_int_device(value))
            if isinstance(target, torch.device):
                value = target
            else:
                value = "cpu"
        elif key == "generator" and value is not None:
            generator = value
        elif isinstance(value, Tensor):
            plain = True
        inner_kwargs[key] = value
    if target is None and index == -1:
        if generator is not None and getattr(generator, "_sim_index", None) is not None:
            raise RuntimeError(errors.generator_message("cpu", "cuda", _name(func)))
        return func(*args, **kwargs)
    if isinstance(target, torch.device):  # meta & co: computed from the inner tensors
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
    out = _call_inner(func, inner, inner_kwargs)
    if target == -1:
        return out
    first_inner = inner[0] if inner else None
    if "out" in kwargs and out is inner_kwargs["out"]:
        return kwargs["out"]
    return _wrap_out(out, target, first_inner, args[0] if args else None)


# --- calls with a CPU-tensor receiver, or failing before dispatch -------------------------


def _to(func, args, kwargs):
    return tensor_to(*args, **kwargs)


def _cuda(func, args, kwargs):
    self_, *rest = args
    if type(self_) is SimTensor:
        return self_.cuda(*rest, **kwargs)
    device = rest[0] if rest else kwargs.get("device")
    return tensor_to(self_, "cuda" if device is None else map_int_device(device))


def _getitem(func, args, kwargs):
    self_, index = args
    if type(self_) is SimTensor:
        return self_[index]
    # a CPU tensor indexed with a simulated tensor fails in libtorch
    key = index_arg(self_.device, -1, _check_cpu_key(self_, index), "__getitem__")
    return func(self_, key)


def _check_cpu_key(self_: Tensor, index: Any) -> Any:
    keys = index if type(index) is tuple else (index,)
    if any(type(k) is SimTensor for k in keys):
        raise IndexError(errors.index_message(self_.device))
    return index


def _setitem(func, args, kwargs):
    self_, index, value = args
    if type(self_) is SimTensor or type(value) is SimTensor:
        _check_cpu_key(self_, index) if type(self_) is not SimTensor else None
        return setitem(self_, index, value)
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
    self_, data, *rest = args
    if type(self_) is SimTensor or "device" in kwargs or type(data) is SimTensor:
        kwargs = dict(kwargs)
        kwargs.setdefault("dtype", self_.dtype)
        kwargs.pop("requires_grad", None)
        return new_from_data(self_, data, "new_tensor", **kwargs)
    return func(*args, **kwargs)


def _sdpa(func, args, kwargs):
    """scaled_dot_product_attention fails before dispatch on a wrapper: check as libtorch."""
    q, k, v = args[:3]
    devices = [device_of(t) for t in (q, k, v)]
    if not (devices[0] == devices[1] == devices[2]):
        raise RuntimeError(errors.sdpa_message(*devices))
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    if isinstance(mask, Tensor) and device_of(mask) != devices[0]:
        # the math kernel adds the mask to the scores: a TensorIterator check
        raise RuntimeError(errors.iter_message(devices[0], device_of(mask), "wrapper_CUDA_add_Tensor"))
    return _fast(func, args, kwargs)


def _metadata_inplace(func, args, kwargs):
    """t_, unsqueeze_, resize_, set_...: compute on the inner tensor, then swap a wrapper with
    the new sizes into the receiver (a wrapper's metadata is fixed at creation)."""
    self_ = args[0]
    if type(self_) is not SimTensor:
        return _fast(func, args, kwargs)
    out = _fast(func, args, kwargs)
    if out is self_:
        fresh = wrap(self_._inner, self_._dev)
        fresh.__dict__.update({k: v for k, v in self_.__dict__.items() if k not in ("_inner", "_dev")})
        torch.utils.swap_tensors(self_, fresh)
    return self_


_METADATA_INPLACE = (
    Tensor.t_, Tensor.transpose_, Tensor.unsqueeze_, Tensor.squeeze_, Tensor.swapdims_, Tensor.swapaxes_,
    Tensor.resize_, Tensor.resize_as_, Tensor.as_strided_, Tensor.set_,
)

_DEVICE_QUERIES = {
    Tensor.get_device, Tensor.is_pinned, Tensor.type, Tensor.__repr__, Tensor.__str__,
    Tensor.__format__, Tensor.dim, Tensor.size, Tensor.stride, Tensor.numel, Tensor.is_contiguous,
    Tensor.element_size, Tensor.is_floating_point, Tensor.is_complex, Tensor.__len__,
    Tensor.data_ptr, Tensor.untyped_storage, Tensor.storage_offset, Tensor.ndimension, Tensor.nelement,
    Tensor.__hash__, Tensor.requires_grad_, Tensor.__reduce_ex__, Tensor.__deepcopy__,
    Tensor.__iter__, Tensor.__array__, Tensor.numpy, Tensor.item, Tensor.tolist,
    Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__, Tensor.nonzero,
    Tensor.contiguous, Tensor.new, Tensor.cpu, Tensor.__complex__,
}

_SPECIAL = {
    Tensor.to: _to,
    Tensor.cuda: _cuda,
    Tensor.__getitem__: _getitem,
    Tensor.__setitem__: _setitem,
    Tensor.copy_: _copy_,
    Tensor.new_tensor: _new_tensor,
    torch.tensor: _from_data("tensor"),
    torch.as_tensor: _from_data("as_tensor"),
    torch.asarray: _from_data("asarray"),
    F.scaled_dot_product_attention: _sdpa,
    torch._C._nn.scaled_dot_product_attention: _sdpa,
    torch._C._nn._parse_to: _passthrough,  # parses a device, creates nothing
}

_SPECIAL.update(dict.fromkeys(_METADATA_INPLACE, _metadata_inplace))
_HANDLERS: dict[Any, Any] = {}


def _handler_for(func):
    special = _SPECIAL.get(func)
    if special is not None:
        return special
    # Methods with a Python reroute on SimTensor (REROUTED) only come here with a CPU
    # receiver, and device queries must see the wrapper: both pass through.
    if func in _DEVICE_QUERIES or getattr(func, "__name__", "") in ("__get__", "__set__"):
        return _passthrough
    return _fast
