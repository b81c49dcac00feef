"""What an engine and its libraries print during a case, kept for the case's notes.

transformers' progress bars and logging, a Rust engine's INFO lines, a CUDA library's
warnings: none of it may land in the console between the run's progress lines. During a
case, file descriptors 1 and 2 (so native code too) point at a file of this process's own
(`capture_path()`), and Python logging goes there as well. The text comes back for the
case's notes; if the worker dies mid-case, the parent reads the same file for the last
lines before the crash.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_PROGRESS = re.compile(r"\d+%\|")  # tqdm bars: noise in a note


def capture_path(pid: int | None = None) -> Path:
    return Path(tempfile.gettempdir()) / f"samedevice-case-output-{pid or os.getpid()}.log"


@dataclass
class Captured:
    text: str = ""

    def lines(self, limit: int = 8) -> list[str]:
        """The last meaningful lines: colour codes and progress bars removed, repeats once."""
        kept: list[str] = []
        for raw in self.text.replace("\r", "\n").splitlines():
            line = _ANSI.sub("", raw).strip()
            if line and not _PROGRESS.search(line) and line not in kept:
                kept.append(line)
        return [line[:300] for line in kept[-limit:]]


def quiet_libraries() -> None:
    """Progress bars off where libraries allow it (the rest is captured)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """fd 1 and 2 into this process's capture file for the duration; the text after."""
    captured = Captured()
    path = capture_path()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no usable descriptors (an embedded interpreter): capture nothing
        yield captured
        return
    with open(path, "w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.text = sink.read()[-65536:].decode("utf-8", "replace")
    with contextlib.suppress(OSError):
        path.unlink()


def last_lines(pid: int, limit: int = 8) -> list[str]:
    """What a dead worker printed last (its capture file), for the crash report."""
    path = capture_path(pid)
    try:
        text = path.read_bytes()[-65536:].decode("utf-8", "replace")
    except OSError:
        return []
    with contextlib.suppress(OSError):
        path.unlink()
    return Captured(text).lines(limit)
