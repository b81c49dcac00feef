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
    out = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "run", "s.yaml", "--results", "res", "--no-progress"],
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


EXITS = """\
- name: sys-exit
  description: an engine that calls sys.exit(3)
  engines: [test-sys-exit]
  devices: [cpu]
  prompt: hi
- name: os-exit
  description: an engine that calls os._exit(3)
  engines: [test-os-exit]
  devices: [cpu]
  prompt: hi
- name: interrupt
  description: an engine that raises KeyboardInterrupt
  engines: [test-interrupt]
  devices: [cpu]
  prompt: hi
- name: fine
  description: a normal case after the bad ones
  devices: [cpu]
  prompt: hi
  max_new_tokens: 3
"""


def _line_of(code: str) -> int:
    lines = (REPO / "tests" / "plugins" / "faulty_engines.py").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if line.strip() == code)


def test_an_engine_that_exits_or_raises_keyboard_interrupt_is_its_cases_error_with_its_exit_code(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(EXITS)
    env = dict(os.environ, SAMEDEVICE_PLUGINS="tests.plugins.faulty_engines",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "run", "s.yaml", "--results", "res", "--no-progress"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout, "no worker traceback on the terminal"
    [run_dir] = list((tmp_path / "res").iterdir())
    cases = {c["scenario"]: c for c in map(json.loads, (run_dir / "cases.jsonl").read_text().splitlines())}
    assert all(cases[name]["status"] == "error" for name in ("sys-exit", "os-exit", "interrupt"))
    sys_exit = cases["sys-exit"]["error"]
    assert sys_exit["type"] == "SystemExit" and sys_exit["origin"] == "engine"
    assert sys_exit["message"].startswith("the engine called sys.exit(3) (exit code 3)")
    assert sys_exit["site"] == f"tests/plugins/faulty_engines.py:{_line_of('sys.exit(3)')}"
    assert cases["os-exit"]["error"]["message"] == ("the engine process died: exited with code 3 "
                                                    "(the engine called sys.exit or os._exit?)")
    interrupt = cases["interrupt"]["error"]
    assert interrupt["type"] == "KeyboardInterrupt"
    assert interrupt["site"] == f"tests/plugins/faulty_engines.py:{_line_of('raise KeyboardInterrupt')}"
    assert "not a Ctrl-C of the run" in interrupt["message"]
    assert cases["fine"]["status"] == "passed", "the run goes on"


def test_a_worker_that_is_exiting_on_its_own_reports_its_own_exit_code_not_our_kill() -> None:
    import multiprocessing

    from harness.execute.cases import Case, DeviceTarget
    from harness.execute.worker import CaseWorker
    from harness.format.loader import LoadedScenario
    from harness.format.scenario import DeviceSpec, Scenario

    scenario = Scenario.model_validate({"name": "e", "description": "d", "prompt": "hi"})
    case = Case(LoadedScenario(scenario, "e.yaml", 1), "reference", DeviceTarget(DeviceSpec(device="cpu"), False))
    worker = CaseWorker(prepare_limit=1)
    # As a worker whose pipe closed while its interpreter was still exiting (exec: nothing to import).
    worker._process = multiprocessing.get_context("spawn").Process(target=exec, args=(
        "import sys, time; time.sleep(1); sys.exit(3)",))
    worker._process.start()
    result = worker._lost(case, 0.0, "crash", "the engine process died: {exit}", died=True)
    assert result.error is not None
    assert result.error.message == "the engine process died: exited with code 3 (the engine called sys.exit or os._exit?)"
