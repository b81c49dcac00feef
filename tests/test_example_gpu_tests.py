"""examples/gpu-tests, an engine project's GPU tests written the usual way, run as a user would:
on plain CPU the GPU tests skip (and a device bug in the engine passes with them); with
`--sim-gpus 2` they run and pass, and the bug fails the test written for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gpu-tests"


def _pytest(*args: str, bug: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAMEDEVICE_EXAMPLE_BUG": "1" if bug else "0"}
    env.pop("SAMEDEVICE_PYTEST_SIM_GPUS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=EXAMPLE, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize(("flags", "bug", "outcome"), [
    ((), True, "2 passed, 3 skipped"),  # CPU CI: the bug ships
    (("--sim-gpus", "2"), False, "5 passed"),
    (("--sim-gpus", "2"), True, "4 failed, 1 passed"),  # every test on the GPU fails on the bug
], ids=["cpu-with-the-bug", "sim-gpus", "sim-gpus-with-the-bug"])
def test_the_example_gpu_suite(flags, bug, outcome):
    done = _pytest(*flags, bug=bug)
    assert done.stdout.strip().splitlines()[-1].startswith(outcome), done.stdout[-3000:]
    if bug and flags:
        assert "Expected all tensors to be on the same device" in done.stdout
        assert "FAILED test_engine.py::test_greedy_on_the_gpu" in done.stdout
