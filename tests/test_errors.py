"""Errors where they belong: a plugin that fails to import is named wherever its engine is
needed; an exception in the harness's own code is a harness error, in process and out; only
a kernel the CPU lacks, seen by the simulator, becomes a skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import tests.plugins.contract_engines  # noqa: F401  (registers the contract-* engines)
from harness.checks import features as feature_checks
from harness.execute.case import Companions, RunOptions, run_case
from harness.execute.cases import Case, DeviceTarget
from harness.format.loader import LoadedScenario
from harness.format.scenario import DeviceSpec, Scenario

REPO = Path(__file__).resolve().parent.parent


def _case(engine: str, device: str = "cpu", simulated: bool = False) -> Case:
    scenario = Scenario.model_validate({"name": "e", "description": "d", "prompt": "The cat", "max_new_tokens": 4,
                                        "engines": [engine]})
    return Case(LoadedScenario(scenario, "e.yaml", 1), engine, DeviceTarget(DeviceSpec(device=device), simulated))


def _cli(tmp_path: Path, scenario: str, plugins: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "s.yaml").write_text(scenario)
    env = dict(os.environ, SAMEDEVICE_PLUGINS=plugins, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "harness.frontends.cli", *args, "s.yaml", "--results", "res", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_plugin_that_fails_to_import_is_printed_with_its_error_and_named_where_its_engine_is_needed(tmp_path):
    done = _cli(tmp_path, "- {name: f, description: d, engines: [fancy], devices: [cpu], prompt: hi}\n",
                "tests.plugins.broken_plugin", "run")
    assert done.returncode == 1, "its only scenario is invalid (its engine's plugin is broken): a failure, not usage"
    assert "plugin tests.plugins.broken_plugin failed to load: ImportError: No module named 'fancy_engine_lib'" in done.stderr
    assert "unknown engine 'fancy'" in done.stderr and "plugins that failed to load: tests.plugins.broken_plugin" in done.stderr
    assert "nothing to run: every selected scenario is invalid" in done.stderr


def test_a_broken_plugin_fails_the_run_even_when_every_case_passes(tmp_path):
    done = _cli(tmp_path, "- {name: ok, description: d, devices: [cpu], prompt: hi, max_new_tokens: 3}\n",
                "tests.plugins.broken_plugin", "run")
    assert done.returncode == 1, done.stderr
    assert "1 passed" in done.stderr and "1 plugin(s) failed to load" in done.stderr, done.stderr
    env = dict(os.environ, SAMEDEVICE_PLUGINS="tests.plugins.broken_plugin",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    listed = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "list", "s.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 1 and "failed to load" in listed.stderr, listed.stderr


def test_a_plugin_calling_sys_exit_on_import_is_a_broken_plugin_and_the_run_goes_on(tmp_path):
    done = _cli(tmp_path, "- {name: ok, description: d, devices: [cpu], prompt: hi, max_new_tokens: 3}\n",
                "tests.plugins.exiting_plugin", "run")
    assert done.returncode == 1, done.stderr
    assert ("plugin tests.plugins.exiting_plugin failed to load: SystemExit: it called "
            "sys.exit('fancy_engine_lib: no license found') on import") in done.stderr
    assert "1 passed" in done.stderr and "1 plugin(s) failed to load" in done.stderr, done.stderr
    [run_dir] = (tmp_path / "res").iterdir()
    assert len((run_dir / "cases.jsonl").read_text().splitlines()) == 1


def test_pytest_fails_the_session_on_a_broken_plugin_with_one_line(tmp_path):
    (tmp_path / "s.yaml").write_text("- {name: ok, description: d, devices: [cpu], prompt: hi, max_new_tokens: 3}\n")
    env = dict(os.environ, SAMEDEVICE_PLUGINS="tests.plugins.broken_plugin",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "pytest", "s.yaml", "-p", "no:cacheprovider", "-q",
                           "--samedevice-no-results"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed" in done.stdout, "the scenario outside scenarios/ is collected because it is named"
    assert ("invalid scenario: plugin tests.plugins.broken_plugin failed to load: ImportError: "
            "No module named 'fancy_engine_lib'") in done.stdout


def test_a_harness_exception_in_process_is_a_harness_error_not_the_engines(monkeypatch):
    def broken(spec, generation):
        raise ValueError("a bug in our own feature check")

    monkeypatch.setattr(feature_checks, "check_features", broken)
    result = run_case(_case("reference"), RunOptions(), Companions())
    assert result.status == "error"
    assert result.error is not None and result.error.origin == "harness"
    assert result.summary_line().startswith("harness error: ValueError")
    assert "feature check" in result.summary_line()


def test_a_harness_exception_in_a_worker_is_a_harness_error_not_an_engine_crash(tmp_path):
    done = _cli(tmp_path, "- {name: h, description: d, devices: [cpu], prompt: hi, max_new_tokens: 3}\n",
                "tests.plugins.harness_bug", "run")
    assert done.returncode == 1, done.stderr
    [run_dir] = (tmp_path / "res").iterdir()
    [case] = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    assert case["status"] == "error"
    assert case["error"]["origin"] == "harness", case["error"]
    assert "process died" not in case["error"]["message"]
    assert "harness error: error" in done.stderr, done.stderr


def test_an_engines_own_not_implemented_error_on_a_simulated_gpu_is_an_error_not_a_kernel_gap():
    result = run_case(_case("contract-own-dtype-error", "cuda:0", simulated=True), RunOptions(), Companions())
    assert result.status == "error", f"must not be skipped as a kernel gap: {result.reason}"
    assert result.error is not None and result.error.kernel_gap is None
