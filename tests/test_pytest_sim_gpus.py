"""`pytest --sim-gpus N`: a project's GPU tests, written the usual way (device chosen at
import, skipif on CUDA), run on simulated GPUs on a CPU-only machine, with honest outcomes:
what needs autograd, hits a kernel gap, or goes through torch.compile or memory statistics
is skipped with why, never passed."""

from __future__ import annotations

import pytest

CONFTEST = """\
import torch

# decided at import time, as engine projects do
torch_device = "cuda" if torch.cuda.is_available() else "cpu"
"""

FIXED_INPUT = "    ids = torch.tensor([[1, 2, 3]], device=torch_device)\n"

SUITE = f"""\
import subprocess
import sys

import pytest
import torch

from conftest import torch_device

require_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="test requires CUDA")


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))


def test_runs_everywhere():
    out = tiny_model().to(torch_device)(torch.tensor([[1, 2, 3]], device=torch_device))
    assert out.shape == (1, 3, 16)


@require_gpu
def test_generate_on_gpu():
    model = tiny_model().to(torch_device)
{FIXED_INPUT}    assert model(ids).device.type == "cuda"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_split_over_two_gpus():
    emb, head = tiny_model()
    emb.to("cuda:0")
    head.to("cuda:1")
    hidden = emb(torch.tensor([[1, 2]], device="cuda:0"))
    assert head(hidden.to("cuda:1")).device == torch.device("cuda:1")


@require_gpu
def test_backward():
    model = tiny_model().to(torch_device)
    model(torch.tensor([[1, 2]], device=torch_device)).sum().backward()


@require_gpu
def test_compiled():
    model = torch.compile(tiny_model().to(torch_device))
    assert model(torch.tensor([[1]], device=torch_device)).shape == (1, 1, 16)


@require_gpu
def test_peak_memory():
    tiny_model().to(torch_device)
    assert torch.cuda.max_memory_allocated() < 2**30


@require_gpu
def test_half_polar():
    half = torch.tensor([1.0, 2.0], dtype=torch.float16, device=torch_device)
    torch.polar(half, half)  # CUDA has a float16 kernel, the CPU has none


@require_gpu
def test_samedevice_fixtures_reuse_the_session(sim_gpus):
    assert sim_gpus.count == 2 and torch.cuda.device_count() == 2


@require_gpu
def test_child_pytest_sees_the_gpus(tmp_path):
    (tmp_path / "test_child.py").write_text(
        "import torch\\ndef test_child():\\n    assert torch.cuda.device_count() == 2\\n")
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                           capture_output=True, text=True)
    assert child.returncode == 0, child.stdout
"""

GATED = ["test_generate_on_gpu", "test_split_over_two_gpus", "test_samedevice_fixtures_reuse_the_session",
         "test_child_pytest_sees_the_gpus"]
SUMMARY = ("samedevice --sim-gpus 2: 5 test(s) ran on simulated GPUs (5 passed, 0 failed); 4 of them GPU-gated "
           "(they skip without simulated GPUs); 4 did not run or count:")


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("SAMEDEVICE_PYTEST_SIM_GPUS", raising=False)  # set when this suite runs under --sim-gpus
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_engine=SUITE)
    return pytester


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args)


def _line(snippet: str) -> int:
    """The line of SUITE where `snippet` first appears."""
    return next(n for n, line in enumerate(SUITE.splitlines(), 1) if snippet in line)


def _test_line(name: str) -> int:
    """Where pytest reports a test: its decorator's line."""
    return _line(f"def {name}(") - 1


def _skip_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("SKIPPED")]


def _check_simulated_run(result: pytest.RunResult) -> None:
    result.assert_outcomes(passed=5, skipped=4)
    for name in GATED:
        assert any(line.startswith("PASSED") and line.endswith(name) for line in result.outlines), name
    skips = "\n".join(_skip_lines(result))
    assert f"test_engine.py:{_test_line('test_backward')}: needs autograd: simulated GPUs are inference-only" in skips
    assert (f"test_engine.py:{_test_line('test_compiled')}: not exercised on simulated GPUs: torch.compile called "
            f"(nothing is compiled on simulated GPUs) at test_engine.py:{_line('torch.compile(')}") in skips
    assert (f"test_engine.py:{_test_line('test_peak_memory')}: not exercised on simulated GPUs: "
            "torch.cuda.max_memory_allocated used (simulated GPUs measure no memory) at "
            f"test_engine.py:{_line('max_memory_allocated')}") in skips
    assert (f"test_engine.py:{_test_line('test_half_polar')}: kernel gap on simulated GPUs: polar: \"polar_cpu\" "
            f"not implemented for 'Half' at test_engine.py:{_line('torch.polar(')}") in skips
    assert SUMMARY in result.outlines
    assert "  1 skipped: needs autograd: simulated GPUs are inference-only" in result.outlines


def test_without_the_flag_the_gpu_tests_skip(suite: pytest.Pytester) -> None:
    result = _run(suite)
    result.assert_outcomes(passed=1, skipped=8)
    assert not any("samedevice --sim-gpus" in line for line in result.outlines)


def test_with_sim_gpus_they_run_and_what_cannot_run_says_why(suite: pytest.Pytester) -> None:
    _check_simulated_run(_run(suite, "--sim-gpus", "2"))


def test_xdist_workers_simulate_from_their_conftest_on(suite: pytest.Pytester) -> None:
    _check_simulated_run(_run(suite, "--sim-gpus", "2", "-n", "2"))


def test_a_device_bug_fails_under_sim_gpus_and_skips_without(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_engine=SUITE.replace(FIXED_INPUT, "    ids = torch.tensor([[1, 2, 3]])  # the bug\n"))
    plain = _run(suite, "-k", "generate_on_gpu")
    plain.assert_outcomes(skipped=1)  # green CI, bug unseen
    simulated = _run(suite, "-k", "generate_on_gpu", "--sim-gpus", "2")
    simulated.assert_outcomes(failed=1)
    assert "Expected all tensors to be on the same device" in simulated.stdout.str()
    assert any(line.startswith("samedevice --sim-gpus 2: 1 test(s) ran on simulated GPUs (0 passed, 1 failed); "
                               "1 of them GPU-gated") for line in simulated.outlines)


def test_the_ini_option_and_the_environment_set_it_too(pytester: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_count="import torch\n\nCOUNT = torch.cuda.device_count()\n\n"
                                   "def test_count():\n    assert COUNT == 3\n")
    monkeypatch.setenv("SAMEDEVICE_PYTEST_SIM_GPUS", "3")
    _run(pytester).assert_outcomes(passed=1)
    monkeypatch.delenv("SAMEDEVICE_PYTEST_SIM_GPUS")
    pytester.makeini("[pytest]\nsamedevice_sim_gpus = 3\n")
    _run(pytester).assert_outcomes(passed=1)
    _run(pytester, "--sim-gpus", "0").assert_outcomes(failed=1)  # 0: off, whatever the ini says


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--sim-gpus", "two"], None, "--sim-gpus takes a number of GPUs, got 'two'"),
    ([], "lots", "samedevice: $SAMEDEVICE_PYTEST_SIM_GPUS must be a number of GPUs, got 'lots'"),
    ([], "999", "samedevice: $SAMEDEVICE_PYTEST_SIM_GPUS must be from 0 (off) to "),
])
def test_a_bad_count_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                      args: list[str], env: str | None, message: str) -> None:
    if env is not None:
        monkeypatch.setenv("SAMEDEVICE_PYTEST_SIM_GPUS", env)
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = _run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


SUBTESTS = """\
import unittest

import torch


class WithSubtests(unittest.TestCase):
    def test_each_device(self):
        for index in range(torch.cuda.device_count()):
            with self.subTest(index=index):
                self.assertEqual(torch.ones(1, device=f"cuda:{index}").device.index, index)
"""


def test_subtests_are_counted_as_part_of_their_test(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SAMEDEVICE_PYTEST_SIM_GPUS", raising=False)
    pytester.makepyfile(test_subtests=SUBTESTS)
    result = _run(pytester, "--sim-gpus", "2")
    summary = [line for line in result.outlines if line.startswith("samedevice --sim-gpus")]
    assert summary and summary[0].startswith("samedevice --sim-gpus 2: 1 test(s) ran on simulated GPUs (1 passed, 0 failed)"), \
        result.outlines[-10:]
