"""The simulated CUDA tensor and its `__torch_dispatch__` layer.

A `SimTensor` is a wrapper subclass that reports `cuda:<i>` while its data lives in a real
CPU tensor (`_inner`). Every aten op that reaches it is checked the way libtorch checks a
CUDA kernel (one device per op, with PyTorch's exceptions) and then run on the inner tensors.

This is the hot path (~170 ops per decoded token on a small llama), so each op gets a
handler built once from its schema (`_HANDLERS`), the common handler iterates the arguments
directly (no pytree), and anything unusual (a CPU tensor, another device) leaves the fast
loop for `_mismatch`, which works out libtorch's answer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from harness.devices import errors
from harness.devices.state import NO_STAND_IN, STATE, record, stand_in

aten = torch.ops.aten
MAX_DEVICES = 64
CUDA = tuple(torch.device("cuda", i) for i in range(MAX_DEVICES))
CPU = torch.device("cpu")
_make_wrapper = Tensor._make_wrapper_subclass
_strided = torch.strided
_no_tf = torch._C.DisableTorchFunction


class _LooksLikeTensor(type(Tensor)):  # type: ignore[misc]
    """SimTensor's metaclass: `type(t) == torch.Tensor` holds for a simulated tensor, as it
    does for a real CUDA tensor (Outlines 0.1.x-0.2.x hand logits back only when
    `type(logits) == torch.Tensor`, outlines/processors/base_logits_processor.py). Identity
    (`type(t) is torch.Tensor`) and hashing stay those of the subclass."""

    def __eq__(cls, other: object) -> bool:
        return other is Tensor or type.__eq__(cls, other) is True

    def __ne__(cls, other: object) -> bool:
        return not _LooksLikeTensor.__eq__(cls, other)

    __hash__ = type.__hash__


class SimTensor(Tensor, metaclass=_LooksLikeTensor):
    """A tensor on simulated `cuda:<_dev>`, holding its data in the CPU tensor `_inner`.

    No `__slots__`: `torch.utils.swap_tensors` (used by `module.to()`) needs a `__dict__`.
    Never requires grad: an autograd node with a simulated output aborts the process.
    """

    _inner: Tensor
    _dev: int

    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]  # the mode does it

    def __new__(cls, data: Tensor | None = None, requires_grad: bool = True):
        """`type(param)(data, requires_grad=...)` as code rebuilding a parameter calls it
        (accelerate's offload hooks): a moved parameter's type is SimTensor, its parameter-ness
        the `_is_param` flag, as for any tensor subclass; on a GPU the same call builds an
        `nn.Parameter`, so this does too: on `data`'s device, simulated or not. Wrappers
        themselves are made by `wrap()`, which never calls the class."""
        return torch.nn.Parameter(torch.empty(0) if data is None else data, requires_grad=requires_grad)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]
        handler = _HANDLERS.get(func)
        if handler is None:
            handler = _HANDLERS[func] = _build_handler(func)
        return handler(func, args, kwargs or {})

    def __repr__(self, *, tensor_contents=None) -> str:  # type: ignore[override]
        return _repr(self)

    # The properties read most by model code, answered here rather than through the function
    # mode (a third of its calls on a llama decode step are these three getters).
    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return CUDA[self._dev]

    @property
    def shape(self) -> torch.Size:  # type: ignore[override]
        with _no_tf():
            return self._inner.shape

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        with _no_tf():
            return self._inner.dtype

    @property
    def data(self) -> SimTensor:
        with _no_tf():
            return wrap(self._inner.detach(), self._dev)

    @data.setter
    def data(self, value: Tensor) -> None:
        # PyTorch lets `x.data = y` change x's device and sizes: become an alias of y
        if type(value) is SimTensor:
            become(self, wrap(value._inner, value._dev))
        else:
            with _no_tf():
                become(self, value.detach())

    # Reported as False whatever is asked: see the class docstring.
    @property
    def requires_grad(self) -> bool:
        return False

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        pass

    def requires_grad_(self, requires_grad: bool = True) -> SimTensor:
        return self

    def __deepcopy__(self, memo: dict) -> SimTensor:
        if id(self) in memo:
            return memo[id(self)]
        with torch._C.DisableTorchFunction():
            copied = wrap(copy.deepcopy(self._inner, memo), self._dev)
        for key, value in self.__dict__.items():
            if key not in ("_inner", "_dev"):
                setattr(copied, key, copy.deepcopy(value, memo))
        memo[id(self)] = copied
        return copied


def wrap(t: Tensor, index: int) -> SimTensor:
    """`t` (a CPU tensor) as a tensor on simulated cuda:`index`."""
    if t.requires_grad:
        t = t.detach()
    s = _make_wrapper(SimTensor, t.shape, t.stride(), t.storage_offset(), None, t.dtype, _strided, CUDA[index])
    s._inner = t
    s._dev = index
    return s


def become(t: SimTensor, fresh: Tensor) -> None:
    """Make `t` (in place, same Python object) the tensor `fresh`: how a wrapper, whose sizes
    and device are fixed at creation, follows an in-place change of metadata."""
    extra = {k: v for k, v in t.__dict__.items() if k not in ("_inner", "_dev")}  # e.g. _is_param
    torch.utils.swap_tensors(t, fresh)
    t.__dict__.update(extra)


def device_of(t: Any) -> torch.device:
    return CUDA[t._dev] if type(t) is SimTensor else t.device


_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_functorch_unwrapped = torch._C._functorch.get_unwrapped


def functorch_wrapped(t: Any) -> bool:
    """Inside torch.vmap a tensor is functorch's wrapper (perhaps several deep) around the
    SimTensor or host tensor the transform was given, not a SimTensor itself."""
    return type(t) is not SimTensor and _functorch_wrapped(t)


def functorch_inner(t: Any) -> Any:
    """The tensor inside functorch's wrappers (`t` itself outside a transform): all the data."""
    while functorch_wrapped(t):
        t = _functorch_unwrapped(t)
    return t


def sim_index(t: Any) -> int:
    """The simulated device index of a tensor, -1 for a host one; looks inside functorch's wrappers."""
    t = functorch_inner(t)
    return t._dev if type(t) is SimTensor else -1


def _repr(t: SimTensor) -> str:
    """PyTorch's repr with the simulated device, e.g. `tensor([1.], device='cuda:0')`: the
    device comes first among the suffixes, right after the data (printing reads the device)."""
    record("d2h", t._inner.nbytes, "__repr__")
    prefix = "tensor("
    with torch._C.DisableTorchFunction():
        text = repr(t._inner)
        data = torch._tensor_str._tensor_str(t._inner, len(prefix)) if t._inner.numel() else "[]"
    device = f", device='{CUDA[t._dev]}'"
    head = prefix + data
    if text.startswith(head):
        return head + device + text[len(head):]
    return text[:-1] + device + ")"  # an unusual layout: the device last


# --- handlers ---------------------------------------------------------------------------------
# A handler is `handler(func, args, kwargs) -> result`. `_build_handler` picks one per op.

Handler = Callable[[Any, tuple, dict], Any]
_HANDLERS: dict[Any, Handler] = {}


def wrap_result(out: Any, index: int) -> Any:
    """An op's result (a tensor, a tuple or list of them, a named tuple, a number) with its
    CPU tensors on simulated cuda:`index`."""
    kind = type(out)
    if kind is Tensor:
        return wrap(out, index)
    if kind is tuple or kind is list:
        return kind(wrap(o, index) if type(o) is Tensor else o for o in out)
    if kind.__module__ == "torch.return_types":  # max(dim=...), topk, ...: named tuples
        return kind([wrap(o, index) if type(o) is Tensor else o for o in out])
    return out


def _make_simple(returns_self: bool) -> Handler:
    """Ops whose tensors are all plain positional `Tensor`/`Tensor?` arguments."""

    def simple(func, args, kwargs):
        index = -1
        inner = []
        for a in args:
            if type(a) is SimTensor:
                d = a._dev
                if d != index:
                    if index != -1:
                        return _mismatch(func, args, kwargs)
                    index = d
                inner.append(a._inner)
            elif isinstance(a, Tensor):
                return _mismatch(func, args, kwargs)
            else:
                inner.append(a)
        try:
            out = func(*inner, **kwargs)
        except (RuntimeError, NotImplementedError) as exc:
            out = stand_in(func, inner, kwargs, exc)  # a CPU stand-in for a GPU kernel, else the gap is noted
            if out is NO_STAND_IN:
                raise
        if returns_self:
            return args[0]
        kind = type(out)
        if kind is Tensor:
            return wrap(out, index)
        return wrap_result(out, index)

    return simple


def _unwrap_all(args: tuple, kwargs: dict) -> tuple[list, dict, int, bool]:
    """Inner tensors of args and kwargs (one level of lists), the common simulated device
    (-1: none) and whether any other tensor or a second device was seen."""
    index = -1
    odd = False

    def one(a):
        nonlocal index, odd
        if type(a) is SimTensor:
            if index == -1:
                index = a._dev
            elif a._dev != index:
                odd = True
            return a._inner
        if isinstance(a, Tensor):
            odd = True
        return a

    inner = [[one(x) for x in a] if type(a) in (list, tuple) else one(a) for a in args]
    inner_kwargs = {k: one(v) for k, v in kwargs.items()}
    return inner, inner_kwargs, index, odd


def _general(func, args, kwargs):
    """Ops with tensor lists, tensor kwargs (out=) or generators."""
    inner, inner_kwargs, index, odd = _unwrap_all(args, kwargs)
    if odd:
        return _mismatch(func, args, kwargs)
    _check_generators(func, args, kwargs, index)
    out = func(*inner, **inner_kwargs)
    return _restore_aliases(func, out, index, args, kwargs)


def _restore_aliases(func, out, index: int, args: tuple, kwargs: dict) -> Any:
    """In-place and out= ops return their (wrapper) argument, not a new wrapper."""
    info = _alias_returns(func)
    if info == "self":
        return args[0]
    if info == "out":
        outs = [v for k, v in kwargs.items() if k.startswith("out") or k in ("values", "indices")]
        return outs[0] if len(outs) == 1 else tuple(outs)
    return wrap_result(out, index)


_ALIAS_CACHE: dict[Any, str] = {}


def _alias_returns(func) -> str:
    kind = _ALIAS_CACHE.get(func)
    if kind is None:
        schema = func._schema
        kind = "new"
        if schema.returns and schema.returns[0].alias_info is not None and schema.returns[0].alias_info.is_write:
            written = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
            if written and not written[0].kwarg_only:
                kind = "self"
            elif written:
                kind = "out"
        _ALIAS_CACHE[func] = kind
    return kind


def _check_generators(func, args, kwargs, index: int) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch._C.Generator) and getattr(a, "_sim_index", None) is None and index != -1:
            raise RuntimeError(errors.generator_message("cuda", a.device.type, func._schema.name.split("::")[-1]))


def _sync(handler: Handler, op: str) -> Handler:
    """A host sync on a GPU: the result's size or value must reach the host."""

    def synced(func, args, kwargs):
        record("sync", 0, op)
        return handler(func, args, kwargs)

    return synced


def _build_handler(func) -> Handler:
    special = _SPECIAL.get(func)
    if special is not None:
        return special
    schema = func._schema
    plain = True
    for a in schema.arguments:
        type_str = str(a.type)
        if a.kwarg_only and "Tensor" in type_str:
            plain = False
        if ("List[" in type_str and "Tensor" in type_str) or "Generator" in type_str:
            plain = False
    alias = _alias_returns(func)
    handler = _make_simple(alias == "self") if plain and alias != "out" else _general
    tags = func.tags
    if torch.Tag.data_dependent_output in tags or torch.Tag.dynamic_output_shape in tags:
        handler = _sync(handler, schema.name.split("::")[-1])
    if torch.Tag.inplace_view in tags or func in _METADATA_INPLACE:
        handler = _metadata_inplace
    return handler


# --- the mismatch path: what libtorch would do -------------------------------------------


def _tensor_args(func, args, kwargs) -> list[tuple[str, Tensor, bool, bool]]:
    """(name, tensor, is_output, from_list) in libtorch's checking order: out= first."""
    outs: list[tuple[str, Tensor, bool, bool]] = []
    ins: list[tuple[str, Tensor, bool, bool]] = []
    schema_args = func._schema.arguments
    for position, arg in enumerate(schema_args):
        value = kwargs.get(arg.name) if arg.kwarg_only else (args[position] if position < len(args) else None)
        values = value if isinstance(value, (list, tuple)) else [value]
        writes = arg.alias_info is not None and arg.alias_info.is_write
        for v in values:
            if isinstance(v, Tensor):
                row = (arg.name, v, writes, isinstance(value, (list, tuple)))
                (outs if arg.kwarg_only and writes else ins).append(row)
    return outs + ins


def _run_mixed(func, args, kwargs, index: int):
    """Run an op whose CPU tensors libtorch accepts (scalars, indices) on the inner tensors."""
    inner, inner_kwargs, _, _ = _unwrap_all(args, kwargs)
    out = func(*inner, **inner_kwargs)
    return _restore_aliases(func, out, index, args, kwargs)


def _mismatch(func, args, kwargs):
    info = errors.op_info(func)
    if info.backend == "implicit" and func._can_decompose():
        with SimDispatchMode():
            return func.decompose(*args, **kwargs)  # its ops report, as on a GPU
    if info.backend == "explicit" and func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeExplicitAutograd):
        with SimDispatchMode():
            return func._op_dk(torch._C.DispatchKey.CompositeExplicitAutograd, *args, **kwargs)
    tensors = _tensor_args(func, args, kwargs)
    if (info.checked and info.backend != "unknown") or (info.backend == "unknown" and any(t[3] for t in tensors)):
        return _wrapper_check(func, info, tensors, args, kwargs)
    return _iterator_check(func, tensors, args, kwargs)


def _wrapper_check(func, info: errors.OpInfo, tensors, args, kwargs):
    common = None
    for name, t, _, _ in tensors:
        device = device_of(t)
        if common is None:
            common = device
        elif device != common:
            raise RuntimeError(errors.wrapper_message(info.method, name, device, common))
    return _run_on_common(func, args, kwargs, common)


def _iterator_check(func, tensors, args, kwargs):
    """TensorIterator: the first non-CPU operand sets the device; one 0-dim CPU input may be a scalar."""
    devices = [device_of(t) for _, t, _, _ in tensors]
    common = next((d for d in devices if d.type != "cpu"), CPU)
    scalars = 0
    for (_, t, is_output, _), device in zip(tensors, devices, strict=True):
        if common.type != "cpu" and not is_output and t.dim() == 0 and device.type == "cpu":
            scalars += 1
            if scalars > 1:
                raise RuntimeError("Trying to pass too many CPU scalars to non-CPU kernel!")
        elif device != common:
            raise RuntimeError(errors.iter_message(common, device, errors.op_info(func).method))
    return _run_on_common(func, args, kwargs, common)


def _run_on_common(func, args, kwargs, common):
    if common is None or common.type != "cuda":
        raise RuntimeError(f"simulated devices: {func} has no simulated tensor to run on")
    return _run_mixed(func, args, kwargs, common.index)


# --- special ops ----------------------------------------------------------------------------


def _to_copy(func, args, kwargs):
    """`_to_copy` with a SimTensor source (CPU sources are handled by the function mode)."""
    src = args[0]
    target = kwargs.get("device")
    inner_kwargs = dict(kwargs)
    inner_kwargs.pop("device", None)
    inner_kwargs.pop("pin_memory", None)
    out = func(src._inner, **inner_kwargs)
    if target is None or (target.type == "cuda" and (target.index is None or target.index == src._dev)):
        return wrap(out, src._dev)
    if target.type == "cpu":
        sim_streams.copy_d2h(out, src._dev, out.nbytes, bool(kwargs.get("non_blocking")), "_to_copy", fresh=True)
        return out
    if target.type == "cuda":
        check_index(target.index)
        record("d2d", out.nbytes, "_to_copy")
        return wrap(out, target.index)
    return func(out, **kwargs)  # meta and friends: as from the CPU


def copy_between(dst: Any, src: Any, non_blocking: bool = False, op: str = "copy_") -> Any:
    """`dst.copy_(src)` across real CPU and simulated devices, counting the transfer."""
    d_sim, s_sim = type(dst) is SimTensor, type(src) is SimTensor
    d_inner = dst._inner if d_sim else dst
    s_inner = src._inner if s_sim else src
    watch = sim_streams.ASYNC.watch
    if s_sim and watch:
        sim_streams.device_read(src)
    if d_sim and s_sim:
        if dst._dev != src._dev:
            record("d2d", s_inner.nbytes, op)
    elif d_sim and src.device.type == "cpu":
        sim_streams.copy_h2d(s_inner, s_inner.nbytes, dst._dev, non_blocking, op)
    elif s_sim and dst.device.type == "cpu":
        sim_streams.copy_d2h(dst, src._dev, s_inner.nbytes, non_blocking, op, fresh=False)
    with torch._C.DisableTorchFunction():
        d_inner.copy_(s_inner, non_blocking)
    if d_sim and watch:
        sim_streams.written_by_copy(dst, f"written by {op}(non_blocking={non_blocking})", fresh=False)
    return dst


def _copy_(func, args, kwargs):
    return copy_between(args[0], args[1], kwargs.get("non_blocking", args[2] if len(args) > 2 else False))


def _item(func, args, kwargs):
    record("sync", 0, "item")
    return func(args[0]._inner)


def _indices(self_: SimTensor, indices, op: str) -> list:
    """Index tensors as libtorch takes them for a CUDA `self`: CPU ones are copied over
    (an H2D each), boolean masks cost a nonzero (a sync), other devices fail."""
    inner: list[Tensor | None] = []
    for index in indices:
        if index is None:
            inner.append(None)
            continue
        if type(index) is SimTensor:
            if index._dev != self_._dev:
                raise IndexError(errors.index_message(CUDA[self_._dev]))
            value = index._inner
        else:
            if index.device.type != "cpu":
                raise IndexError(errors.index_message(CUDA[self_._dev]))
            value = index
            record("h2d", index.nbytes, op)
        if value.dtype in (torch.bool, torch.uint8):
            record("sync", 0, op)
        inner.append(value)
    return inner


def _host_indexed_by_simulated(self_: Any) -> None:
    """A host tensor indexed with simulated (CUDA) indices fails in libtorch; `t[i]` is refused
    before dispatch, but aten.index itself (torch.vmap, TransformGetItemToIndex) arrives here."""
    if type(self_) is not SimTensor:
        raise IndexError(errors.index_message(self_.device))


def _index(func, args, kwargs):
    self_ = args[0]
    _host_indexed_by_simulated(self_)
    return wrap(func(self_._inner, _indices(self_, args[1], "index"), *args[2:], **kwargs), self_._dev)


def _index_put(func, args, kwargs):
    self_, indices, values = args[0], args[1], args[2]
    _host_indexed_by_simulated(self_)
    if type(values) is SimTensor:
        if values._dev != self_._dev:
            raise RuntimeError(errors.index_put_values_message(CUDA[self_._dev], CUDA[values._dev]))
        values = values._inner
    elif values.device.type != "cpu" or values.dim() != 0:
        raise RuntimeError(errors.index_put_values_message(CUDA[self_._dev], values.device))
    out = func(self_._inner, _indices(self_, indices, "index_put_"), values, *args[3:], **kwargs)
    return self_ if _alias_returns(func) == "self" else wrap(out, self_._dev)


def _masked_fill(func, args, kwargs):
    self_, mask = args[0], args[1]
    if device_of(mask) != device_of(self_) and not (mask.dim() == 0 and mask.device.type == "cpu"):
        raise RuntimeError(errors.masked_fill_message(device_of(mask), device_of(self_)))
    return _iterator_check(func, _tensor_args(func, args, kwargs), args, kwargs)


def _metadata_inplace(func, args, kwargs):
    """In-place ops that change sizes or strides (t_, unsqueeze_, resize_, set_, ...): the
    wrapper's metadata is fixed at creation. The function mode swaps in a fresh wrapper
    before dispatch (`swap_tensors` refuses here, where the dispatcher holds references)."""
    raise RuntimeError(
        f"simulated devices: {func} changes a tensor's metadata in place, which a simulated tensor "
        "supports only through the Tensor method inside simulated_gpus()"
    )


def _no_op(func, args, kwargs):
    return None


def _not_pinned(func, args, kwargs):
    return False


# in-place ops that change sizes but carry no `inplace_view` tag
_METADATA_INPLACE = {aten.resize_.default, aten.squeeze_.default, aten.squeeze_.dim, aten.squeeze_.dims}

_SPECIAL: dict[Any, Handler] = {
    aten._to_copy.default: _to_copy,
    aten.copy_.default: _copy_,
    aten._local_scalar_dense.default: _item,
    aten.index.Tensor: _index,
    aten.index_put_.default: _index_put,
    aten.index_put.default: _index_put,
    aten._index_put_impl_.default: _index_put,
    aten.masked_fill_.Scalar: _masked_fill,
    aten.masked_fill_.Tensor: _masked_fill,
    aten.masked_fill.Scalar: _masked_fill,
    aten.masked_fill.Tensor: _masked_fill,
    aten.record_stream.default: _no_op,
    aten.is_pinned.default: _not_pinned,
}


def check_index(index: int | None) -> int:
    """A device index that exists in this simulation, or PyTorch's error for one that does not."""
    if index is None:
        return STATE.current
    if not 0 <= index < max(STATE.count, 1):
        raise RuntimeError(
            "CUDA error: invalid device ordinal\nCUDA kernel errors might be asynchronously reported "
            "at some other API call, so the stacktrace below might be incorrect."
        )
    return index


class SimDispatchMode(TorchDispatchMode):
    """Active only around calls that go down to dispatch with simulated tensors: composite
    kernels create tensors with a simulated tensor's options inside C++ (`where`,
    `one_hot`, ...), which no argument of theirs carries; such a factory becomes a CPU
    tensor on the simulated device. Ops on simulated tensors follow SimTensor's rules."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if SimTensor in types:
            return SimTensor.__torch_dispatch__(func, types, args, kwargs)
        device = kwargs.get("device")
        if device is not None and device.type == "cuda":
            kwargs = {**kwargs, "device": CPU}
            kwargs.pop("pin_memory", None)
            return wrap_result(func(*args, **kwargs), check_index(device.index))
        return func(*args, **kwargs)


# Last: sim_streams (streams, events, non-blocking copies) builds on the names above.
from harness.devices import sim_streams  # noqa: E402
