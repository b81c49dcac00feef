"""`track_transfers(ledger)`: count host/device copies and host syncs on plain CPU or real CUDA.

verified on GPU: no (the real-CUDA path is written against torch's documented profiler and
sync-debug APIs; only its event parsing is unit-tested, with fake events).

- Inside `simulated_gpus()`: the simulation records already; this only points it at `ledger`.
- Plain CPU: nothing is a transfer. The host reads that would be syncs on a GPU (`item`,
  `tolist`, `bool()`, `nonzero`) are counted as `sync`, through Python wrappers on those
  few methods only, so the cost is paid per host read, not per op.
- Real CUDA: `torch.profiler` memcpy events give the copies and their bytes ("Memcpy HtoD",
  "Memcpy DtoH", "Memcpy DtoD"/"PtoP"); `torch.cuda.set_sync_debug_mode("warn")` warnings
  give the syncs, recorded with their call site as they happen; hooks on `Tensor.to`,
  `.cuda`, `.cpu` and `.copy_` remember the call site of each copy, matched in order to the
  profiler's events of the same kind and phase. The phase of a profiler event is the
  ledger's phase at its start time (phase changes are marked on the profiler timeline).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from harness.devices.state import STATE, call_site
from harness.ledger import Ledger

_MEMCPY = re.compile(r"Memcpy (HtoD|DtoH|DtoD|PtoP)")
_MEMCPY_KIND = {"HtoD": "h2d", "DtoH": "d2h", "DtoD": "d2d", "PtoP": "d2d"}
PHASE_MARK = "samedevice::phase::"


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


def memcpy_events(events: Iterable[Any]) -> list[tuple[Any, int, float]]:
    """(kind, bytes, start in us) of the memcpy events in profiler `events`: Kineto events
    (`name()`, `nbytes()`, `start_ns()`) or FunctionEvents (`name`, `time_range.start`)."""
    found = []
    for event in events:
        name = event.name() if callable(getattr(event, "name", None)) else getattr(event, "name", "")
        match = _MEMCPY.search(name or "")
        if not match:
            continue
        found.append((_MEMCPY_KIND[match.group(1)], _event_bytes(event), _event_start_us(event)))
    return found


def phase_marks(events: Iterable[Any]) -> list[tuple[float, str]]:
    """(start in us, phase) of the phase markers `_PhaseClock` put on the profiler timeline."""
    marks = []
    for event in events:
        name = event.name() if callable(getattr(event, "name", None)) else getattr(event, "name", "")
        if name and name.startswith(PHASE_MARK):
            marks.append((_event_start_us(event), name[len(PHASE_MARK):]))
    return sorted(marks)


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


def phase_at(marks: list[tuple[float, str]], start_us: float, default: str) -> Any:
    phase = default
    for mark_us, mark_phase in marks:
        if mark_us > start_us:
            break
        phase = mark_phase
    return phase


def record_memcpys(ledger: Ledger, copies: list[tuple[Any, int, float]], marks: list[tuple[float, str]],
                   first_phase: str, sites: dict[tuple[str, str], deque]) -> None:
    """Record profiler copies into `ledger`, each in its phase, with the call site the hooks
    saw for the same (phase, kind) in the same order ('?' when none did)."""
    saved_phase = ledger.phase
    try:
        for kind, nbytes, start in sorted(copies, key=lambda c: c[2]):
            ledger.phase = phase_at(marks, start, first_phase)
            queue = sites.get((ledger.phase, kind))
            op, site = queue.popleft() if queue else ("memcpy", "?")
            ledger.record(kind, nbytes, op, site)
    finally:
        ledger.phase = saved_phase


class _PhaseClock(Ledger):
    """The ledger, while tracked on CUDA: a phase change drops a marker on the profiler
    timeline, so copies found afterwards are booked to the phase they happened in. Installed
    by swapping the instance's class for the duration, so the Ledger type stays untouched."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "phase" and value != self.__dict__.get("phase"):
            with torch.profiler.record_function(PHASE_MARK + str(value)):
                pass
        object.__setattr__(self, name, value)


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


def _copy_hook(name: str, method: Any, remember: Any) -> Any:
    """`Tensor.<name>` that notes the call site of the copy it is about to make."""

    def target(self: Tensor, *args: Any, **kwargs: Any) -> tuple[torch.device, torch.device]:
        if name == "copy_":
            return args[0].device, self.device
        if name == "cpu":
            return self.device, torch.device("cpu")
        if name == "cuda":
            device = args[0] if args else kwargs.get("device")
            return self.device, _cuda_device("cuda" if device is None else device)
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        return self.device, self.device if device is None else _cuda_device(device)

    def hooked(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(Exception):  # a bad argument: the real method raises its own error
            remember(_copy_kind(*target(self, *args, **kwargs)), name)
        return method(self, *args, **kwargs)

    return hooked


@contextmanager
def _track_cuda(ledger: Ledger) -> Iterator[None]:
    first_phase = ledger.phase
    sites: dict[tuple[str, str], deque] = defaultdict(deque)

    def remember(kind: str | None, op: str) -> None:
        if kind:
            sites[(ledger.phase, kind)].append((op, call_site()))

    def on_warning(message, category, filename, lineno, file=None, line=None):
        if "synchronizing" in str(message):
            ledger.record("sync", 0, "cuda sync", call_site())
        else:
            show_other(message, category, filename, lineno, file, line)

    originals = {name: torch.Tensor.__dict__.get(name) for name in _COPY_METHODS}
    previous_mode = torch.cuda.get_sync_debug_mode()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ledger.__class__ = _PhaseClock
    try:
        for name in _COPY_METHODS:
            setattr(torch.Tensor, name, _copy_hook(name, getattr(torch.Tensor, name), remember))
        with warnings.catch_warnings(), torch.profiler.profile(activities=activities) as profiler:
            warnings.filterwarnings("always", message=".*synchronizing", category=UserWarning)
            show_other, warnings.showwarning = warnings.showwarning, on_warning
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(previous_mode)
                torch.cuda.synchronize()
    finally:
        ledger.__class__ = Ledger
        _restore(torch.Tensor, originals)
    events = profiler.profiler.kineto_results.events() if profiler.profiler else []
    record_memcpys(ledger, memcpy_events(events), phase_marks(events), first_phase, sites)


def _restore(owner: Any, originals: dict[str, Any]) -> None:
    for name, original in originals.items():
        if original is None:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
