"""Describe an exception raised by a case: device mismatch or not, the op, the devices,
and the line of user code (the innermost frame outside torch and the harness)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import sysconfig
import traceback
from dataclasses import asdict, dataclass, field

import torch

_MISMATCH = re.compile(
    r"(?i:expected all tensors to be on the same device)"
    r"|(?i:expected \w+ and \w+ to be on the same device)"
    r"|device mismatch|DeviceMismatch"
    r"|Expected .* to be on .*device"
    r"|Expected a '\w+' device type for generator"
    r"|is on \w+(:\d+)?, different from other tensors"
)
_OP = re.compile(r"in method wrapper_(?:CUDA_|CPU_)?_*(\w+?)\)|device mismatch in (\w+)|for argument \w+ in method (\w+)")
_DEVICES = re.compile(r"\b(cuda:\d+|cpu|Cpu|Cuda \{ gpu_id: \d+ \}|meta)\b")
_KERNEL_GAP = re.compile(r"not implemented for '\w+'|NotImplementedError|Could not run '[\w:.]+' with arguments from the '\w+' backend")

_SKIP_DIRS = tuple(
    os.path.normcase(os.path.realpath(d)) + os.sep
    for d in (
        os.path.dirname(torch.__file__),
        os.path.dirname(__file__),  # the harness itself
        sysconfig.get_paths()["stdlib"],
    )
)


@dataclass
class ErrorInfo:
    type: str
    message: str
    mismatch: bool = False
    kernel_gap: bool = False
    op: str | None = None
    devices: list[str] = field(default_factory=list)
    site: str | None = None  # file:line of user code
    source: str | None = None  # that line's text

    def to_json(self) -> dict:
        return asdict(self)

    def one_line(self) -> str:
        where = f" at {self.site}" if self.site else ""
        op = f" [op {self.op}]" if self.op else ""
        first = self.message.strip().splitlines()[0] if self.message.strip() else self.type
        return f"{self.type}{op}{where}: {first}"


def describe(exc: BaseException) -> ErrorInfo:
    message = str(exc)
    info = ErrorInfo(type=type(exc).__name__, message=message[:2000])
    info.mismatch = bool(_MISMATCH.search(message))
    info.kernel_gap = not info.mismatch and bool(_KERNEL_GAP.search(f"{info.type}: {message}"))
    op = _OP.search(message)
    if op:
        info.op = next(g for g in op.groups() if g)
    info.devices = list(dict.fromkeys(d for d in _DEVICES.findall(message)))
    frame = user_frame(exc.__traceback__)
    if frame is not None:
        info.site = f"{_short_path(frame.filename)}:{frame.lineno}"
        info.source = (frame.line or "").strip() or None
    return info


def user_frame(tb) -> traceback.FrameSummary | None:
    """The innermost traceback frame that is not torch, the harness or the stdlib."""
    frames = traceback.extract_tb(tb)
    for frame in reversed(frames):
        path = os.path.normcase(os.path.realpath(frame.filename))
        if not path.startswith(_SKIP_DIRS) and not frame.filename.startswith("<"):
            return frame
    return frames[-1] if frames else None


def _short_path(path: str) -> str:
    """Relative to the working directory or to site-packages, whichever is shorter."""
    candidates = [path]
    with contextlib.suppress(ValueError):  # another drive on Windows
        candidates.append(os.path.relpath(path))
    for base in sys.path:
        if base and path.startswith(base.rstrip(os.sep) + os.sep):
            candidates.append(path[len(base.rstrip(os.sep)) + 1 :])
    return min(candidates, key=len)
