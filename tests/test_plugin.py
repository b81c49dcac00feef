"""The pytest front end: same case ids and verdicts as the CLI, markers, readable failures,
no collection of unrelated YAML, and no case lost under xdist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_GREEDY

PYPROJECT = """\
[tool.pytest.ini_options]
samedevice_paths = ["scenarios"]
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".toml", pyproject=PYPROJECT)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "tiny.yaml").write_text(TINY_GREEDY)
    (pytester.path / "scenarios" / "gpu.yaml").write_text("name: g\ndescription: d\nprompt: hi\ndevices: [cuda:0]\nmax_new_tokens: 2\n")
    return pytester


def _cases(root: Path) -> list[dict]:
    [run_dir] = [p for p in (root / "results").iterdir() if p.is_dir()]
    return [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]


def test_pytest_and_the_cli_report_the_same_cases_and_verdicts(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("scenarios", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=3, skipped=1)  # the real cuda:0 case skips; sim:cuda:0 runs
    from_pytest = {c["id"]: c["status"] for c in _cases(project.path)}
    cli = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "run", "scenarios", "--results", "cli", "--no-progress"],
                         cwd=project.path, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    [cli_dir] = [p for p in (project.path / "cli").iterdir() if p.is_dir()]
    from_cli = {json.loads(x)["id"]: json.loads(x)["status"] for x in (cli_dir / "cases.jsonl").read_text().splitlines()}
    assert from_pytest == from_cli
    assert set(from_pytest) == {"tiny-greedy[reference-cpu]", "tiny-sampled[reference-cpu]", "g[reference-cuda:0]", "g[reference-sim:cuda:0]"}


def test_device_markers_select_cases(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("scenarios", "-p", "no:cacheprovider", "-m", "cpu", "--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert ids == ["scenarios/tiny.yaml::tiny-greedy[reference-cpu]", "scenarios/tiny.yaml::tiny-sampled[reference-cpu]"]


def test_xdist_loses_no_case(project: pytest.Pytester) -> None:
    for i in range(6):
        (project.path / "scenarios" / f"more{i}.yaml").write_text(
            f"name: more-{i}\ndescription: d\nprompt: hi {i}\ndevices: [cpu]\nmax_new_tokens: 3\n")
    result = project.runpytest_subprocess("scenarios", "-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=9, skipped=1)
    cases = _cases(project.path)
    assert len(cases) == 10 and len({c["id"] for c in cases}) == 10
    assert {c["worker"] for c in cases if c["status"] == "passed"} == {"gw0", "gw1"}
    [run_dir] = [p for p in (project.path / "results").iterdir() if p.is_dir()]
    assert not (run_dir / ".cases.jsonl.lock").exists(), "the controller removes the workers' lock file at close"


def test_pytest_n_over_no_scenario_leaves_no_results_directory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "results").exists(), "a project that only has samedevice installed gets no results/"


def test_a_failing_case_reads_as_a_verdict_not_a_traceback(project: pytest.Pytester) -> None:
    (project.path / "scenarios" / "fail.yaml").write_text(
        "name: f\ndescription: d\nprompt: hi\ndevices: [cpu]\nmax_new_tokens: 2\n"
        "checks: {expect_error: {match: 'never happens'}}\n")
    result = project.runpytest_subprocess("scenarios/fail.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*f[[]reference-cpu[]] failed (*fail.yaml:1)*", "*expect_error: expected an error matching*went undetected*"])
    assert "Traceback" not in result.stdout.str()


def test_invalid_scenario_is_one_failing_item_and_the_rest_run(project: pytest.Pytester) -> None:
    (project.path / "scenarios" / "bad.yaml").write_text("name: x\ndescription: d\nprompt: hi\nmodle: {}\n")
    result = project.runpytest_subprocess("scenarios", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*invalid scenario: *bad.yaml:4:1: modle: unknown key 'modle' (did you mean 'model'?)"])


def test_yaml_outside_scenario_paths_is_never_collected(project: pytest.Pytester) -> None:
    (project.path / "config").mkdir()
    (project.path / "config" / "ci.yaml").write_text("jobs: {build: {runs-on: ubuntu}}\n")
    result = project.runpytest_subprocess("config", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_a_scenario_outside_the_project_writes_results_where_the_cli_would(tmp_path: Path) -> None:
    """Run from the project on a file beside it: pytest's rootdir is then the two's common
    ancestor (no ini file applies), and results/ must not land there, above the project."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    (elsewhere / "s.yaml").write_text("name: g\ndescription: d\nprompt: hi\ndevices: [cpu]\nmax_new_tokens: 2\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "../elsewhere/s.yaml", "-p", "no:cacheprovider"],
                         cwd=project, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (tmp_path / "results").exists(), "results/ above the project"
    assert len(_cases(project)) == 1
    assert "results in results/" in out.stdout
