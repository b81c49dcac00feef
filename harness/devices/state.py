"""Process-wide state of a simulated-GPU run, and the one place events reach the ledger.

Kept apart from the tensor and mode code so every layer records through `record()` and the
call site is computed only when an event is recorded, never on the per-op path.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch

from harness.devices.errors import is_kernel_gap
from harness.devices.ledger import Kind, Ledger


@dataclass
class SimState:
    active: bool = False
    count: int = 0  # simulated GPUs: cuda:0 .. cuda:count-1
    ledger: Ledger | None = None
    kernel_gaps: list[str] = field(default_factory=list)  # "op: message at site" of CPU kernels missing
    stand_ins: list[str] = field(default_factory=list)  # "op: what was computed instead at site"
    not_exercised: list[str] = field(default_factory=list)  # "torch.compile called at site": answered, not run
    run: int = 0  # which simulated run this is: threads started in an earlier one stay out of later ones
    _threads: threading.local = field(default_factory=threading.local)

    @property
    def current(self) -> int:
        """torch.cuda.current_device(): per thread, as CUDA's (a new thread starts on device 0)."""
        return getattr(self._threads, "current", 0)

    @current.setter
    def current(self, index: int) -> None:
        self._threads.current = index


STATE = SimState()
_RECORD_LOCK = threading.Lock()


# Set by sim_streams while simulated: a blocking copy or host read orders the host after the
# current streams' work (a non-blocking copy passes waits=False).
on_host_wait: Callable[[], None] | None = None


def record(kind: Kind, nbytes: int, op: str, waits: bool = True) -> None:
    if waits and kind != "d2d" and on_host_wait is not None:
        on_host_wait()
    ledger = STATE.ledger
    # A copy of no element moves nothing: libtorch's copy_ returns before any memcpy, so a
    # real GPU shows none (e.g. transformers' `torch.tensor([], device=...)` cache init).
    if ledger is not None and (nbytes or kind == "sync"):
        site = call_site()
        with _RECORD_LOCK:  # threads started inside the simulation record too
            ledger.record(kind, nbytes, op, site)


# The exceptions the simulator saw a torch op raise for a kernel the CPU build lacks:
# id -> (message, note). Only these (and errors raised from them) are kernel gaps. Ids, not
# the exceptions (their tracebacks would keep model tensors alive); the message guards
# against an id reused by another exception. The newest few are kept.
_GAP_ERRORS: dict[int, tuple[str, str]] = {}
_GAP_ERRORS_KEPT = 64


def note_if_kernel_gap(func: object, exc: BaseException) -> None:
    """A torch op on simulated tensors raised: if the CPU lacks its kernel (a GPU-only path
    ran) while CUDA has one, remember this exception as a kernel gap, with the op and the
    user's call site. The error propagates either way."""
    if not is_kernel_gap(exc) or not has_cuda_kernel(func):
        return
    op = getattr(func, "__name__", None) or str(func)
    note = f"{op}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__} at {call_site()}"
    _GAP_ERRORS[id(exc)] = (str(exc), note)
    while len(_GAP_ERRORS) > _GAP_ERRORS_KEPT:
        del _GAP_ERRORS[next(iter(_GAP_ERRORS))]
    if note not in STATE.kernel_gaps:
        STATE.kernel_gaps.append(note)


def _histc_in_float(func: Any, inner: Sequence[Any], kwargs: dict) -> tuple[Any, str] | None:
    """CUDA's histc takes integer input (transformers' MoE routing counts tokens per expert with
    it on GPUs); the CPU kernel is float-only. Counting in float32 is exact below 2**24."""
    first = inner[0]
    if first.is_floating_point():
        return None
    return func(first.float(), *inner[1:], **kwargs).to(first.dtype), f"the CPU has no {first.dtype} kernel; counted in float32 (exact)"


def _mm_with_out_dtype(func: Any, inner: Sequence[Any], kwargs: dict) -> tuple[Any, str] | None:
    """`mm(a, b, out_dtype=...)` (aten::mm.dtype) has only a CUDA kernel: the inputs in the output
    dtype, multiplied on the CPU (a 16-bit input's products are exact in float32, as on the GPU)."""
    if len(inner) < 2:
        return None
    out_dtype = kwargs.get("out_dtype", inner[2] if len(inner) > 2 else None)
    if not isinstance(out_dtype, torch.dtype):
        return None
    a, b = inner[0].to(out_dtype), inner[1].to(out_dtype)
    return torch.ops.aten.mm.default(a, b), f"the CPU has no mm with out_dtype; computed in {out_dtype}"


# GPU kernels the CPU build lacks, computed another way with the GPU's result: op name ->
# recipe, (result, how it was computed) or None where it does not apply. Each use is noted
# for the case ("stand_ins: ..."), never silent; any other gap stays a kernel gap.
CPU_STAND_INS: dict[str, Callable[[Any, Sequence[Any], dict], tuple[Any, str] | None]] = {
    "histc": _histc_in_float, "mm": _mm_with_out_dtype}
NO_STAND_IN = object()


def stand_in(func: object, inner: Sequence[Any], kwargs: dict | None, exc: BaseException) -> object:
    """The op's result computed by its CPU stand-in, when `exc` is a kernel gap that has one;
    else NO_STAND_IN (the kernel gap noted as usual) and the caller re-raises."""
    name = (getattr(func, "__name__", "") or "").split(".")[0].lstrip("_")
    recipe = CPU_STAND_INS.get(name)
    answer = None
    if (recipe is not None and inner and isinstance(inner[0], torch.Tensor) and is_kernel_gap(exc)
            and has_cuda_kernel(func)):
        answer = recipe(func, inner, kwargs or {})
    if answer is None:
        note_if_kernel_gap(func, exc)
        return NO_STAND_IN
    out, how = answer
    note = f"{name}: {how} at {call_site()}"
    if note not in STATE.stand_ins:
        STATE.stand_ins.append(note)
    return out


def has_cuda_kernel(func: object) -> bool:
    """False only when native_functions.yaml says the aten op has no CUDA kernel and is no
    composite (then it fails on a real GPU too: not a gap). Python-level functions map to
    their aten op by name; unknown ops count as having one."""
    from harness.devices.errors import has_cuda_kernel as in_libtorch

    op = func if isinstance(func, torch._ops.OpOverload) else None
    if op is None:
        packet = getattr(torch.ops.aten, getattr(func, "__name__", "").lstrip("_") or "?", None)
        op = getattr(packet, "default", None) if packet is not None else None
    return True if op is None else in_libtorch(op)


def kernel_gap_of(exc: BaseException) -> str | None:
    """The simulator's note when `exc`, or an exception it was raised from, is a kernel gap."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        known = _GAP_ERRORS.get(id(current))
        if known is not None and known[0] == str(current):
            return known[1]
        current = current.__cause__ or current.__context__
    return None


# --- call sites ---------------------------------------------------------------------------

def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path)) + os.sep


_TORCH_DIR = _norm(os.path.dirname(torch.__file__))
_DEVICES_DIR = _norm(os.path.dirname(__file__))
_STDLIB_DIR = _norm(sysconfig.get_paths()["stdlib"])
# site-packages usually lives inside the stdlib folder: it is user code here, not stdlib.
_SITE_DIRS = tuple({_norm(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")})
_internal_cache: dict[str, bool] = {}
_short_cache: dict[str, str] = {}


def is_internal(filename: str) -> bool:
    """True for torch, harness/devices, the stdlib and frozen modules: not user code."""
    if filename.startswith("<frozen"):
        return True
    if filename.startswith("<"):
        return False  # exec'd / interactive user code
    path = os.path.normcase(os.path.realpath(filename))
    if path.startswith((_TORCH_DIR, _DEVICES_DIR)):
        return True
    return path.startswith(_STDLIB_DIR) and not path.startswith(_SITE_DIRS)


def short_path(filename: str) -> str:
    """Relative to the working directory or to a sys.path entry, whichever is shorter."""
    short = _short_cache.get(filename)
    if short is None:
        candidates = [filename]
        with contextlib.suppress(ValueError):  # another drive, on Windows
            candidates.append(os.path.relpath(filename))
        for base in sys.path:
            base = base.rstrip(os.sep)
            if base and filename.startswith(base + os.sep):
                candidates.append(filename[len(base) + 1 :])
        short = _short_cache[filename] = min(candidates, key=len)
    return short


def call_site() -> str:
    """'file.py:LINE' of the innermost frame outside torch, harness/devices and the stdlib."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        internal = _internal_cache.get(filename)
        if internal is None:
            internal = _internal_cache[filename] = is_internal(filename)
        if not internal:
            return f"{short_path(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"
