"""`track_transfers(ledger)`: count host/device copies and host syncs on plain CPU or real CUDA.

verified on GPU: no (the real-CUDA path is written against torch's documented profiler and
sync-debug APIs; only its event parsing is unit-tested, with fake events).

- Inside `simulated_gpus()`: the simulation records already; this only points it at `ledger`.
- Plain CPU: nothing is a transfer. The host reads that would be syncs on a GPU (`item`,
  `tolist`, `bool()`, `nonzero`) are counted as `sync`, through Python wrappers on those
  few methods only, so the cost is paid per host read, not per op.
- Real CUDA: `torch.profiler` memcpy events give the copies and their bytes ("Memcpy HtoD",
  "Memcpy DtoH", "Memcpy DtoD"/"PtoP"); `torch.cuda.set_sync_debug_mode("warn")` warnings
  give the syncs, with their call site; hooks on `Tensor.to`, `.cuda`, `.cpu` and `.copy_`
  remember the call site of each copy, matched in order to the profiler's events of the
  same kind and phase. Copies are only known afterwards, so while tracked every ledger call
  (phase change, decode step, sync) is marked on the profiler timeline, and the calls and
  the copies are replayed in time order into the ledger at the end: a copy counts in the
  phase and step that launched it (its host-side runtime call, linked by correlation id).
  The counts follow the simulator's rules, so one profile holds on both: an explicit copy
  (`.to`, `.cpu`, `.copy_`) is a copy and its own blocking wait is no extra sync; a host
  read (`item`, `tolist`, `bool()`, an op that reads a size back) is one sync, and the small
  copy it makes inside is part of it, not a D2H. `samedevice doctor --selftest` checks this
  on the GPU it runs on.
- Hidden stalls, the simulator's rule (sim_streams.copy_h2d): a host-to-device copy issued
  with non_blocking=True from pageable (unpinned) memory is a copy *and* a sync, op
  "<op>(non_blocking=True) from pageable memory", at the copy's call site; from pinned memory
  it is a copy only, and a blocking copy is a copy only whatever its memory (its wait is the
  copy's own). The memory kind comes from the profiler event's name ("Memcpy HtoD (Pageable
  -> Device)" vs "(Pinned -> Device)"); non_blocking, which the event does not carry, from
  the copy hook matched to it (a copy no hook saw counts as blocking).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from harness.devices.ledger import Ledger
from harness.devices.state import STATE, call_site

# Kineto names a memcpy "Memcpy <kind> (<source memory> -> <target memory>)".
_MEMCPY = re.compile(r"Memcpy (HtoD|DtoH|DtoD|PtoP)(?: \((\w+) ->)?")
_MEMCPY_KIND = {"HtoD": "h2d", "DtoH": "d2h", "DtoD": "d2d", "PtoP": "d2d"}
MARK = "samedevice::ledger::"


@contextmanager
def track_transfers(ledger: Ledger) -> Iterator[Ledger]:
    if STATE.active:
        previous, STATE.ledger = STATE.ledger, ledger
        try:
            yield ledger
        finally:
            STATE.ledger = previous
    elif torch.cuda.is_available():
        with _track_cuda(ledger):
            yield ledger
    else:
        with _track_host_reads(ledger):
            yield ledger


# --- plain CPU ------------------------------------------------------------------------------

_HOST_READS = ("item", "tolist", "__bool__", "nonzero")
_COPY_METHODS = ("to", "cuda", "cpu", "copy_")
# Host reads of a CUDA tensor, counted as one sync each (the simulator's rule, sim_methods).
_CUDA_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__format__")


@contextmanager
def _track_host_reads(ledger: Ledger) -> Iterator[None]:
    originals = {name: torch.Tensor.__dict__.get(name) for name in _HOST_READS}

    def counted(name: str, method: Any) -> Any:
        def read(self, *args, **kwargs):
            ledger.record("sync", 0, name, call_site())
            return method(self, *args, **kwargs)

        return read

    for name in _HOST_READS:
        setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    try:
        yield
    finally:
        _restore(torch.Tensor, originals)


# --- real CUDA --------------------------------------------------------------------------------


Copy = tuple  # (kind, bytes, start in us, pageable): pageable is True for a HtoD from pageable memory


def memcpy_events(events: Iterable[Any]) -> list[Copy]:
    """The memcpy events in profiler `events` as `Copy`s: Kineto events (`name()`,
    `nbytes()`, `start_ns()`) or FunctionEvents (`name`, `time_range.start`). The start is
    the launch on the host where the event links to its runtime call (a correlation id), so
    an asynchronous copy counts in the step that issued it."""
    events = list(events)
    launches = {}
    for event in events:
        name = _name(event)
        correlation = _correlation(event)
        if correlation is not None and name.startswith("cuda") and "Memcpy" in name:
            launches[correlation] = _event_start_us(event)
    found = []
    for event in events:
        match = _MEMCPY.search(_name(event))
        if not match:
            continue
        correlation = _correlation(event)
        start = launches.get(correlation, _event_start_us(event)) if correlation is not None else _event_start_us(event)
        pageable = match.group(1) == "HtoD" and match.group(2) == "Pageable"
        found.append((_MEMCPY_KIND[match.group(1)], _event_bytes(event), start, pageable))
    return found


# Ops that read a value or a size back to the host (a sync, as the simulator counts them:
# its data_dependent_output rule); a small copy they make inside is part of that sync.
_READ_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::nonzero",
             "aten::masked_select", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim",
             "aten::repeat_interleave", "aten::bincount")


def host_read_spans(events: Iterable[Any]) -> list[tuple[float, float]]:
    """(start, end) in us of the ops that read back to the host the profiler saw (a C++
    `item()` inside an op, which no Python hook sees): the copy each makes is its sync's."""
    found = []
    for event in events:
        if _name(event) in _READ_OPS:
            start = _event_start_us(event)
            duration = getattr(event, "duration_ns", None)
            found.append((start, start + (duration() / 1000.0 if callable(duration) else 0.0)))
    return found


def timeline_marks(events: Iterable[Any]) -> list[tuple[float, int]]:
    """(start in us, index) of the ledger calls `_Timeline` put on the profiler timeline."""
    marks = []
    for event in events:
        name = _name(event)
        if name.startswith(MARK):
            marks.append((_event_start_us(event), int(name[len(MARK):])))
    return sorted(marks)


def _name(event: Any) -> str:
    return (event.name() if callable(getattr(event, "name", None)) else getattr(event, "name", "")) or ""


def _correlation(event: Any) -> int | None:
    value = getattr(event, "correlation_id", None)
    value = value() if callable(value) else value
    return int(value) if value else None


def _event_bytes(event: Any) -> int:
    nbytes = getattr(event, "nbytes", None)
    value = nbytes() if callable(nbytes) else nbytes
    if value:
        return int(value)
    metadata = getattr(event, "metadata_json", None)
    text = metadata() if callable(metadata) else metadata
    if text:
        try:
            return int(json.loads("{" + text + "}" if not text.lstrip().startswith("{") else text).get("bytes", 0))
        except (ValueError, AttributeError):
            found = re.search(r'"bytes"\s*:\s*(\d+)', text)
            return int(found.group(1)) if found else 0
    return 0


def _event_start_us(event: Any) -> float:
    start_ns = getattr(event, "start_ns", None)
    if callable(start_ns):
        return start_ns() / 1000.0
    time_range = getattr(event, "time_range", None)
    return float(time_range.start) if time_range is not None else 0.0


Call = tuple  # ("phase", name) | ("step",) | ("move", phase) | ("record", kind, nbytes, op, site)


class _Timeline(Ledger):
    """The ledger, while tracked on CUDA. Copies are only known from the profiler's events
    afterwards, so every ledger call (phase changes, steps, live sync records) is kept in
    `calls` and marked on the profiler timeline; `replay` then applies calls and copies in
    time order. Installed by swapping the instance's class for the duration."""

    calls: list[Call]

    def _mark(self, call: Call) -> None:
        self.calls.append(call)
        with torch.profiler.record_function(MARK + str(len(self.calls) - 1)):
            pass

    def set_phase(self, phase: Any) -> None:
        self._mark(("phase", phase))
        object.__setattr__(self, "phase", phase)  # read live by the phase tracker and the site hooks

    def end_step(self) -> None:
        self._mark(("step",))

    def move_step(self, phase: str) -> None:
        self._mark(("move", phase))

    def record(self, kind: Any, nbytes: int = 0, op: str = "", site: str = "") -> None:
        self._mark(("record", kind, nbytes, op, site))

    def mark_read(self, begins: bool) -> None:
        """A host read begins or ends: copies launched inside it are part of its sync."""
        self._mark(("read", begins))


def replay(ledger: Ledger, first_phase: Any, calls: list[Call], marks: list[tuple[float, int]],
           copies: list[Copy], sites: dict[tuple[str, str], deque],
           host_reads: Sequence[tuple[float, float]] = ()) -> None:
    """Apply the ledger calls and the profiler's copies to `ledger`, in time order (a call
    before a copy at the same instant). Each copy gets the call site the hooks saw for the
    same (phase, kind), in order ('?' when none did); a pageable HtoD copy whose hook saw
    non_blocking=True is also a sync (the module's rule). A copy launched inside a host read
    (between its read marks, or inside an `aten::_local_scalar_dense` the profiler saw) is
    part of that read's sync, as the simulator counts it, not a D2H."""
    ledger.phase = first_phase
    reading = 0
    copies = [c for c in copies if not any(start <= c[2] <= end for start, end in host_reads)]
    if calls and not marks:  # no marker reached the profiler: the calls in order, then the copies
        marks = [(float("-inf"), index) for index in range(len(calls))]
    timeline: list[tuple[float, int, tuple[Any, ...]]] = [(start, 0, ("call", index)) for start, index in marks]
    timeline += [(start, 1, ("copy", kind, nbytes, pageable)) for kind, nbytes, start, pageable in copies]
    for _, _, item in sorted(timeline, key=lambda row: (row[0], row[1])):
        if item[0] == "copy":
            if reading:
                continue
            queue = sites.get((str(ledger.phase), str(item[1])))
            op, site, non_blocking = queue.popleft() if queue else ("memcpy", "?", False)
            ledger.record(item[1], item[2], op, site)
            if item[3] and non_blocking:
                ledger.record("sync", 0, f"{op}(non_blocking=True) from pageable memory", site)
            continue
        call = calls[item[1]]
        if call[0] == "read":
            reading += 1 if call[1] else -1
        elif call[0] == "phase":
            ledger.set_phase(call[1])
        elif call[0] == "step":
            ledger.end_step()
        elif call[0] == "move":
            ledger.move_step(call[1])
        else:
            ledger.record(*call[1:])


def _copy_kind(source: torch.device, target: torch.device) -> str | None:
    if source.type == "cuda" and target.type == "cuda":
        return "d2d" if source != target else None
    if source.type == "cuda":
        return "d2h"
    if target.type == "cuda":
        return "h2d"
    return None


def _cuda_device(device: Any) -> torch.device:
    """`device` with the current index filled in ('cuda' means the current GPU)."""
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class _Sections:
    """Where the host is now, for the sync-debug warnings: inside an explicit copy (its own
    blocking wait is the copy, not a further sync) or a host read (counted once, as one
    sync, however many waits and small copies it makes)."""

    def __init__(self) -> None:
        self.depth = 0


def _copy_hook(name: str, method: Any, remember: Any, sections: _Sections | None = None) -> Any:
    """`Tensor.<name>` that notes the call site of the copy it is about to make, and whether
    it was asked non_blocking."""

    def target(self: Tensor, *args: Any, **kwargs: Any) -> tuple[torch.device, torch.device, bool]:
        if name == "copy_":  # copy_(src, non_blocking=False)
            return args[0].device, self.device, bool(args[1] if len(args) > 1 else kwargs.get("non_blocking"))
        if name == "cpu":
            return self.device, torch.device("cpu"), False
        if name == "cuda":  # cuda(device=None, non_blocking=False, ...)
            device = args[0] if args else kwargs.get("device")
            non_blocking = bool(args[1] if len(args) > 1 else kwargs.get("non_blocking"))
            return self.device, _cuda_device("cuda" if device is None else device), non_blocking
        device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        return self.device, self.device if device is None else _cuda_device(device), bool(non_blocking)

    def hooked(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(Exception):  # a bad argument: the real method raises its own error
            source, destination, non_blocking = target(self, *args, **kwargs)
            remember(_copy_kind(source, destination), name, non_blocking)
        if sections is None:
            return method(self, *args, **kwargs)
        sections.depth += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            sections.depth -= 1

    return hooked


def _read_hook(name: str, method: Any, ledger: Ledger, sections: _Sections) -> Any:
    """`Tensor.<name>` (item, tolist, bool()...) on a CUDA tensor: one host sync, as the
    simulator counts it, and the small copy it makes to the host is part of it, not a D2H."""

    def hooked(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self.is_cuda or sections.depth:
            return method(self, *args, **kwargs)
        ledger.record("sync", 0, name, call_site())
        ledger.mark_read(True)  # type: ignore[attr-defined]
        sections.depth += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            sections.depth -= 1
            ledger.mark_read(False)  # type: ignore[attr-defined]

    return hooked


@contextmanager
def _track_cuda(ledger: Ledger) -> Iterator[None]:
    first_phase = ledger.phase
    sites: dict[tuple[str, str], deque] = defaultdict(deque)

    def remember(kind: str | None, op: str, non_blocking: bool) -> None:
        if kind:
            sites[(ledger.phase, kind)].append((op, call_site(), non_blocking))

    sections = _Sections()

    def on_warning(message, category, filename, lineno, file=None, line=None):
        if "synchronizing" not in str(message):
            show_other(message, category, filename, lineno, file, line)
        elif not sections.depth:  # a copy's own wait is the copy; a host read counted itself
            ledger.record("sync", 0, "cuda sync", call_site())

    originals = {name: torch.Tensor.__dict__.get(name) for name in (*_COPY_METHODS, *_CUDA_READS)}
    previous_mode = torch.cuda.get_sync_debug_mode()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    calls: list[Call] = []
    try:
        for name in _COPY_METHODS:
            setattr(torch.Tensor, name, _copy_hook(name, getattr(torch.Tensor, name), remember, sections))
        for name in _CUDA_READS:
            setattr(torch.Tensor, name, _read_hook(name, getattr(torch.Tensor, name), ledger, sections))
        with warnings.catch_warnings(), torch.profiler.profile(activities=activities) as profiler:
            ledger.__class__ = _Timeline
            ledger.calls = calls  # type: ignore[attr-defined]
            warnings.filterwarnings("always", message=".*synchronizing", category=UserWarning)
            show_other, warnings.showwarning = warnings.showwarning, on_warning
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(previous_mode)
                torch.cuda.synchronize()
                ledger.__class__ = Ledger
                del ledger.calls  # type: ignore[attr-defined]
    finally:
        ledger.__class__ = Ledger
        _restore(torch.Tensor, originals)
    events = list(profiler.profiler.kineto_results.events()) if profiler.profiler else []
    replay(ledger, first_phase, calls, timeline_marks(events), memcpy_events(events), sites, host_read_spans(events))


def _restore(owner: Any, originals: dict[str, Any]) -> None:
    for name, original in originals.items():
        if original is None:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
