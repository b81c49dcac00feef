"""`pytest --sim-gpus N`: a project's own GPU tests on simulated GPUs, on a CPU-only machine.

Simulated GPUs are entered before the first conftest loads and left when pytest ends, so what
a project decides at import time (`torch_device = "cuda" if torch.cuda.is_available() ...`,
`skipif(not torch.cuda.is_available())`) sees N GPUs, as do collection and every test's setup,
call and teardown. xdist workers get the option with the command line; a `python -m pytest`
a test starts gets it from SAMEDEVICE_PYTEST_SIM_GPUS, set for the session.

Outcomes stay honest: a test that needs autograd (gradients are off under simulation) or hits
a kernel the CPU build lacks is skipped with why; a test that went through a path the
simulation answers without running it (torch.compile, CUDA memory statistics) is skipped as
not exercised, whatever it did. The terminal summary counts them.

The plugin (harness.frontends.pytest_plugin) calls in here; torch is imported only when the
option is set.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

ENV = "SAMEDEVICE_PYTEST_SIM_GPUS"  # the count for this pytest and the ones its tests start
INI = "samedevice_sim_gpus"
NEEDS_AUTOGRAD = "needs autograd: simulated GPUs are inference-only"
# A skip condition naming CUDA, a GPU or an accelerator: a skipif marker's reason or string
# condition, or a skip/require decorator on the test or its class (@require_torch_gpu).
_GPU_WORDS = re.compile(r"cuda|gpu|accelerator", re.IGNORECASE)
_GPU_DECORATOR = re.compile(r"^\s*@.*(skip|requir).*(cuda|gpu|accelerator)", re.IGNORECASE)
_AUTOGRAD_ERROR = re.compile(r"does not require grad")


def gpu_count_option(text: str) -> int:
    """argparse type of --sim-gpus: a whole number, 0 for off."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sim-gpus takes a number of GPUs, got {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"--sim-gpus takes a number of GPUs (0 for off), got {count}")
    return count


def requested(config: pytest.Config, cli: int | None) -> int:
    """The count asked for: --sim-gpus, else $SAMEDEVICE_PYTEST_SIM_GPUS, else the ini option;
    0 when none (or 0) is set. A bad value is a usage error naming where it came from."""
    if cli is not None:
        value, source = str(cli), "--sim-gpus"
    elif os.environ.get(ENV, "").strip():
        value, source = os.environ[ENV].strip(), f"${ENV}"
    else:
        value, source = str(config.getini(INI) or "0").strip(), f"ini option {INI}"
    try:
        count = int(value)
    except ValueError:
        raise pytest.UsageError(f"samedevice: {source} must be a number of GPUs, got {value!r}") from None
    from harness.devices.sim_tensor import MAX_DEVICES

    if not 0 <= count <= MAX_DEVICES:
        raise pytest.UsageError(f"samedevice: {source} must be from 0 (off) to {MAX_DEVICES}, got {count}")
    return count


@dataclass
class Tally:
    """What the terminal summary says, from the reports (the xdist controller gets the workers')."""

    passed: int = 0
    failed: int = 0
    gated: int = 0  # of those that ran: GPU-gated ones, which skip without simulated GPUs
    not_run: Counter = field(default_factory=Counter)  # "skipped: reason" -> tests

    def add(self, report: pytest.TestReport) -> None:
        if report.when == "teardown" or (report.when == "setup" and report.passed):
            return  # a test counts once: its call, or its setup where that did not pass
        if _is_subtest(report):
            return  # a `self.subTest` / `subtests.test` result is part of its test, counted by the test's own call
        if getattr(report, "wasxfail", None) is not None:
            self.not_run[f"xfail: {report.wasxfail or 'marked xfail'}"] += 1
        elif report.skipped:
            self.not_run[f"skipped: {_skip_reason(report)}"] += 1
        else:
            self.passed += report.passed
            self.failed += report.failed
            self.gated += bool(getattr(report, "samedevice_gpu_gated", False))


def _is_subtest(report: pytest.TestReport) -> bool:
    """pytest's own subtests (9.0+: `SubtestReport`) and pytest-subtests' reports carry a context."""
    return type(report).__name__ == "SubtestReport" or getattr(report, "context", None) is not None


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


class SimSession:
    """Simulated GPUs held for a whole pytest session (or reused from an enclosing one: a
    pytest run in-process by a test of a --sim-gpus session)."""

    def __init__(self, count: int) -> None:
        import torch

        from harness.devices import unavailable_reason
        from harness.devices.state import STATE

        self.count = count
        self.tally = Tally()
        self._stack = ExitStack()
        self.owned = not STATE.active
        if not self.owned:
            if STATE.count < count:
                raise pytest.UsageError(f"samedevice: --sim-gpus {count} inside a run of {STATE.count} simulated GPUs")
            self.simulation = _ENCLOSING[-1]
            self.real_gpus = _ENCLOSING_REAL_GPUS[-1]
            return
        why = unavailable_reason()
        if why:
            raise pytest.UsageError(f"samedevice: --sim-gpus: simulated GPUs are unavailable here: {why}")
        self.real_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        from harness.devices import simulated_gpus

        self.simulation = self._stack.enter_context(simulated_gpus(count=count))
        previous = os.environ.get(ENV)
        os.environ[ENV] = str(count)  # a `python -m pytest` started by a test simulates too
        self._stack.callback(lambda: os.environ.pop(ENV, None) if previous is None
                             else os.environ.__setitem__(ENV, previous))
        _ENCLOSING.append(self.simulation)
        _ENCLOSING_REAL_GPUS.append(self.real_gpus)
        self._stack.callback(_ENCLOSING.pop)
        self._stack.callback(_ENCLOSING_REAL_GPUS.pop)

    def close(self) -> None:
        self._stack.close()

    def begin(self, item: pytest.Item) -> None:
        """Before a test's setup: its own notes start empty."""
        self.simulation.not_exercised.clear()

    def judge(self, item: pytest.Item, call: pytest.CallInfo, report: pytest.TestReport) -> None:
        """Turn a result the simulation cannot vouch for into a skip with why."""
        if report.when == "teardown":
            return
        reason = None
        if report.failed and call.excinfo is not None:
            reason = _failure_reason(call.excinfo.value)
        if reason is None and (report.when == "call" or report.failed) and self.simulation.not_exercised:
            notes = self.simulation.not_exercised
            more = f" (+{len(notes) - 2} more)" if len(notes) > 2 else ""
            reason = f"not exercised on simulated GPUs: {'; '.join(notes[:2])}{more}"
        if reason is not None:
            path, line = item.reportinfo()[:2]
            report.outcome = "skipped"
            report.longrepr = (os.fspath(path), (line or 0) + 1, f"Skipped: {reason}")
        elif report.when == "call" or report.failed:
            report.samedevice_gpu_gated = self.real_gpus < self.count and gpu_gated(item)  # type: ignore[attr-defined]

    def summary(self) -> list[str]:
        t = self.tally
        ran = t.passed + t.failed
        lines = [f"samedevice --sim-gpus {self.count}: {ran} test(s) ran on simulated GPUs ({t.passed} passed, "
                 f"{t.failed} failed); {t.gated} of them GPU-gated (they skip without simulated GPUs); "
                 f"{sum(t.not_run.values())} did not run or count:"]
        lines += [f"  {n} {why}" for why, n in sorted(t.not_run.items(), key=lambda kv: (-kv[1], kv[0]))]
        return lines


_ENCLOSING: list[Any] = []  # the Simulation of the --sim-gpus session that owns it
_ENCLOSING_REAL_GPUS: list[int] = []


def _failure_reason(exc: BaseException) -> str | None:
    """Why a failure is the simulation's limit, not the test's: None for a real failure."""
    from harness.devices.state import kernel_gap_of

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _AUTOGRAD_ERROR.search(str(current)):
            return NEEDS_AUTOGRAD
        current = current.__cause__ or current.__context__
    gap = kernel_gap_of(exc)
    return f"kernel gap on simulated GPUs: {gap}" if gap else None


def gpu_gated(item: pytest.Item) -> bool:
    """True when one of the test's skip conditions names CUDA, a GPU or an accelerator."""
    for marker in item.iter_markers():
        if marker.name not in ("skipif", "skip"):
            continue
        texts = [str(marker.kwargs.get("reason", ""))] + [a for a in marker.args if isinstance(a, str)]
        if any(_GPU_WORDS.search(text) for text in texts):
            return True
    for obj in (getattr(item, "obj", None), getattr(item, "cls", None)):
        if obj is not None and any(_GPU_DECORATOR.match(line) for line in _decorators(obj)):
            return True
    return False


def _decorators(obj: Any) -> list[str]:
    """The decorator lines above a function's or class's `def`/`class` line."""
    try:
        lines, _ = inspect.getsourcelines(inspect.unwrap(obj))
    except (OSError, TypeError):
        return []
    head = []
    for line in lines:
        if line.lstrip().startswith(("def ", "async def ", "class ")):
            break
        head.append(line)
    return head
