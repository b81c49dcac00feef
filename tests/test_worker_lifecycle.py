"""Case workers: they die with their parent (SIGKILL, SIGTERM), a timeout kills the engine's
own subprocesses too, a case's timeout counts from the case's own start (not the worker's
imports or its model build), a model build over its own limit is reported as such, and a
build killed halfway leaves no staging directory behind.

Processes are found by a marker in their environment (every descendant of the run inherits
it): Linux /proc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through Linux /proc")

HANG = """\
- name: spawns-and-hangs
  description: an engine that starts a subprocess of its own, then hangs
  engines: [test-spawn-hang]
  devices: [cpu]
  prompt: hi
  timeout: {timeout}
- name: fine
  description: a normal case after it
  devices: [cpu]
  prompt: hi
  max_new_tokens: 2
"""


def marked_processes(marker: str) -> list[int]:
    """Live (not zombie) processes whose environment holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


@pytest.fixture
def env(tmp_path: Path):
    """Environment of a run under test: a marker, the lifecycle plugins, its own model cache.
    Whatever a failing test leaves running is killed at the end (by pid, found by marker)."""
    marker = f"SAMEDEVICE_TEST_MARKER={uuid.uuid4().hex}"
    env = dict(os.environ, SAMEDEVICE_PLUGINS="tests.plugins.lifecycle", SAMEDEVICE_TEST_PIDS=str(tmp_path / "pids"),
               SAMEDEVICE_CACHE=str(tmp_path / "cache"), SAMEDEVICE_TEST_MARKER=marker.split("=", 1)[1],
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env["marker"] = marker
    yield env
    for pid in marked_processes(marker):
        if pid != os.getpid():
            os.kill(pid, signal.SIGKILL)


def start(tmp_path: Path, env: dict, *args: str) -> subprocess.Popen:
    run_env = {k: v for k, v in env.items() if k != "marker"}
    return subprocess.Popen([sys.executable, "-m", "harness.frontends.cli", "run", "s.yaml", "--results", "res", "--no-progress", *args],
                            cwd=tmp_path, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(tmp_path: Path, env: dict, *args: str) -> tuple[int, str, list[dict]]:
    proc = start(tmp_path, env, *args)
    _, err = proc.communicate(timeout=300)
    run_dir = max((tmp_path / "res").iterdir())
    cases = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    return proc.returncode, err, cases


def engine_pids(tmp_path: Path) -> list[int]:
    assert wait_until(lambda: (tmp_path / "pids").exists() and (tmp_path / "pids").read_text().endswith("\n"), 120), \
        "the engine never started its subprocess"
    return [int(p) for p in (tmp_path / "pids").read_text().split()]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_run_mid_case_leaves_no_process_behind(tmp_path: Path, env: dict, sig: int) -> None:
    (tmp_path / "s.yaml").write_text(HANG.format(timeout=600))
    proc = start(tmp_path, env)
    worker, child = engine_pids(tmp_path)
    assert {proc.pid, worker, child} <= set(marked_processes(env["marker"]))
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    assert wait_until(lambda: not marked_processes(env["marker"]), 10), \
        f"left running after {signal.Signals(sig).name}: {marked_processes(env['marker'])} (worker {worker}, its child {child})"


def test_a_timeout_kills_the_engine_with_its_own_subprocesses(tmp_path: Path, env: dict) -> None:
    (tmp_path / "s.yaml").write_text(HANG.format(timeout=3))
    code, err, cases = run(tmp_path, env)
    assert code == 1, err
    hung, fine = cases
    assert hung["error"]["message"] == "case timed out after 3 s (the engine was killed)"
    assert fine["status"] == "passed", "the run goes on in a fresh worker"
    worker, child = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert wait_until(lambda: not marked_processes(env["marker"]), 10), \
        f"still running after the run: {marked_processes(env['marker'])} (worker {worker}, its child {child})"


SMALL_TIMEOUTS = """\
- name: first
  description: a quick case with a small timeout
  devices: [cpu]
  prompt: hi
  max_new_tokens: 2
  timeout: 3
- name: second
  description: the same, run second or alone
  devices: [cpu]
  prompt: hello
  max_new_tokens: 2
  timeout: 3
"""


def test_a_small_timeout_passes_whether_the_case_runs_first_or_second(tmp_path: Path, env: dict) -> None:
    """The worker's imports (a plugin that takes 4 s to import here) and the first build of
    the model (a fresh cache) come before the case's clock starts."""
    (tmp_path / "s.yaml").write_text(SMALL_TIMEOUTS)
    env["SAMEDEVICE_TEST_IMPORT_DELAY"] = "4"
    code, err, cases = run(tmp_path, env)
    assert code == 0, err
    assert [(c["id"], c["status"]) for c in cases] == [("first[reference-cpu]", "passed"), ("second[reference-cpu]", "passed")]
    code, err, cases = run(tmp_path, env, "-k", "second")
    assert code == 0, err
    assert [c["status"] for c in cases] == ["passed"]


SLOW_BUILD = """\
- name: slow-build
  description: a case whose model build hangs (seed 13, see tests/plugins/lifecycle.py)
  devices: [cpu]
  prompt: hi
  max_new_tokens: 2
  model: {seed: 13}
- name: after
  description: a normal case after it
  devices: [cpu]
  prompt: hi
  max_new_tokens: 2
"""


def staging_dirs(tmp_path: Path) -> list[Path]:
    models = tmp_path / "cache" / "models"
    return sorted(models.glob(".build-*")) if models.exists() else []


def test_a_model_build_over_its_limit_is_reported_as_such_and_its_staging_removed(tmp_path: Path, env: dict) -> None:
    (tmp_path / "s.yaml").write_text(SLOW_BUILD)
    env |= {"SAMEDEVICE_TEST_SLOW_SEED": "13", "SAMEDEVICE_BUILD_TIMEOUT": "4"}
    code, err, cases = run(tmp_path, env)
    assert code == 1, err
    slow, after = cases
    assert slow["error"]["type"] == "build_timeout"
    assert slow["error"]["message"] == (
        "preparing the case (importing its engine, building its model) took longer than 4 s, the limit for that "
        "step ($SAMEDEVICE_BUILD_TIMEOUT); the case's own timeout (600 s) never started")
    assert after["status"] == "passed"
    assert staging_dirs(tmp_path) == [], "the killed build's staging directory is removed right after the kill"


def test_a_model_build_killed_with_its_run_leaves_no_staging_directory_after_the_next_start(tmp_path: Path, env: dict) -> None:
    (tmp_path / "s.yaml").write_text(SLOW_BUILD)
    proc = start(tmp_path, env | {"SAMEDEVICE_TEST_SLOW_SEED": "13"})
    assert wait_until(lambda: any((d / "building").exists() for d in staging_dirs(tmp_path)), 120), "the build never started"
    [staging] = staging_dirs(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert wait_until(lambda: not marked_processes(env["marker"]), 10), "the worker outlived its run"
    assert staging.exists(), "a SIGKILL leaves the staging directory (nothing ran to remove it)"
    code, err, cases = run(tmp_path, env)  # the next start; this time the build is not slowed
    assert code == 0, err
    assert [c["status"] for c in cases] == ["passed", "passed"]
    assert staging_dirs(tmp_path) == [], "the dead builder's staging directory is gone"
