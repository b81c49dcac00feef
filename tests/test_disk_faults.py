"""A full disk or a read-only filesystem mid-run (injected: tests/fault_injection.py): the
run stops with one line naming the file, exit 2; every finished case is intact, no line is
torn, no temp file is left, and run.json and the report say the run is incomplete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CASES = "\n".join(f"- name: c{i}\n  description: d\n  devices: [cpu]\n  prompt: 'case {i}'\n  max_new_tokens: 2\n"
                  for i in range(6))


def _run_with_fault(tmp_path: Path, errno_name: str, mode: str, after: int) -> subprocess.CompletedProcess:
    (tmp_path / "s.yaml").write_text(CASES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "tests.fault_injection", errno_name, mode, str(after), "res", "--",
         "run", "s.yaml", "--results", "res", "--no-progress", "--isolation", "none"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize(("errno_name", "mode", "what"), [
    ("ENOSPC", "persistent", "No space left on device [ENOSPC]"),
    ("EROFS", "persistent", "Read-only file system [EROFS]"),
    ("ENOSPC", "once", "No space left on device [ENOSPC]"),
])
def test_a_failing_results_disk_stops_the_run_cleanly(tmp_path: Path, errno_name: str, mode: str, what: str) -> None:
    out = _run_with_fault(tmp_path, errno_name, mode, after=3)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    [run_dir] = list((tmp_path / "res").iterdir())
    cases_file = run_dir / "cases.jsonl"
    stopped = [line for line in out.stderr.splitlines() if str(cases_file.relative_to(tmp_path)) in line]
    assert stopped == [f"samedevice: error: cannot write {cases_file.relative_to(tmp_path)}: {what}; "
                       "the run stopped after 3 of 6 cases (every finished case is kept)"]
    progress = [line for line in out.stderr.splitlines() if line.startswith("[")]
    assert progress == [f"[{i}/6] passed  c{i - 1}[reference-cpu]" for i in (1, 2, 3)], "passed means recorded"

    raw = cases_file.read_text()
    assert raw.endswith("\n"), "no torn line"
    assert [json.loads(line)["id"] for line in raw.splitlines()] == [f"c{i}[reference-cpu]" for i in range(3)]
    assert [p.name for p in run_dir.iterdir() if ".tmp" in p.name or p.name == ".write-test"] == [], "no temp file left"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["complete"] is False and info["selected_ids"] == [f"c{i}[reference-cpu]" for i in range(6)]

    from harness.frontends.cli import main

    assert main(["report", str(run_dir), "-o", str(tmp_path / "again.md")]) == 0
    report = (tmp_path / "again.md").read_text()
    assert "**INCOMPLETE: 3 of 6 cases ran; 3 never ran" in report
    if mode == "once":  # the disk recovered: run.json was finalised and names the failure
        assert info["finished"] and info["write_error"].startswith(f"cannot write {cases_file.relative_to(tmp_path)}")
        assert "**INCOMPLETE: 3 of 6 cases ran; 3 never ran (stopped: cannot write" in (run_dir / "report.md").read_text()
    else:  # nothing could be written: said once per file, run.json still says incomplete
        assert "finished" not in info
        assert f"samedevice: error: cannot write {(run_dir / 'run.json').relative_to(tmp_path)}: {what}; " \
               "run.json keeps saying the run is incomplete" in out.stderr
