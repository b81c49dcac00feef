"""A crashing or hanging engine ends as that case's error with a message; the rest of the
run completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCENARIOS = """\
- name: crash
  description: an engine that calls os.abort()
  engines: [test-abort]
  devices: [cpu]
  prompt: hi
- name: hang
  description: an engine that never returns
  engines: [test-hang]
  devices: [cpu]
  prompt: hi
  timeout: 3
- name: raises
  description: an engine that raises
  engines: [test-raise]
  devices: [cpu]
  prompt: hi
- name: fine
  description: a normal case after the bad ones
  devices: [cpu]
  prompt: hi
  max_new_tokens: 3
"""


def test_crash_and_hang_become_errors_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SCENARIOS)
    env = dict(os.environ, SAMEDEVICE_PLUGINS="tests.plugins.faulty_engines",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", "s.yaml", "--results", "res", "--no-progress"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    [run_dir] = list((tmp_path / "res").iterdir())
    cases = {c["scenario"]: c for c in map(json.loads, (run_dir / "cases.jsonl").read_text().splitlines())}
    assert cases["crash"]["status"] == "error"
    assert cases["crash"]["error"]["message"] == "the engine process died: killed by SIGABRT (exit code -6)"
    assert cases["hang"]["status"] == "error"
    assert cases["hang"]["error"]["message"] == "case timed out after 3 s (the engine was killed)"
    assert cases["raises"]["status"] == "error"
    assert cases["raises"]["error"]["type"] == "ValueError"
    assert cases["fine"]["status"] == "passed", "the run must go on after a crash and a hang"
