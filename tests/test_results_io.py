"""Results I/O under faults: short writes completed, a failed write leaves whole lines only
and names the file, no temp file survives, the directory is fsynced when cases.jsonl is
created, damaged lines are reported (file, line, why), and the plugin's import chain holds
nothing POSIX-only."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.record.results import (
    CaseResult,
    DamagedResults,
    ResultsWriteError,
    RunDirectory,
    write_file,
)
from tests.conftest import REPO


def result(i: int) -> CaseResult:
    return CaseResult(id=f"case-{i}[reference-cpu]", scenario=f"case-{i}", engine="reference", device="cpu",
                      file="s.yaml", line=1, tokens=[[1, 2, 3] * 50], notes=["x" * 300])


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDirectory:
    return RunDirectory.create(tmp_path / "res")


def test_short_writes_are_completed(run_dir: RunDirectory, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write, calls = os.write, []

    def short_write(fd, data):  # a nearly full disk, a signal: fewer bytes than asked
        calls.append(len(data))
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short_write)
    for i in range(3):
        run_dir.append(result(i))
    monkeypatch.undo()
    assert len(calls) > 3, "the writes were short"
    assert [r.id for r in run_dir.read_cases()] == [result(i).id for i in range(3)]


def test_a_write_failing_mid_line_leaves_only_whole_lines(run_dir: RunDirectory, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir.append(result(0))
    real_write = os.write
    state = {"calls": 0}

    def disk_fills(fd, data):
        state["calls"] += 1
        if state["calls"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # half the line fits
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_fills)
    with pytest.raises(ResultsWriteError) as caught:
        run_dir.append(result(1))
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and caught.value.path == run_dir.cases_path
    assert str(caught.value) == f"cannot write {run_dir.cases_path}: No space left on device [ENOSPC]"
    raw = run_dir.cases_path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, "the torn half line was cut back"
    read = run_dir.load_cases()
    assert [r.id for r in read.results] == [result(0).id] and read.damaged == []


def test_a_failed_replace_removes_its_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(ResultsWriteError, match=r"cannot write .*run\.json: No space left on device"):
        write_file(tmp_path / "run.json", "{}")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [], "no temp file, no half-written run.json"


def test_the_directory_is_fsynced_when_the_case_file_is_created(run_dir: RunDirectory, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open, real_fsync, paths, synced = os.open, os.fsync, {}, []

    def tracking_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        paths[fd] = Path(path)
        return fd

    def tracking_fsync(fd):
        synced.append(paths.get(fd))
        return real_fsync(fd)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", tracking_fsync)
    run_dir.append(result(0))
    first = list(synced)
    synced.clear()
    run_dir.append(result(1))
    assert first == [run_dir.cases_path, run_dir.path], "line flushed, then the new directory entry"
    assert synced == [run_dir.cases_path], "later appends only flush the file"


def test_damaged_lines_are_named_by_file_line_and_reason(run_dir: RunDirectory) -> None:
    good = json.dumps(result(0).to_json()).encode()
    lines = [good, b"[1, 2]", b'"a string"', b'{"id": "x"}', b"{not json", b"\xff\xfe{}",
             json.dumps(result(1).to_json() | {"status": "bogus"}).encode(),
             json.dumps(result(2).to_json() | {"duration_s": "slow"}).encode(),
             b"[" * 100_000, b"", good.replace(b"case-0", b"case-9")]
    run_dir.cases_path.write_bytes(b"\n".join(lines) + b"\n" + good[:40])  # and a torn last line
    read = run_dir.load_cases()
    assert [r.id for r in read.results] == ["case-0[reference-cpu]", "case-9[reference-cpu]"]
    reasons = {d.line: d.reason for d in read.damaged}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9, 12]
    assert reasons[2] == "a JSON array, not an object"
    assert reasons[3] == "a JSON string, not an object"
    assert reasons[4].startswith("not a case result: field scenario: Field required")
    assert reasons[5].startswith("not JSON (Expecting property name")
    assert reasons[6].startswith("not UTF-8 (byte 0xff")
    assert reasons[7] == "not a case result: field status: Input should be 'passed', 'failed', 'error' or 'skipped'"
    assert reasons[8].startswith("not a case result: field duration_s:")
    assert reasons[9].startswith("not JSON (RecursionError")
    assert reasons[12].startswith("torn last line") and read.damaged[-1].torn
    assert str(read.damaged[0]) == f"{run_dir.cases_path}:2: a JSON array, not an object"


@pytest.mark.parametrize(("content", "reason"), [
    (b'{"run_id": ', "not JSON (Expecting value at line 1 column 12)"),
    (b"\xff", "not UTF-8 (byte 0xff at offset 0)"),
    (b"[]", "a JSON array, not an object"),
    (b'{"expected_ids": "all"}', "field 'expected_ids': expected a list of strings, got a JSON string"),
])
def test_a_damaged_run_json_is_named(run_dir: RunDirectory, content: bytes, reason: str) -> None:
    run_dir.run_path.write_bytes(content)
    with pytest.raises(DamagedResults) as caught:
        run_dir.read_run_info()
    assert str(caught.value) == f"{run_dir.run_path}: {reason}"


def test_the_pytest_plugin_imports_and_appends_without_fcntl(tmp_path: Path) -> None:
    """As on Windows: `import fcntl` fails. Loading the plugin must not need it, and an
    append still works (filelock's soft lock here; on Windows its native lock)."""
    code = (
        "import sys, warnings; sys.modules['fcntl'] = None; sys.modules['termios'] = None\n"
        "import harness.frontends.pytest_plugin\n"
        "from pathlib import Path\n"
        "from harness.record.results import CaseResult, RunDirectory\n"
        f"d = RunDirectory.create(Path({str(tmp_path)!r}))\n"
        "with warnings.catch_warnings():\n"
        "    warnings.filterwarnings('ignore', 'only soft file lock')\n"
        "    d.append(CaseResult(id='a', scenario='a', engine='e', device='cpu', file='f', line=1))\n"
        "print(len(d.read_cases()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_the_lock_file_is_removed_at_close_and_made_again_by_a_later_append(run_dir: RunDirectory) -> None:
    run_dir.append(result(0))
    assert run_dir.lock_path.exists()
    run_dir.remove_lock_file()
    assert not run_dir.lock_path.exists()
    run_dir.append(result(1))  # a benchmark's next round appends to a closed run
    assert [r.id for r in run_dir.read_cases()] == [result(0).id, result(1).id]


def test_a_lock_still_held_by_another_writer_is_left_in_place(run_dir: RunDirectory, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir.append(result(0))
    with subprocess.Popen(
        [sys.executable, "-c", "import time; from filelock import FileLock\n"
         f"with FileLock({str(run_dir.lock_path)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            monkeypatch.setattr("harness.record.results.LOCK_TIMEOUT_S", 0.5)
            run_dir.remove_lock_file()
            assert run_dir.lock_path.exists(), "never removed under a writer that holds it"
        finally:
            holder.kill()
