"""A first run without YAML: the standard suite, as far as the engine declares its features,
written out by `samedevice init scenarios` as a file that loads and runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.format.loader import load_file
from harness.frontends.standard_suite import SUITE, suite_for


def test_the_suite_keeps_what_the_engine_declares_and_says_what_it_leaves_out() -> None:
    kept, left_out = suite_for("transformers", {"family": "llama"})
    names = [s["name"] for s in kept]
    assert names == ["std-greedy", "std-sampled", "std-logit-bias", "std-json-schema", "std-beam-search"]
    assert left_out == ["std-static-cache: engine transformers does not declare kv_cache",
                        "std-offloaded-cache: engine transformers does not declare kv_cache"]
    assert len(suite_for("reference", {"family": "llama"})[0]) == len(SUITE)


def test_init_scenarios_writes_an_editable_file_that_loads_and_refuses_to_overwrite(tmp_path) -> None:
    target = tmp_path / "scenarios" / "standard.yaml"
    command = [sys.executable, "-m", "harness.frontends.cli", "init", "scenarios", "-e", "reference", "-o", str(target)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = load_file(target)
    assert not loaded.errors and [s.scenario.name for s in loaded.scenarios] == [s["name"] for s in SUITE]
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists (--force to overwrite)" in again.stderr


def test_run_model_that_cannot_be_used_is_one_usage_line_naming_the_flag(tmp_path) -> None:
    for model, expected in ((tmp_path / "missing", "no such directory"), (tmp_path, "no config.json")):
        done = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "run", "--model", str(model), "--results",
                               str(tmp_path / "res")], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith(f"samedevice: error: --model {model}: ") and expected in line, line
        assert not (tmp_path / "res").exists(), "nothing ran"


def test_run_model_keeps_one_suite_file_per_model_that_later_runs_reuse(tmp_path) -> None:
    from harness.format.scenario import ModelSpec
    from harness.models import tinymodel

    model = tinymodel.model_dir(ModelSpec(size="tiny"))
    env = {**os.environ, "SAMEDEVICE_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "harness.frontends.cli", "run", "--model", str(model), "-d", "cpu", "-k", "std-greedy",
               "--results", str(tmp_path / "res"), "--no-progress"]
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        assert "1 passed" in done.stderr, done.stderr
    [suite] = (tmp_path / "cache" / "suites").iterdir()  # the second run reused the first's file
    announced = [line for line in done.stderr.splitlines() if line.startswith("samedevice: the standard suite for")]
    assert announced and str(suite) in announced[0]
    assert [s.scenario.name for s in load_file(suite).scenarios] == [s["name"] for s in suite_for("transformers", {
        "path": str(model.resolve())})[0]]


def test_each_scenario_judges_the_engines_per_token_profile() -> None:
    kept, _ = suite_for("reference", {"family": "llama"})
    checks = {s["name"]: s["checks"]["transfers"] for s in kept}
    assert checks["std-greedy"] == {"decode": {"h2d": 0, "d2h": 1, "syncs": 0}, "cuda": {"decode": {"d2d": 0}},
                                    "auto": {"decode": {"d2d": 2}}}
    assert checks["std-json-schema"]["decode"] == {"h2d": 1, "d2h": 1, "syncs": 0}, "the grammar mask's upload"
    transformers = {s["name"]: s["checks"]["transfers"] for s in suite_for("transformers", {"family": "llama"})[0]}
    assert transformers["std-greedy"] == {"decode": {"h2d": 0, "d2h": 0, "syncs": 1}, "cuda": {"decode": {"d2d": 0}}}
    assert all("checks" not in s for s in suite_for("llamacpp", {"family": "llama"})[0]), "copies not visible off torch"


def _plugin_env(tmp_path) -> dict[str, str]:
    repo = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "SAMEDEVICE_PLUGINS": "tests.plugins.transfer_engines", "SAMEDEVICE_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}


def test_run_model_fails_a_stray_round_trip_per_step_and_passes_the_engine_without_it(tmp_path) -> None:
    from harness.format.scenario import ModelSpec
    from harness.models import tinymodel

    model = tinymodel.model_dir(ModelSpec(size="tiny"))
    for engine, code in (("stray-round-trip", 1), ("no-stray-round-trip", 0)):
        done = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "run", "--model", str(model), "-e", engine, "-d", "sim",
                               "-k", "std-greedy", "--results", str(tmp_path / "res"), "--no-progress"],
                              capture_output=True, text=True, timeout=300, env=_plugin_env(tmp_path))
        assert done.returncode == code, done.stderr
        stray = "transfers: h2d: 1 per decode token (budget 0;"
        assert (stray in done.stderr) == (engine == "stray-round-trip"), done.stderr
        assert ("2 failed" if code else "2 passed") in done.stderr, done.stderr


def test_run_with_only_an_engine_no_scenario_lists_runs_the_standard_suite_and_says_so(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "run", "-e", "stray-round-trip", "-d", "cpu", "-d", "sim:cuda:0",
                           "-k", "std-greedy", "--results", str(tmp_path / "res"), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=_plugin_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    [said] = [line for line in done.stderr.splitlines() if "running the standard suite" in line]
    assert "no scenario in " in said and " lists engine stray-round-trip: running the standard suite for a generated " \
        "tiny model: " in said, said
    assert "1 passed, 1 failed" in done.stderr and "from to at tests/plugins/transfer_engines.py:" in done.stderr
    listed = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "list", "-e", "reference", "-d", "cpu"],
                            capture_output=True, text=True, timeout=120, env=_plugin_env(tmp_path), cwd=tmp_path)
    assert listed.returncode == 0 and "standard suite" not in listed.stderr, "an engine the scenarios list: them"
    assert "std-greedy" not in listed.stdout
