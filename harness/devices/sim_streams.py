"""Streams, events, pinned memory and non-blocking copies on simulated GPUs, with a race check.

On CPU every copy has finished when it returns, so code that is correct only by luck of
timing passes. Here each stream keeps a logical clock and a vector clock of what it has
waited for, and the host keeps one of what it knows has finished; nothing real is timed.
Work becomes visible to a stream or the host only through an ordering point: a sync of
the stream or the device, an event synchronized or waited on, a blocking copy or read
(`item`, `tolist`, `.cpu()`), `wait_stream` / `wait_event`, or work on the same stream.

PyTorch's semantics (tutorial "A guide on good usage of non_blocking and pin_memory()"):
- `.to("cpu", non_blocking=True)` from a GPU returns pinned memory, filled asynchronously;
  `copy_(gpu, non_blocking=True)` into pinned memory too; into pageable memory it is
  synchronous;
- a non-blocking host-to-device copy from pinned memory is asynchronous; from pageable memory
  the host waits (a hidden sync: counted in the ledger as a copy *and* a sync).

The race check (always on while simulated) raises `StreamRace`, naming both sides, when:
- the host reads a tensor whose non-blocking device-to-host copy is not known finished;
- a tensor written on one stream is used on another with no wait between them (tracked:
  work issued on side streams and non-blocking copies);
- a tensor allocated on a side stream and used on another stream is freed without
  `record_stream`, and its stream issues work before waiting for that use (the caching
  allocator would hand its memory out again under the other stream's feet).
Tensors are told apart by their storage's address; views share it.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from harness.devices import state
from harness.devices.sim_tensor import CUDA, SimTensor, check_index
from harness.devices.state import STATE, call_site, record

_no_tf = torch._C.DisableTorchFunction
_RealDevice = torch.device


class StreamRace(RuntimeError):
    """Work read before an ordering point makes it visible: on a real GPU, stale or partly
    written data (or memory reused under a stream's feet)."""


_ids = itertools.count(1)


class SimStream:
    """torch.cuda.Stream / torch.Stream on a simulated GPU: a logical clock and what it waited for."""

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any):
        self.device_index = _device_index(device)
        self.priority = priority
        self.stream_id = next(_ids)
        self.clock = 0
        self.seen: dict[int, int] = {}  # stream id -> that stream's clock this one has waited for
        self.name = f"cuda:{self.device_index} side stream {self.stream_id}"
        ASYNC.streams.add(self)

    device = property(lambda self: CUDA[self.device_index])
    device_type = "cuda"
    cuda_stream = property(lambda self: self.stream_id)

    def __repr__(self) -> str:
        return f"<torch.cuda.Stream device={self.device} cuda_stream={self.stream_id:#x} (simulated)>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SimStream) and other.stream_id == self.stream_id

    __hash__ = object.__hash__

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def snapshot(self) -> dict[int, int]:
        return {**self.seen, self.stream_id: self.clock}

    def has_seen(self, stream_id: int, tick: int) -> bool:
        own = self.clock if stream_id == self.stream_id else self.seen.get(stream_id, 0)
        return own >= tick or ASYNC.host.get(stream_id, 0) >= tick

    def synchronize(self) -> None:
        host_waits(self.snapshot())
        record("sync", 0, "Stream.synchronize")

    def wait_stream(self, stream: Any) -> None:
        if isinstance(stream, SimStream):
            _merge(self.seen, stream.snapshot())

    def wait_event(self, event: Any) -> None:
        if isinstance(event, SimEvent) and event.snapshot is not None:
            _merge(self.seen, event.snapshot)

    def record_event(self, event: Any = None) -> SimEvent:
        event = event if event is not None else SimEvent()
        event.record(self)
        return event

    def query(self) -> bool:
        """Everything done so far: a True answer is an ordering point for the host, as on CUDA."""
        host_waits(self.snapshot())
        return True

    def __enter__(self) -> SimStream:  # `with torch.Stream(...)` (transformers' offloaded cache)
        _context_stack().append(set_stream(self))
        return self

    def __exit__(self, *exc: Any) -> None:
        set_stream(_context_stack().pop())


class SimEvent:
    """torch.cuda.Event: a snapshot of the recording stream's clock."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False,
                 **kwargs: Any):
        self.enable_timing = enable_timing
        self.snapshot: dict[int, int] | None = None
        self.time: float | None = None

    def record(self, stream: Any = None) -> None:
        stream = stream if isinstance(stream, SimStream) else current_stream()
        stream.tick()
        self.snapshot = stream.snapshot()
        self.time = time.perf_counter()

    def synchronize(self) -> None:
        if self.snapshot is not None:
            host_waits(self.snapshot)
        record("sync", 0, "Event.synchronize")

    def wait(self, stream: Any = None) -> None:
        (stream if isinstance(stream, SimStream) else current_stream()).wait_event(self)

    def query(self) -> bool:
        if self.snapshot is not None:
            host_waits(self.snapshot)
        return True

    def elapsed_time(self, end: SimEvent) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self.time is None or end.time is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        if end.snapshot is not None and any(ASYNC.host.get(s, 0) < t for s, t in end.snapshot.items()):
            raise RuntimeError("CUDA error: device not ready (elapsed_time before the end event completed: "
                               "synchronize it first)")
        return (end.time - self.time) * 1000.0


def _merge(into: dict[int, int], other: dict[int, int]) -> None:
    for key, value in other.items():
        if into.get(key, 0) < value:
            into[key] = value


def _device_index(device: Any) -> int:
    if device is None:
        return STATE.current
    if isinstance(device, int) and not isinstance(device, bool):
        return check_index(device)
    device = _RealDevice(device)
    return check_index(device.index) if device.type == "cuda" else STATE.current


# --- the per-run state ---------------------------------------------------------------------


@dataclass
class Written:
    stream: SimStream
    tick: int
    site: str
    what: str  # "written", "copied to the host (non_blocking)", ...


@dataclass
class Allocated:
    """A tensor allocated on a side stream: which other streams used it, until when."""

    stream: SimStream
    uses: dict[int, tuple[SimStream, int, str]] = field(default_factory=dict)  # stream id -> (stream, tick, site)
    recorded: set[int] = field(default_factory=set)  # record_stream() streams


@dataclass
class Freed:
    user: SimStream
    tick: int
    use_site: str
    free_site: str
    alloc: SimStream


class _Async:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.streams: weakref.WeakSet[SimStream] = weakref.WeakSet()
        self.defaults: dict[int, SimStream] = {}
        self.host: dict[int, int] = {}  # what the host knows has finished: stream id -> clock
        self.pending: dict[int, Written] = {}  # host storage -> its non-blocking D2H copy
        self.written: dict[int, Written] = {}  # device storage -> the last tracked write
        self.allocated: dict[int, Allocated] = {}  # device storage -> side-stream allocation
        self.freed: dict[int, list[Freed]] = {}  # allocating stream id -> frees it must wait for
        self.pinned: set[int] = set()  # host storages pinned
        self.side_current = 0  # threads inside a non-default stream
        self.threads = threading.local()
        self.watch = False

    def update_watch(self) -> None:
        """Whether ops must be looked at: the one flag the per-op path reads."""
        self.watch = bool(self.pending or self.written or self.allocated or self.freed or self.side_current)


ASYNC = _Async()


def default_stream(device: Any = None) -> SimStream:
    index = _device_index(device)
    stream = ASYNC.defaults.get(index)
    if stream is None:
        stream = ASYNC.defaults[index] = SimStream(index)
        stream.name = f"cuda:{index} default stream"
    return stream


def _current_streams() -> dict[int, SimStream]:
    current = getattr(ASYNC.threads, "current", None)
    if current is None:
        current = ASYNC.threads.current = {}
    return current


def _context_stack() -> list[SimStream]:
    stack = getattr(ASYNC.threads, "stack", None)
    if stack is None:
        stack = ASYNC.threads.stack = []
    return stack


def current_stream(device: Any = None) -> SimStream:
    index = _device_index(device)
    return _current_streams().get(index) or default_stream(index)


def set_stream(stream: Any) -> SimStream:
    """Make `stream` current on its device; the stream it replaces."""
    if not isinstance(stream, SimStream):
        raise TypeError(f"set_stream(): expected a simulated CUDA stream, got {type(stream).__name__}")
    previous = current_stream(stream.device_index)
    current = _current_streams()
    was_side = previous is not default_stream(stream.device_index)
    is_side = stream is not default_stream(stream.device_index)
    current[stream.device_index] = stream
    ASYNC.side_current += is_side - was_side
    ASYNC.update_watch()
    return previous


class StreamContext:
    """torch.cuda.stream(s): `s` current on its device inside; None changes nothing."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.previous: SimStream | None = None

    def __enter__(self) -> Any:
        if self.stream is not None:
            self.previous = set_stream(self.stream)
        return self.stream

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            set_stream(self.previous)


def synchronize_device(device: Any = None) -> None:
    """torch.cuda.synchronize: the host waits for every stream of the device."""
    index = _device_index(device)
    for stream in list(ASYNC.streams):
        if stream.device_index == index:
            host_waits(stream.snapshot())
    record("sync", 0, "synchronize")


def host_waits(snapshot: dict[int, int]) -> None:
    _merge(ASYNC.host, snapshot)
    for table in (ASYNC.pending, ASYNC.written):
        for key in [k for k, w in table.items() if ASYNC.host.get(w.stream.stream_id, 0) >= w.tick]:
            del table[key]
    ASYNC.update_watch()


def blocking_wait() -> None:
    """A blocking read or copy (item, tolist, .cpu(), a copy without non_blocking): the host
    waits for the current stream of each simulated device (state.record calls this)."""
    current = _current_streams()
    for index in list(ASYNC.defaults):
        stream = current.get(index) or ASYNC.defaults[index]
        _merge(ASYNC.host, stream.snapshot())
    if ASYNC.pending or ASYNC.written:
        host_waits({})


# --- storages --------------------------------------------------------------------------------


def _key(t: Tensor) -> int:
    inner = t._inner if type(t) is SimTensor else t
    with _no_tf():
        return inner.untyped_storage().data_ptr()


def _forget(table: dict | set, key: int) -> None:
    if isinstance(table, set):
        table.discard(key)
    else:
        table.pop(key, None)
    ASYNC.update_watch()


def _track(table: dict | set, t: Tensor, key: int) -> None:
    """Forget `key` when the tensor holding it dies (views keep their base alive)."""
    inner = t._inner if type(t) is SimTensor else t
    weakref.finalize(inner, _forget, table, key)


def mark_pinned(t: Tensor) -> Tensor:
    if t.numel():
        key = _key(t)
        ASYNC.pinned.add(key)
        _track(ASYNC.pinned, t, key)
    return t


def is_pinned(t: Tensor) -> bool:
    return type(t) is not SimTensor and t.numel() > 0 and _key(t) in ASYNC.pinned


# --- copies ----------------------------------------------------------------------------------


def _stream_name(stream: SimStream) -> str:
    return stream.name


def _race(message: str) -> StreamRace:
    return StreamRace(f"race: {message}")


def before_h2d(src: Tensor, target: int, op: str) -> None:
    """A host tensor read by a copy onto `target`'s current stream: a pending D2H into it
    must be ordered before (that stream waited for the copy's stream)."""
    if not ASYNC.pending or src.numel() == 0:
        return
    pending = ASYNC.pending.get(_key(src))
    stream = current_stream(target)
    if pending is not None and not stream.has_seen(pending.stream.stream_id, pending.tick):
        raise _race(f"a host tensor {pending.what} at {pending.site} on {pending.stream.name} is copied to "
                    f"the device at {call_site()} ({op}) on {stream.name} before that copy is known finished "
                    "(no synchronize, event or wait_stream between them): the copy reads stale host memory")


def copy_h2d(src: Tensor, nbytes: int, target: int, non_blocking: bool, op: str) -> bool:
    """Record a host-to-device copy; True when the host waits for it (a blocking copy, or a
    non-blocking one from pageable memory: a hidden sync, counted as one)."""
    before_h2d(src, target, op)
    if non_blocking and is_pinned(src):
        current_stream(target).tick()
        record("h2d", nbytes, op, waits=False)
        return False
    record("h2d", nbytes, op)
    if non_blocking and nbytes:
        record("sync", 0, f"{op}(non_blocking=True) from pageable memory")
    return True


def copy_d2h(out: Tensor, source: int, nbytes: int, non_blocking: bool, op: str, *, fresh: bool) -> None:
    """Record a device-to-host copy into `out`. Non-blocking: `fresh` output (`.to("cpu")`) is
    pinned and pending; into existing pinned memory pending too; into pageable memory the copy
    is synchronous."""
    if non_blocking and fresh:
        mark_pinned(out)
    if not (non_blocking and nbytes and is_pinned(out)):
        record("d2h", nbytes, op)
        return
    stream = current_stream(source)
    record("d2h", nbytes, op, waits=False)
    key = _key(out)
    ASYNC.pending[key] = Written(stream, stream.tick(), call_site(), f"copied from the GPU with {op}(non_blocking=True)")
    _track(ASYNC.pending, out, key)
    ASYNC.update_watch()


# --- the per-op check (only while ASYNC.watch) -------------------------------------------------


_METADATA = {
    Tensor.dim, Tensor.size, Tensor.stride, Tensor.numel, Tensor.is_contiguous, Tensor.element_size,
    Tensor.is_floating_point, Tensor.is_complex, Tensor.__len__, Tensor.data_ptr, Tensor.untyped_storage,
    Tensor.storage_offset, Tensor.ndimension, Tensor.nelement, Tensor.__hash__, Tensor.get_device,
    Tensor.is_pinned, Tensor.type, Tensor.requires_grad_, Tensor.record_stream, Tensor.pin_memory,
    Tensor.to, Tensor.cuda, Tensor.copy_,  # copies check their side themselves (copy_h2d / copy_d2h)
}


def _tensors(args: tuple, kwargs: Any) -> list[Tensor]:
    found: list[Tensor] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            found.append(a)
        elif type(a) in (list, tuple):
            found.extend(t for t in a if isinstance(t, Tensor))
    return found


def before_op(func: Any, args: tuple, kwargs: Any) -> SimStream | None:
    """Check an op's reads; the stream it is issued on (None: a host op)."""
    if func in _METADATA or getattr(func, "__name__", "") in ("__get__", "__set__"):
        return None
    tensors = _tensors(args, kwargs)
    device = next((t._dev for t in tensors if type(t) is SimTensor), -1)
    if device == -1:
        if ASYNC.pending:
            for t in tensors:
                host_read(t, getattr(func, "__name__", str(func)))
        return None
    stream = current_stream(device)
    check_freed(stream)
    for t in tensors:
        if type(t) is SimTensor:
            device_read(t, stream)
    return stream


def host_read(t: Tensor, op: str) -> None:
    if not ASYNC.pending or type(t) is SimTensor or t.numel() == 0:
        return
    pending = ASYNC.pending.get(_key(t))
    if pending is not None and ASYNC.host.get(pending.stream.stream_id, 0) < pending.tick:
        raise _race(f"host read ({op}) at {call_site()} of a tensor {pending.what} at {pending.site} on "
                    f"{pending.stream.name}, before the host synchronized with that stream (no "
                    "torch.cuda.synchronize(), stream or event synchronize between them): on a GPU it reads "
                    "stale or partly written data")


def device_read(t: SimTensor, stream: SimStream | None = None) -> None:
    """`t` used by work on `stream` (default: its device's current one)."""
    if not (ASYNC.written or ASYNC.allocated) or t._inner.numel() == 0:
        return
    stream = stream or current_stream(t._dev)
    key = _key(t)
    written = ASYNC.written.get(key)
    if written is not None and written.stream is not stream and not stream.has_seen(written.stream.stream_id, written.tick):
        raise _race(f"a tensor {written.what} at {written.site} on {written.stream.name} is read at {call_site()} "
                    f"on {stream.name} with no wait between them (wait_stream / wait_event / synchronize): "
                    "on a GPU it reads stale or partly written data")
    allocated = ASYNC.allocated.get(key)
    if allocated is not None and allocated.stream is not stream:
        allocated.uses[stream.stream_id] = (stream, stream.tick(), call_site())


def after_op(stream: SimStream, out: Any, args: tuple) -> None:
    """Work issued on a side stream: its outputs are written there (and allocated there when new)."""
    if stream is ASYNC.defaults.get(stream.device_index):
        return
    outs = [out] if isinstance(out, Tensor) else [o for o in out if isinstance(o, Tensor)] \
        if type(out) in (list, tuple) else []
    if not outs:
        return
    site = call_site()
    tick = stream.tick()
    inputs = {id(a) for a in args if isinstance(a, Tensor)}
    for o in outs:
        if type(o) is not SimTensor or o._inner.numel() == 0:
            continue
        key = _key(o)
        ASYNC.written[key] = Written(stream, tick, site, "written")
        if id(o) not in inputs and key not in ASYNC.allocated:
            ASYNC.allocated[key] = Allocated(stream)
            weakref.finalize(o._inner, _freed, key)
    ASYNC.update_watch()


def written_by_copy(t: SimTensor, what: str, fresh: bool) -> None:
    """A copy onto the device issued on a side stream (non-blocking or not, it runs there):
    into a `fresh` tensor (allocated there) or an existing one."""
    stream = current_stream(t._dev)
    check_freed(stream)
    if stream is not ASYNC.defaults.get(t._dev) and t._inner.numel():
        after_op(stream, t, () if fresh else (t,))
        ASYNC.written[_key(t)].what = what


def record_stream(t: SimTensor, stream: Any) -> None:
    if not isinstance(stream, SimStream):
        raise TypeError(f"record_stream(): argument 'stream' must be Stream, not {type(stream).__name__}")
    allocated = ASYNC.allocated.get(_key(t)) if t._inner.numel() else None
    if allocated is not None:
        allocated.recorded.add(stream.stream_id)


def _freed(key: int) -> None:
    allocated = ASYNC.allocated.pop(key, None)
    ASYNC.written.pop(key, None)
    if allocated is not None and STATE.active:
        free_site = call_site()
        for stream_id, (user, tick, use_site) in allocated.uses.items():
            if stream_id not in allocated.recorded and not allocated.stream.has_seen(stream_id, tick):
                ASYNC.freed.setdefault(allocated.stream.stream_id, []).append(
                    Freed(user, tick, use_site, free_site, allocated.stream))
    ASYNC.update_watch()


def check_freed(stream: SimStream) -> None:
    """Work issued on `stream` may reuse memory freed back to it: each such free must have
    been waited for (or record_stream'd)."""
    frees = ASYNC.freed.get(stream.stream_id)
    if not frees:
        return
    for freed in frees:
        if not stream.has_seen(freed.user.stream_id, freed.tick):
            del ASYNC.freed[stream.stream_id]
            ASYNC.update_watch()
            raise _race(f"a tensor allocated on {freed.alloc.name}, used on {freed.user.name} at {freed.use_site}, "
                        f"was freed at {freed.free_site} without record_stream({freed.user.name}), and "
                        f"{stream.name} issued work at {call_site()} before waiting for that use: the caching "
                        "allocator hands the memory out again while the other stream may still read it")
    del ASYNC.freed[stream.stream_id]
    ASYNC.update_watch()


class fresh_run:
    """A context: the streams, events and marks of one simulated run, forgotten after it."""

    def __enter__(self) -> None:
        ASYNC.reset()
        state.on_host_wait = blocking_wait

    def __exit__(self, *exc: Any) -> None:
        state.on_host_wait = None
        ASYNC.reset()
