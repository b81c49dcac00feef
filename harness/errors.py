"""Describe an exception raised by a case: device mismatch or not, the op, the devices,
and the line of user code (the innermost frame outside torch and the harness).

The wording rules live in `harness.devices.errors` (shared with the simulator, which
raises them); this module turns an exception into the record a result carries.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import asdict, dataclass, field

from harness.devices.errors import classify_device_error, is_kernel_gap
from harness.devices.state import is_internal, short_path

_HARNESS_DIR = os.path.normcase(os.path.realpath(os.path.dirname(__file__))) + os.sep


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
    info = ErrorInfo(type=type(exc).__name__, message=str(exc)[:2000])
    mismatch = classify_device_error(exc)
    if mismatch is not None:
        info.mismatch, info.op, info.devices = True, mismatch["op"], mismatch["devices"]
    info.kernel_gap = is_kernel_gap(exc)
    frame = user_frame(exc.__traceback__)
    if frame is not None:
        info.site = f"{short_path(frame.filename)}:{frame.lineno}"
        info.source = (frame.line or "").strip() or None
    return info


def user_frame(tb) -> traceback.FrameSummary | None:
    """The innermost traceback frame that is not torch, the harness or the stdlib."""
    frames = traceback.extract_tb(tb)
    for frame in reversed(frames):
        path = os.path.normcase(os.path.realpath(frame.filename))
        if not is_internal(frame.filename) and not path.startswith(_HARNESS_DIR):
            return frame
    return frames[-1] if frames else None
