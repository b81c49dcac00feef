"""Describe an exception raised by a case: device mismatch or not, the op, the devices,
and the line of user code (the innermost frame outside torch and the harness).

The wording rules live in `harness.devices.errors` (shared with the simulator, which
raises them); this module turns an exception into the record a result carries. Where the
error came from is part of the record: the engine (its load or generate), the harness's
own code (a bug of ours, never the engine's fault), or the worker process (a crash or a
timeout).

Importing this module imports no torch (results and the pytest plugin use `ErrorInfo`).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Origin = Literal["engine", "harness", "worker"]

_HARNESS_DIR = os.path.normcase(os.path.realpath(os.path.dirname(os.path.dirname(__file__)))) + os.sep


@dataclass
class ErrorInfo:
    type: str  # the exception's class, or "timeout" / "crash" for a worker that did not answer
    message: str
    origin: Origin = "engine"
    mismatch: bool = False
    # A torch op on a simulated device hit a kernel the CPU build lacks ("op: message at
    # site"); only the simulator sets it, so only such errors become skips.
    kernel_gap: str | None = None
    # The simulator's race check (harness.devices.sim_streams.StreamRace): work read before an
    # ordering point made it visible; the message names both sides.
    race: bool = False
    op: str | None = None
    devices: list[str] = field(default_factory=list)
    site: str | None = None  # file:line of user code
    source: str | None = None  # that line's text
    traceback: str | None = None  # the last frames, for reading

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if not isinstance(known.get("kernel_gap"), (str, type(None))):
            known["kernel_gap"] = None  # results written before kernel gaps were typed
        return cls(**known)

    def one_line(self) -> str:
        where = f" at {self.site}" if self.site else ""
        op = f" [op {self.op}]" if self.op else ""
        prefix = "harness error: " if self.origin == "harness" else ""
        return f"{prefix}{self.type}{op}{where}: {one_line(self.message) or self.type}"


ONE_LINE_CHARS = 600


def _is_race(exc: BaseException) -> bool:
    """`exc`, or an exception it was raised from, is the simulator's StreamRace."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "StreamRace" and type(current).__module__ == "harness.devices.sim_streams":
            return True
        current = current.__cause__ or current.__context__
    return False


def one_line(message: str) -> str:
    """A multi-line message on one line: its lines joined, blank ones dropped (the first line
    of a parser's error is often only `regex parse error:`), cut at ONE_LINE_CHARS."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return text if len(text) <= ONE_LINE_CHARS else text[: ONE_LINE_CHARS - 3] + "..."


def describe_error(exc: BaseException, origin: Origin = "engine") -> ErrorInfo:
    from harness.devices.errors import classify_device_error
    from harness.devices.state import kernel_gap_of, short_path

    info = ErrorInfo(type=type(exc).__name__, message=str(exc)[:2000], origin=origin)
    mismatch = classify_device_error(exc)
    if mismatch is not None:
        info.mismatch, info.op, info.devices = True, mismatch["op"], mismatch["devices"]
    info.kernel_gap = kernel_gap_of(exc)
    info.race = _is_race(exc)
    frame = user_frame(exc.__traceback__)
    if frame is not None:
        info.site = f"{short_path(frame.filename)}:{frame.lineno}"
        info.source = (frame.line or "").strip() or None
    info.traceback = "".join(traceback.format_exception(exc)[-6:])[-3000:]
    return info


def user_frame(tb) -> traceback.FrameSummary | None:
    """The innermost traceback frame that is not torch, the harness or the stdlib."""
    from harness.devices.state import is_internal

    frames = traceback.extract_tb(tb)
    for frame in reversed(frames):
        path = os.path.normcase(os.path.realpath(frame.filename))
        if not is_internal(frame.filename) and not path.startswith(_HARNESS_DIR):
            return frame
    return frames[-1] if frames else None
