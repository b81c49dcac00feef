"""Arguments are checked before any case runs: timeouts, filters naming nothing known, an
empty selection, a junit path that cannot be written, missing scenario paths; usage errors
exit 2 with one line, and nothing is run or written. The same checks hold for pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_GREEDY


def samedevice(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.frontends.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def project(tmp_path: Path, write_scenario) -> Path:
    write_scenario("tiny.yaml", TINY_GREEDY)
    return tmp_path


def _usage_error(out: subprocess.CompletedProcess, project: Path, message: str) -> None:
    assert out.returncode == 2, out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (project / "res").exists(), "a usage error runs and writes nothing"


@pytest.mark.parametrize("value", ["inf", "nan", "1e12", "0", "-1", "86401", "soon"])
def test_a_timeout_that_is_not_a_finite_positive_number_is_a_usage_error(project: Path, value: str) -> None:
    out = samedevice("run", "scenarios", "--results", "res", f"--timeout={value}", cwd=project)
    _usage_error(out, project, "argument --timeout: must be")


@pytest.mark.parametrize(("option", "value", "hint"), [
    ("-d", "simm", "unknown device 'simm' (did you mean 'sim'?)"),
    ("-d", "cuda0", "unknown device 'cuda0' (did you mean 'cuda:0'?)"),
    ("-e", "refrence", "unknown engine 'refrence' (did you mean 'reference'?)"),
])
def test_a_filter_naming_nothing_known_is_a_usage_error_with_did_you_mean(project: Path, option: str, value: str,
                                                                          hint: str) -> None:
    out = samedevice("run", "scenarios", "--results", "res", option, value, cwd=project)
    _usage_error(out, project, hint)


def test_an_empty_selection_fails_unless_allowed(project: Path) -> None:
    out = samedevice("run", "scenarios", "--results", "res", "-k", "no-such-case", cwd=project)
    _usage_error(out, project, "nothing to run: no case in scenarios matches -k no-such-case (--allow-empty accepts an empty run)")
    allowed = samedevice("run", "scenarios", "--results", "res", "-k", "no-such-case", "--allow-empty", "--no-progress",
                         cwd=project)
    assert allowed.returncode == 0, allowed.stderr
    assert "no cases" in allowed.stderr


def test_a_known_device_that_selects_nothing_is_an_empty_selection(project: Path) -> None:
    out = samedevice("run", "scenarios", "--results", "res", "-d", "cuda:7", cwd=project)
    _usage_error(out, project, "nothing to run: no case in scenarios matches -d cuda:7")


def test_a_junit_path_that_is_a_directory_fails_before_any_case(project: Path) -> None:
    (project / "reports").mkdir()
    out = samedevice("run", "scenarios", "--results", "res", "--junit", "reports", cwd=project)
    _usage_error(out, project, "--junit reports is a directory, not a file")


def test_a_junit_path_under_a_file_fails_before_any_case(project: Path) -> None:
    (project / "afile").write_text("x")
    out = samedevice("run", "scenarios", "--results", "res", "--junit", "afile/junit.xml", cwd=project)
    _usage_error(out, project, "--junit afile/junit.xml: cannot create its directory")


def test_a_missing_scenario_path_is_a_usage_error(project: Path) -> None:
    out = samedevice("run", "scenarios", "nope.yaml", "--results", "res", cwd=project)
    _usage_error(out, project, "samedevice: error: no such file or directory: nope.yaml")


def test_a_bad_build_timeout_variable_is_a_usage_error(project: Path) -> None:
    out = samedevice("run", "scenarios", "--results", "res", cwd=project,
                     env=dict(os.environ, SAMEDEVICE_BUILD_TIMEOUT="forever"))
    _usage_error(out, project, "$SAMEDEVICE_BUILD_TIMEOUT must be a number of seconds, but got 'forever'")


PYPROJECT = '[tool.pytest.ini_options]\nsamedevice_paths = ["scenarios"]\n'


@pytest.mark.parametrize(("args", "message"), [
    (["--samedevice-timeout", "inf"], "argument --samedevice-timeout: must be more than 0"),
    (["--samedevice-timeout", "0"], "argument --samedevice-timeout: must be more than 0"),
    (["--samedevice-device", "simm"], "unknown device 'simm' (did you mean 'sim'?)"),
    (["--samedevice-engine", "refrence"], "unknown engine 'refrence' (did you mean 'reference'?)"),
])
def test_the_pytest_options_are_checked_the_same_way(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makefile(".toml", pyproject=PYPROJECT)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "tiny.yaml").write_text(TINY_GREEDY)
    result = pytester.runpytest_subprocess("scenarios", "-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert not (pytester.path / "results").exists()
