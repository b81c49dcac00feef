"""Run `samedevice` with a filesystem fault injected into this process (tests only).

    python -m tests.fault_injection ERRNO MODE AFTER RESULTS_ROOT -- ARGS...

Once AFTER case lines have been appended to a cases.jsonl under RESULTS_ROOT, every write
there fails the way the real fault does. ENOSPC: a filling disk; the first write is cut
short, the next ones (and fsync) raise. EROFS: a filesystem remounted read-only; opening for
writing, writing and renaming raise. MODE `persistent`: the fault stays; `once`: only the
first failing call fails, then the disk is fine again. Writes that bypass os.write (Python
file objects) fail too, so any writer the harness forgot to harden shows up.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import sys


def install(code: int, persistent: bool, after: int, root: str) -> None:
    root = os.path.abspath(root) + os.sep
    real_open, real_write, real_fsync, real_replace = os.open, os.write, os.fsync, os.replace
    real_io_open = io.open
    paths: dict[int, str] = {}
    state = {"lines": 0, "failing": False, "failed": False, "short": False}

    def under_root(path) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(root)

    def fault_now() -> bool:
        return state["failing"] and (persistent or not state["failed"])

    def fail(path=None):
        state["failed"] = True
        raise OSError(code, os.strerror(code), *([os.fspath(path)] if path is not None else []))

    def open_(path, flags, *args, **kwargs):
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and code == errno.EROFS and under_root(path) and fault_now():
            fail(path)
        fd = real_open(path, flags, *args, **kwargs)
        paths[fd] = os.path.abspath(os.fspath(path))
        return fd

    def write(fd, data):
        path = paths.get(fd)
        if path is None or not path.startswith(root):
            return real_write(fd, data)
        if fault_now():
            if code == errno.ENOSPC and not state["short"] and len(data) > 1:
                state["short"] = True
                return real_write(fd, bytes(data[: len(data) // 2]))  # the disk fills mid-write
            fail()
        written = real_write(fd, data)
        if path.endswith("cases.jsonl"):
            state["lines"] += bytes(data[:written]).count(b"\n")
            state["failing"] = state["failing"] or state["lines"] >= after
        return written

    def fsync(fd):
        path = paths.get(fd)
        if path is not None and path.startswith(root) and fault_now() and state["short"]:
            fail()
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        if code == errno.EROFS and under_root(dst) and fault_now():
            fail(dst)
        return real_replace(src, dst, *args, **kwargs)

    def file_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and under_root(file) and fault_now():
            fail(file)
        return real_io_open(file, mode, *args, **kwargs)

    os.open, os.write, os.fsync, os.replace = open_, write, fsync, replace
    io.open = builtins.open = file_open


if __name__ == "__main__":
    name, mode, after, results_root, separator, *args = sys.argv[1:]
    assert separator == "--" and mode in ("persistent", "once")
    install(getattr(errno, name), mode == "persistent", int(after), results_root)
    from harness.frontends.cli import main

    sys.exit(main(args))
