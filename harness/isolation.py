"""Run cases in a child process, so a crash (abort, segfault) or a hang inside an engine
becomes that case's error and the run goes on.

One long-lived worker runs cases one after another (imports are paid once); a case that
kills it or outlives its timeout is recorded as an error, the worker is replaced, and the
next case starts in a fresh one.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection

from harness.cases import Case
from harness.errors import ErrorInfo
from harness.results import CaseResult
from harness.runner import OracleCache, RunOptions, run_case


def _worker_main(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    set_threads()
    oracles = OracleCache()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        case, options = message
        try:
            result = run_case(case, options, oracles)
        except Exception as exc:  # a bug of ours outside run_case's own guard: still this case's error
            result = _error_result(case, time.time(), type(exc).__name__, f"harness error: {exc}")
            result.error.origin = "harness"  # type: ignore[union-attr]
        conn.send(result)


class CaseWorker:
    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_worker_main, args=(child,), daemon=True, name="samedevice-case-worker")
        self._process.start()
        child.close()
        self._conn = parent

    def run(self, case: Case, options: RunOptions, timeout: float) -> CaseResult:
        if self._process is None or not self._process.is_alive():
            self._start()
        assert self._conn is not None and self._process is not None
        started = time.time()
        self._conn.send((case, options))
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
        except (EOFError, ConnectionResetError, BrokenPipeError):
            pass  # the worker died mid-case: described below
        except BaseException:
            self.stop()  # an interrupt: take the worker and its case down with us
            raise
        self._process.join(2)  # reap a dead worker so its exit code is known
        exitcode = self._process.exitcode
        if exitcode is None:  # still running: a hang
            self._kill()
            return _error_result(case, started, "timeout", f"case timed out after {timeout:g} s (the engine was killed)")
        self._kill()
        return _error_result(case, started, "crash", f"the engine process died: {_describe_exit(exitcode)}")

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None

    def stop(self) -> None:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            try:
                self._conn.send(None)
                self._process.join(2)
            except (BrokenPipeError, OSError):
                pass
        self._kill()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (exit code {code})"
    return f"exit code {code}"


def _error_result(case: Case, started: float, kind: str, message: str) -> CaseResult:
    return CaseResult(
        id=case.id, scenario=case.scenario.name, engine=case.engine, device=case.target.label,
        file=case.loaded.path, line=case.loaded.line, status="error", started=started,
        duration_s=round(time.time() - started, 3),
        error=ErrorInfo(kind, message, origin="worker"),
    )


def set_threads() -> None:
    """One intra-op thread by default ($SAMEDEVICE_THREADS): decode of tiny models gains
    nothing from more, and on a loaded machine a second thread makes it up to 40x slower."""
    import torch

    torch.set_num_threads(int(os.environ.get("SAMEDEVICE_THREADS", "1")))


def make_executor(isolation: str, default_timeout: float):
    """A callable (case, options) -> CaseResult: in a worker process or in this one."""
    if isolation == "none":
        set_threads()
        oracles = OracleCache()
        return lambda case, options: run_case(case, options, oracles)
    worker = CaseWorker()

    def execute(case, options):
        return worker.run(case, options, timeout=case.scenario.timeout or default_timeout)

    execute.stop = worker.stop  # type: ignore[attr-defined]
    return execute
