"""Run cases in a child process, so a crash (abort, segfault) or a hang inside an engine
becomes that case's error and the run goes on.

One long-lived worker runs cases one after another (imports are paid once); a case that
kills it or outlives its timeout is recorded as an error, the worker is replaced, and the
next case starts in a fresh one.

The worker's life:
- It leads its own process group (POSIX `setsid`), so a timeout kills the worker and every
  process its engine started with one `killpg`.
- It dies with its parent. On Linux the kernel sends it SIGKILL when the parent dies
  (PR_SET_PDEATHSIG), and a guard process forked into its group (before torch is imported,
  so it is small) kills the whole group when the worker dies for any reason, taking the
  engine's own subprocesses with it. On every platform a thread waits on a pipe that only
  the parent holds open and kills the group (on Windows: the worker) when it reads EOF.
- A case's timeout counts from the case's own start. The worker says "ready" once its
  imports are done (WORKER_START_LIMIT_S), then, for each case, "started" once the case is
  prepared: its engine's libraries imported and its tiny model built (its own limit,
  $SAMEDEVICE_BUILD_TIMEOUT, default 900 s, reported as such). Only then does the case's
  clock start, so a verdict never depends on whether a case ran first in a worker.
- The staging directory of a model build killed with its worker is removed right after
  the kill (and stale ones on the next start: harness.models.tinymodel).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from harness.execute.case_errors import ErrorInfo
from harness.frontends.arguments import build_timeout
from harness.record.results import CaseResult

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from harness.execute.case import RunOptions
    from harness.execute.cases import Case

WORKER_START_LIMIT_S = 300.0  # spawn + `import torch` + the harness, on a loaded machine
EXIT_GRACE_S = 5.0  # a worker whose pipe closed: how long it may take to finish exiting
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# --- in the worker -----------------------------------------------------------------------------

def _worker_main(conn: Connection, lifeline: Connection, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    _lead_own_process_group()
    _die_with_parent(parent_pid, lifeline)
    # The heavy imports come after the lifeline is in place: a parent killed during
    # `import torch` takes this process with it.
    from harness.execute.case import OracleCache, run_case
    from harness.models import tinymodel

    set_threads()
    _import_what_every_case_imports()
    tinymodel.remove_stale_staging()
    conn.send(("ready", os.getpid()))
    oracles = OracleCache()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        case, options = message
        _prepare(case)
        conn.send(("started", None))
        started = time.time()
        try:
            result = run_case(case, options, oracles)
        except Exception as exc:  # a bug of ours outside run_case's own guard: still this case's error
            result = _error_result(case, started, type(exc).__name__, f"harness error: {exc}")
            result.error.origin = "harness"  # type: ignore[union-attr]
        except (KeyboardInterrupt, SystemExit) as exc:  # raised by the case's code, never a Ctrl-C (ignored here)
            result = _escaped_error(case, started, exc)
        conn.send(("result", result))


def _escaped_error(case: Case, started: float, exc: KeyboardInterrupt | SystemExit) -> CaseResult:
    """The case's error for a KeyboardInterrupt or SystemExit its engine raised: with the
    line that raised it, no traceback on the terminal, and the worker goes on. This worker
    ignores SIGINT, so a KeyboardInterrupt here is never the user's Ctrl-C (the parent gets
    that and stops the run)."""
    from harness.execute.case_errors import describe_error

    result = _error_result(case, started, type(exc).__name__, "")
    result.error = describe_error(exc, origin="engine")
    if isinstance(exc, SystemExit):
        result.error.message = (f"the engine called sys.exit({exc.code!r}) (exit code {_exit_status(exc.code)}); "
                                "the case worker caught it and went on")
    else:
        result.error.message = ("the engine raised KeyboardInterrupt (not a Ctrl-C of the run: the case worker "
                                "ignores SIGINT)")
    return result


def _exit_status(code: object) -> int:
    """The status sys.exit(code) exits with: None is 0, an int itself, anything else 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _import_what_every_case_imports() -> None:
    """Imports the first case would otherwise pay on its own clock: torch imports its
    compiler stack lazily (torch._dynamo and sympy, about 2 s, on the first call of a function
    wrapped in torch's disable-dynamo decorator), and every case reads a tokenizer and
    safetensors weights."""
    for module in ("torch._dynamo", "tokenizers", "safetensors.torch"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def _prepare(case: Case) -> None:
    """What a case needs before its clock starts: its engine's libraries imported (the
    registry, plugins, the engine's own availability check) and its tiny model built. A
    failure here is not reported here: the case meets it again and reports it as its own."""
    from harness.execute.cases import skip_reason
    from harness.models import sources as model_source

    with contextlib.suppress(Exception):
        if skip_reason(case) is None:
            model_source.describe_model(case.scenario.model)  # builds a generated model on a cache miss


def _lead_own_process_group() -> None:
    if hasattr(os, "setsid"):
        with contextlib.suppress(OSError):  # already a group leader
            os.setsid()


def _leads_own_group() -> bool:
    return hasattr(os, "getpgrp") and os.getpgrp() == os.getpid()


def _die_with_parent(parent_pid: int, lifeline: Connection) -> None:
    if sys.platform.startswith("linux"):
        _set_parent_death_signal(signal.SIGKILL)
        _start_group_guard()
    if os.getppid() != parent_pid:  # the parent died before the death signal was registered
        _kill_own_group()
    threading.Thread(target=_watch_lifeline, args=(lifeline,), name="samedevice-lifeline", daemon=True).start()


def _set_parent_death_signal(sig: int) -> None:
    """Linux prctl(PR_SET_PDEATHSIG): the kernel sends `sig` when the parent (thread) dies."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(sig), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0))


def _start_group_guard() -> None:
    """Fork a guard into this process group: when the worker dies (killed with its parent,
    crashed, or done), the guard kills the group, so no engine subprocess outlives it."""
    if not _leads_own_group():
        return  # never kill a group that is not the worker's own
    worker = os.getpid()
    if os.fork() != 0:
        return
    try:  # the guard: no threads, no torch, no file descriptors but stdio
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        os.closerange(3, 65536)
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() == worker:  # else the worker is already gone
            signal.sigwait({signal.SIGTERM})
    finally:
        os.killpg(0, signal.SIGKILL)
        os._exit(0)


def _watch_lifeline(lifeline: Connection) -> None:
    """The parent never sends on the lifeline: recv returns only with EOF, when it is gone."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv()
    _kill_own_group()


def _kill_own_group() -> None:
    if _leads_own_group():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


def set_threads() -> None:
    """One intra-op thread by default ($SAMEDEVICE_THREADS): decode of tiny models gains
    nothing from more, and on a loaded machine a second thread makes it up to 40x slower."""
    import torch

    torch.set_num_threads(int(os.environ.get("SAMEDEVICE_THREADS", "1")))


# --- in the parent -----------------------------------------------------------------------------

_DIED, _TIMED_OUT = object(), object()


class CaseWorker:
    def __init__(self, start_limit: float = WORKER_START_LIMIT_S, prepare_limit: float | None = None) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._lifeline: Connection | None = None
        self.start_limit = start_limit
        self.prepare_limit = prepare_limit if prepare_limit is not None else build_timeout()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        lifeline_read, lifeline_write = self._context.Pipe(duplex=False)
        self._process = self._context.Process(target=_worker_main, args=(child, lifeline_read, os.getpid()),
                                              daemon=True, name="samedevice-case-worker")
        self._process.start()
        child.close()
        lifeline_read.close()  # only the worker may hold the read end: EOF there means we are gone
        self._conn, self._lifeline = parent, lifeline_write

    def _receive(self, limit: float) -> Any:
        """The worker's next message within `limit` seconds, else _TIMED_OUT or _DIED."""
        assert self._conn is not None
        try:
            if self._conn.poll(limit):
                return self._conn.recv()
        except (EOFError, OSError):
            return _DIED
        return _TIMED_OUT

    def run(self, case: Case, options: RunOptions, timeout: float) -> CaseResult:
        started = time.time()
        try:
            if self._process is None or not self._process.is_alive():
                self._release()  # a worker that died between cases (already reaped)
                self._start()
                ready = self._receive(self.start_limit)
                if ready is _TIMED_OUT:
                    return self._lost(case, started, "worker_start",
                                      f"the case worker did not start within {self.start_limit:g} s; the case never started")
                if ready is _DIED:
                    return self._lost(case, started, "crash", "the case worker died while starting: {exit}", died=True)
            assert self._conn is not None
            self._conn.send((case, options))
            prepared = self._receive(self.prepare_limit)
            if prepared is _TIMED_OUT:
                return self._lost(case, started, "build_timeout",
                                  f"preparing the case (importing its engine, building its model) took longer than "
                                  f"{self.prepare_limit:g} s, the limit for that step ($SAMEDEVICE_BUILD_TIMEOUT); "
                                  f"the case's own timeout ({timeout:g} s) never started")
            if prepared is _DIED:
                return self._lost(case, started, "crash",
                                  "the engine process died while preparing the case (importing its engine, "
                                  "building its model): {exit}", died=True)
            started = time.time()  # the case's own clock
            message = self._receive(timeout)
            if message is _TIMED_OUT:
                return self._lost(case, started, "timeout", f"case timed out after {timeout:g} s (the engine was killed)")
            if message is _DIED:
                return self._lost(case, started, "crash", "the engine process died: {exit}", self._last_output(),
                                  died=True)
            kind, result = message
            assert kind == "result", kind
            return result
        except BaseException:
            self._kill()  # an interrupt: take the worker, its engine and its case down with us
            raise

    def _lost(self, case: Case, started: float, kind: str, message: str, output: list[str] | None = None,
              died: bool = False) -> CaseResult:
        """Kill the worker's group, and describe how the case was lost ({exit}: how it ended),
        with the last lines the worker printed (a CUDA assertion, a native library's abort).
        `died`: its pipe closed, so it is exiting on its own: its own exit code is waited for
        briefly (it closes the pipe before its interpreter has finished exiting), not
        replaced by our SIGKILL's."""
        if died and self._process is not None and self._process.pid:
            _wait_for_exit(self._process.pid, EXIT_GRACE_S)
        exitcode = self._kill()
        result = _error_result(case, started, kind, message.format(exit=_describe_exit(exitcode)))
        if output:
            result.notes += [f"output: {line}" for line in output]
            assert result.error is not None
            result.error.message += "; last output: " + " | ".join(output[-3:])
        return result

    def _last_output(self) -> list[str]:
        from harness.execute.capture import last_lines

        pid = self._process.pid if self._process is not None else None
        return last_lines(pid) if pid else []

    def _kill(self) -> int | None:
        """Kill the worker and its whole process group; returns its exit code. Called only
        while the worker is not yet reaped, so the group id cannot belong to anyone else."""
        process, exitcode = self._process, None
        if process is not None:
            if process.pid and hasattr(os, "killpg") and process.pid != os.getpgrp():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.kill()
            process.join(5)
            exitcode = process.exitcode
        self._release()
        return exitcode

    def _release(self) -> None:
        if self._process is not None:
            from harness.models.tinymodel import remove_stale_staging

            remove_stale_staging(owner=self._process.pid)  # a model build it did not finish
        for conn in (self._conn, self._lifeline):
            if conn is not None:
                conn.close()
        self._process, self._conn, self._lifeline = None, None, None

    def stop(self) -> None:
        """Let the worker exit (its guard then kills anything left in its group); kill it if
        it does not within 2 s."""
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            try:
                self._conn.send(None)
                self._process.join(2)
            except (BrokenPipeError, OSError):
                pass
        if self._process is not None and self._process.exitcode is None:
            self._kill()  # still running
        else:
            self._release()


def _wait_for_exit(pid: int, seconds: float) -> None:
    """Wait up to `seconds` for child `pid` to exit, without reaping it: until it is reaped its
    process group id cannot be anyone else's, so `_kill` may still kill that group."""
    if not hasattr(os, "waitid"):
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.02)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (exit code {code})"
    return f"exited with code {code} (the engine called sys.exit or os._exit?)"


def _error_result(case: Case, started: float, kind: str, message: str) -> CaseResult:
    return CaseResult(
        id=case.id, scenario=case.scenario.name, engine=case.engine, device=case.target.label,
        file=case.loaded.path, line=case.loaded.line, status="error", started=started,
        duration_s=round(time.time() - started, 3),
        error=ErrorInfo(kind, message, origin="worker"),
    )


def make_executor(isolation: str, default_timeout: float):
    """A callable (case, options) -> CaseResult: in a worker process or in this one."""
    if isolation == "none":
        from harness.execute.case import OracleCache, run_case

        set_threads()
        oracles = OracleCache()
        return lambda case, options: run_case(case, options, oracles)
    worker = CaseWorker()

    def execute(case, options):
        return worker.run(case, options, timeout=case.scenario.timeout or default_timeout)

    execute.stop = worker.stop  # type: ignore[attr-defined]
    return execute
