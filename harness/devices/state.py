"""Process-wide state of a simulated-GPU run, and the one place events reach the ledger.

Kept apart from the tensor and mode code so every layer records through `record()` and the
call site is computed only when an event is recorded, never on the per-op path.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from types import FrameType

import torch

from harness.devices.errors import is_kernel_gap
from harness.ledger import Kind, Ledger


@dataclass
class SimState:
    active: bool = False
    count: int = 0  # simulated GPUs: cuda:0 .. cuda:count-1
    current: int = 0  # torch.cuda.current_device()
    ledger: Ledger | None = None
    kernel_gaps: list[str] = field(default_factory=list)  # "op: message" of CPU kernels missing


STATE = SimState()


def record(kind: Kind, nbytes: int, op: str) -> None:
    ledger = STATE.ledger
    if ledger is not None:
        ledger.record(kind, nbytes, op, call_site())


def note_if_kernel_gap(func: object, exc: BaseException) -> None:
    """Keep a note when a CPU kernel is missing (a GPU-only path ran); the error propagates."""
    if is_kernel_gap(exc):
        op = getattr(func, "__name__", None) or str(func)
        note = f"{op}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        if note not in STATE.kernel_gaps:
            STATE.kernel_gaps.append(note)


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
