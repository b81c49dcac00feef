"""Argument checks shared by `samedevice run` and the pytest plugin, made before any case
runs: timeouts, device and engine filters, output files. Each returns a sentence that names
what was given and what is accepted; the front end turns it into its usage error (exit 2,
or pytest.UsageError)."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

from harness.format.suggest import closest, did_you_mean

# The scenario format's own bound for `timeout:` (harness/format/scenario.py), so one limit holds.
MAX_TIMEOUT_S = 86400.0
DEVICE_GROUPS = ("sim", "gpu", "all")
_DEVICE_LABEL = re.compile(r"^(cpu|auto|cuda:\d+|sim:(auto|cuda:\d+))$")
_DEVICE_EXAMPLES = ("cpu", "auto", "cuda:0", "cuda:1", "sim:cuda:0", "sim:cuda:1", "sim:auto", *DEVICE_GROUPS)


def timeout_seconds(text: str) -> float:
    """argparse `type=` for a per-case timeout: a finite number of seconds in (0, 86400]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, but got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds, but got {text!r}")
    return value


def device_filter_problems(values: list[str]) -> list[str]:
    """`-d` values that are neither a device label nor a group."""
    problems = []
    for value in values:
        if value in DEVICE_GROUPS or _DEVICE_LABEL.match(value):
            continue
        hint = did_you_mean(value, _DEVICE_EXAMPLES,
                            otherwise="expected cpu, cuda:N, auto, sim:cuda:N, sim:auto, or a group: sim, gpu, all")
        problems.append(f"unknown device {value!r} ({hint})")
    return problems


def engine_filter_problems(values: list[str]) -> list[str]:
    """`-e` values that name no registered engine (built-in, entry point or $SAMEDEVICE_PLUGINS)."""
    if not values:
        return []
    from harness.engines import all_engines, broken_plugins

    known = sorted(all_engines())
    broken = broken_plugins()
    problems = []
    for value in values:
        if value in known:
            continue
        close = closest(value, known)
        if value in broken:
            hint = f"its plugin failed to load: {broken[value]}"
        elif close:
            hint = f"did you mean {close!r}?"
        else:
            hint = f"known engines: {', '.join(known)}"
        problems.append(f"unknown engine {value!r} ({hint})")
    return problems


def output_file_problem(path: Path, what: str) -> str | None:
    """Why a file could not be written at `path` at the end of a run, or None. Missing parent
    directories are created; the directory is probed with a file created and removed."""
    if path.is_dir():
        return f"{what} {path} is a directory, not a file"
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{what} {path}: cannot create its directory: {exc.strerror or exc}"
    probe = parent / f".samedevice-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.unlink(probe)
    except OSError as exc:
        return f"{what} {path} is not writable: {exc.strerror or exc}"
    return None


def results_root_problem(root: Path, exc: BaseException) -> str:
    """One line for a results root a run directory could not be made in."""
    if root.exists() and not root.is_dir():
        return f"results directory {root} is a file, not a directory"
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return f"results directory {root} is not writable: {why}"


BUILD_TIMEOUT_ENV = "SAMEDEVICE_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT_S = 900.0


def build_timeout() -> float:
    """Seconds a case worker may spend preparing a case before the case's clock starts
    (importing its engine, building its tiny model): $SAMEDEVICE_BUILD_TIMEOUT, default 900.
    ValueError when the variable is set but is not a valid number of seconds."""
    text = os.environ.get(BUILD_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_BUILD_TIMEOUT_S
    try:
        return timeout_seconds(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"${BUILD_TIMEOUT_ENV} {exc}") from None
