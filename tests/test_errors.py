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
from harness import feature_checks
from harness.cases import Case, DeviceTarget
from harness.loader import LoadedScenario
from harness.runner import Companions, RunOptions, run_case
from harness.scenario import DeviceSpec, Scenario

REPO = Path(__file__).resolve().parent.parent


def _case(engine: str, device: str = "cpu", simulated: bool = False) -> Case:
    scenario = Scenario.model_validate({"name": "e", "description": "d", "prompt": "The cat", "max_new_tokens": 4,
                                        "engines": [engine]})
    return Case(LoadedScenario(scenario, "e.yaml", 1), engine, DeviceTarget(DeviceSpec(device=device), simulated))


def _cli(tmp_path: Path, scenario: str, plugins: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "s.yaml").write_text(scenario)
    env = dict(os.environ, SAMEDEVICE_PLUGINS=plugins, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args, "s.yaml", "--results", "res", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_plugin_that_fails_to_import_is_printed_with_its_error_and_named_where_its_engine_is_needed(tmp_path):
    done = _cli(tmp_path, "- {name: f, description: d, engines: [fancy], devices: [cpu], prompt: hi}\n",
                "tests.plugins.broken_plugin", "run")
    assert done.returncode == 2, "its only scenario names an engine that does not exist here: nothing to run"
    assert "plugin tests.plugins.broken_plugin failed to load: ImportError: No module named 'fancy_engine_lib'" in done.stderr
    assert "unknown engine 'fancy'" in done.stderr and "plugins that failed to load: tests.plugins.broken_plugin" in done.stderr


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
