"""One run lifecycle for every front end (harness.record.lifecycle): `samedevice run`, pytest and
`samedevice merge` write run.json, report.md and junit.xml the same way, and pytest loads
scenario files as the CLI does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_GREEDY

PYPROJECT = """\
[tool.pytest.ini_options]
samedevice_paths = ["scenarios"]
"""


def _files(run_dir: Path) -> dict:
    info = json.loads((run_dir / "run.json").read_text())
    names = sorted(p.name for p in run_dir.iterdir())
    assert (run_dir / "report.md").is_file() and (run_dir / "junit.xml").is_file(), names
    assert names == ["cases.jsonl", "junit.xml", "report.md", "run.json"], "a closed run leaves no lock or temp file"
    return info


def test_cli_pytest_and_merge_write_the_same_run_files(pytester) -> None:
    pytester.makefile(".toml", pyproject=PYPROJECT)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "s.yaml").write_text(TINY_GREEDY)
    cli = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "run", "scenarios", "--results", "cli", "--no-progress"],
                         cwd=pytester.path, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    pytester.runpytest_subprocess("--samedevice-results", "pt", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    [cli_dir], [pt_dir] = list((pytester.path / "cli").iterdir()), list((pytester.path / "pt").iterdir())
    merged = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "merge", str(pt_dir), "--results", "merged"],
                            cwd=pytester.path, capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr
    [merged_dir] = list((pytester.path / "merged").iterdir())
    infos = {name: _files(d) for name, d in (("cli", cli_dir), ("pytest", pt_dir), ("merge", merged_dir))}
    ids = ["tiny-greedy[reference-cpu]", "tiny-sampled[reference-cpu]"]
    for front_end, info in infos.items():
        assert info["front_end"] == front_end
        assert info["complete"] is True, (front_end, info)
        assert sorted(info["expected_ids"]) == ids, f"{front_end} run.json lists the cases it was to run"
        assert info["cases_finished"] == 2 and "finished" in info and "started" in info
    for key in ("samedevice", "torch", "git_commit", "devices"):
        assert all(key in info for info in infos.values()), key


def test_pytest_refuses_a_scenario_name_defined_in_two_files_as_the_cli_does(pytester) -> None:
    pytester.makefile(".toml", pyproject=PYPROJECT)
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir()
    one = "- {name: same, description: d, devices: [cpu], prompt: hi, max_new_tokens: 2}\n"
    (scenarios / "a.yaml").write_text(one)
    (scenarios / "b.yaml").write_text(one)
    result = pytester.runpytest_subprocess("--samedevice-no-results", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*invalid scenario: *b.yaml:1:1: name: duplicate scenario name 'same' "
                                 "(first defined at *a.yaml:1)*"])
    cli = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "list", "scenarios"], cwd=pytester.path,
                         capture_output=True, text=True, timeout=120)
    assert "duplicate scenario name 'same'" in cli.stdout + cli.stderr
