"""The CLI end to end in subprocesses: verdicts, exit codes, results files, bad input,
an unusable results directory, and runs killed halfway (SIGINT, SIGTERM, SIGKILL)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_GREEDY

# Enough work (about 20 s at 2,500 tokens/s) that the run cannot end before the signal
# lands, even when the polling test is starved of CPU by the other xdist worker; an
# interrupted run stops after two or three cases, so the test stays short.
SLOW_CASE_COUNT = 120
SLOW_CASES = "\n".join(
    f"""\
- name: slow-{i}
  description: a case long enough to be interrupted
  devices: [cpu]
  prompt: "The cat"
  max_new_tokens: 400
  stop_at_eos: false
  model: {{max_seq_len: 512}}
"""
    for i in range(SLOW_CASE_COUNT)
)


def samedevice(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.frontends.cli", *args], cwd=cwd, capture_output=True, text=True,
                          check=check, timeout=300)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_run_writes_one_line_per_case_and_a_report(tmp_path: Path, write_scenario) -> None:
    write_scenario("tiny.yaml", TINY_GREEDY)
    out = samedevice("run", "scenarios", "--results", "res", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [run_dir] = run_dirs(tmp_path / "res")
    lines = (run_dir / "cases.jsonl").read_text().splitlines()
    cases = [json.loads(line) for line in lines]
    assert [c["id"] for c in cases] == ["tiny-greedy[reference-cpu]", "tiny-sampled[reference-cpu]"]
    assert all(c["status"] == "passed" and len(c["tokens"][0]) <= 4 for c in cases)
    info = json.loads((run_dir / "run.json").read_text())
    assert {"python", "torch", "transformers", "samedevice", "git_commit", "host", "devices", "started", "finished"} <= set(info)
    assert "tiny-greedy[reference-cpu]" in (run_dir / "report.md").read_text()
    assert 'tests="2"' in (run_dir / "junit.xml").read_text()
    assert "2 passed" in out.stderr


def test_report_command_rebuilds_the_markdown(tmp_path: Path, write_scenario) -> None:
    write_scenario("tiny.yaml", TINY_GREEDY)
    samedevice("run", "scenarios", "--results", "res", "--no-progress", cwd=tmp_path, check=True)
    [run_dir] = run_dirs(tmp_path / "res")
    out = samedevice("report", str(run_dir), cwd=tmp_path, check=True)
    assert "| `tiny-sampled[reference-cpu]` | PASS |" in out.stdout


def test_a_bad_file_is_one_line_and_the_others_still_run(tmp_path: Path, write_scenario) -> None:
    write_scenario("tiny.yaml", TINY_GREEDY)
    bad = write_scenario("bad.yaml", "name: x\ndescription: d\nprompt: hi\nmodel: {sed: 1}\n")
    out = samedevice("run", "scenarios", "--results", "res", "--no-progress", cwd=tmp_path)
    assert out.returncode == 1, "an invalid file makes the run fail"
    bad_lines = [line for line in out.stderr.splitlines() if "invalid scenario:" in line]
    assert bad_lines == [f"invalid scenario: {bad.relative_to(tmp_path)}:4:9: model.sed: unknown key 'sed' (did you mean 'seed'?)"]
    assert "Traceback" not in out.stderr
    [run_dir] = run_dirs(tmp_path / "res")
    assert len((run_dir / "cases.jsonl").read_text().splitlines()) == 2


def test_unwritable_results_directory_fails_before_any_case(tmp_path: Path, write_scenario) -> None:
    write_scenario("tiny.yaml", TINY_GREEDY)
    (tmp_path / "res").write_text("a file where the results root should be")
    out = samedevice("run", "scenarios", "--results", "res/sub", "--no-progress", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("samedevice: error: results directory res/sub is not writable")
    out = samedevice("run", "scenarios", "--results", "res", "--no-progress", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("samedevice: error: results directory res is a file, not a directory")


def test_list_shows_skip_reasons(tmp_path: Path, write_scenario) -> None:
    write_scenario("one.yaml", "name: g\ndescription: d\nprompt: hi\ndevices: [cpu, auto]\n")
    out = samedevice("list", "scenarios", cwd=tmp_path, check=True)
    lines = dict(line.split("\t") for line in out.stdout.splitlines())
    assert lines["g[reference-cpu]"] == "runs"
    assert lines["g[reference-auto]"].startswith("skip: needs 2 CUDA devices")


def test_strict_devices_turns_a_missing_gpu_into_a_failure(tmp_path: Path, write_scenario) -> None:
    write_scenario("one.yaml", "name: g\ndescription: d\nprompt: hi\ndevices: [cuda:0]\n")
    out = samedevice("run", "scenarios", "-d", "cuda:0", "--strict-devices", "--results", "res", "--no-progress", cwd=tmp_path)
    assert out.returncode == 1
    [run_dir] = run_dirs(tmp_path / "res")
    [case] = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    assert case["status"] == "failed" and "--strict-devices" in case["failures"][0]["message"]


def _start_slow_run(tmp_path: Path, write_scenario) -> tuple[subprocess.Popen, Path]:
    write_scenario("slow.yaml", SLOW_CASES)
    # SIGINT back to its default in the child: a shell starts background jobs with SIGINT
    # ignored (POSIX), Python then installs no KeyboardInterrupt handler, and a test run
    # started with `&` would see the signal ignored and the whole run finish.
    proc = subprocess.Popen([sys.executable, "-m", "harness.frontends.cli", "run", "scenarios", "--results", "res", "--no-progress"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline:
        dirs = run_dirs(tmp_path / "res") if (tmp_path / "res").exists() else []
        if dirs and (dirs[0] / "cases.jsonl").exists() and len((dirs[0] / "cases.jsonl").read_text().splitlines()) >= 2:
            return proc, dirs[0]
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run never finished two cases")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_interrupt_keeps_every_finished_case(tmp_path: Path, write_scenario, sig: int, code: int) -> None:
    proc, run_dir = _start_slow_run(tmp_path, write_scenario)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    cases = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    assert 2 <= len(cases) < SLOW_CASE_COUNT and all(c["status"] == "passed" for c in cases)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["interrupted"] == signal.Signals(sig).name and info["cases_finished"] == len(cases)
    assert "Traceback" not in err


def test_sigkill_loses_at_most_the_case_in_flight(tmp_path: Path, write_scenario) -> None:
    proc, run_dir = _start_slow_run(tmp_path, write_scenario)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    raw = (run_dir / "cases.jsonl").read_text()
    assert raw.endswith("\n"), "no torn line: each case is one write"
    cases = [json.loads(line) for line in raw.splitlines()]
    assert len(cases) >= 2 and len({c["id"] for c in cases}) == len(cases)


def test_concurrent_runs_into_one_results_root_never_clobber_each_other(tmp_path: Path, write_scenario) -> None:
    write_scenario("tiny.yaml", TINY_GREEDY)
    command = [sys.executable, "-m", "harness.frontends.cli", "run", "scenarios", "--results", "res", "--no-progress", "--isolation", "none"]
    procs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    dirs = run_dirs(tmp_path / "res")
    assert len(dirs) == 3, "each run gets its own run id"
    for run_dir in dirs:
        assert len((run_dir / "cases.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "--timout", "5"], "samedevice run: error: unrecognized arguments: --timout (did you mean --timeout?)"),
    (["list", "--enigne=x"], "samedevice list: error: unrecognized arguments: --enigne=x (did you mean --engine?)"),
    (["run", "--bogus"], "samedevice run: error: unrecognized arguments: --bogus"),
])
def test_a_mistyped_option_names_the_command_and_the_closest_option(tmp_path: Path, argv: list[str], expected: str) -> None:
    out = samedevice(*argv, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == expected
    assert out.stderr.startswith(f"usage: samedevice {argv[0]} ")  # the command's usage, not the top level's


def _interrupted_at(tmp_path: Path, target: str) -> subprocess.CompletedProcess:
    """`samedevice run` with a real SIGINT delivered from inside `target` (module:function),
    which then waits for it: an interrupt at one exact point of the run's start."""
    code = (
        "import importlib, os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIGINT ignored\n"
        f"module, name = {target!r}.split(':')\n"
        "def interrupt(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "setattr(importlib.import_module(module), name, interrupt)\n"
        "from harness.frontends.cli import main\n"
        "sys.exit(main(['run', 'scenarios', '--results', 'res', '--no-progress']))\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("target", ["harness.record.lifecycle:environment_info", "harness.record.results:write_file"])
def test_an_interrupt_while_the_run_directory_is_made_leaves_none_and_one_line(tmp_path: Path, write_scenario,
                                                                               target: str) -> None:
    write_scenario("tiny.yaml", TINY_GREEDY)
    out = _interrupted_at(tmp_path, target)
    assert out.returncode == 130, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "samedevice: interrupted (SIGINT)"
    assert "Traceback" not in out.stderr
    assert run_dirs(tmp_path / "res") == [], "no run directory without its run.json"


def test_the_wheel_ships_the_bundled_suite_and_run_bundled_finds_it_from_any_directory(tmp_path: Path) -> None:
    """`pip install samedevice` users have no scenarios/ of their own: the wheel carries the
    suite as package data, and `run --bundled` runs it from the installed package."""
    source = tmp_path / "source"
    for name in ("harness", "reference_impl", "scenarios"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("samedevice-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(n).name for n in archive.namelist() if n.startswith("harness/bundled_scenarios/")}
        archive.extractall(tmp_path / "installed")
    assert shipped == {p.name for p in (REPO / "scenarios").glob("*.yaml")}

    elsewhere = tmp_path / "elsewhere"  # no scenarios/ here
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "installed"))
    where = subprocess.run([sys.executable, "-c", "from harness.frontends.cli import bundled_scenarios as b; print(b())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(tmp_path / "installed" / "harness" / "bundled_scenarios")
    out = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "run", "--bundled", "-e", "reference", "-d", "cpu",
                          "-k", "logit-bias-greedy", "--results", "res", "--no-progress"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 passed; 0 invalid scenario problem(s)" in out.stdout + out.stderr


def test_bundled_with_scenario_paths_is_a_usage_error(tmp_path: Path) -> None:
    out = samedevice("list", "--bundled", "scenarios", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == ("samedevice: error: --bundled runs the bundled suite: give no scenario paths "
                                  "or --model with it")


def test_an_interrupt_right_after_the_run_starts_leaves_a_run_that_report_reads(tmp_path: Path, write_scenario) -> None:
    write_scenario("tiny.yaml", TINY_GREEDY)
    out = _interrupted_at(tmp_path, "harness.execute.worker:make_executor")
    assert out.returncode == 130, out.stderr
    assert "Traceback" not in out.stderr
    assert "interrupted (SIGINT): 0 of 2 cases finished and kept" in out.stderr + out.stdout
    [run_dir] = run_dirs(tmp_path / "res")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["interrupted"] == "SIGINT" and info["cases_finished"] == 0 and info["complete"] is False
    report = samedevice("report", str(run_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "interrupted by SIGINT" in report.stdout
