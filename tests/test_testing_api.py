"""Users' own tests with samedevice's fixtures and marker (harness.testing): the example a
user would copy (examples/user-tests/test_tiny_lm.py) is green on cpu and simulated GPUs,
and a device bug or a stray copy put into it is caught in the words of a scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "user-tests" / "test_tiny_lm.py"
FIXED_BIAS = "    bias = torch.zeros(VOCAB, device=device)  # built where the logits are (mistral.rs #398's fix)"
FIXED_STEP = "        ids = token"


def _run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")


def test_the_users_example_is_green_on_cpu_and_simulated_gpus(pytester) -> None:
    result = _run(pytester, EXAMPLE.read_text())
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*PASSED*[[]cpu[]]*", "*PASSED*[[]sim:cuda:0[]]*"])


def test_a_bias_left_on_the_cpu_fails_with_pytorchs_words_on_the_simulated_gpu_only(pytester) -> None:
    source = EXAMPLE.read_text()
    assert FIXED_BIAS in source
    result = _run(pytester, source.replace(FIXED_BIAS, "    bias = torch.zeros(VOCAB)  # the bug: on the CPU"))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*RuntimeError: Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
        "(when checking argument in method wrapper_CUDA_add_Tensor)",
        "FAILED*[[]sim:cuda:0[]]*"])


def test_a_stray_round_trip_fails_the_budget_like_a_scenario(pytester) -> None:
    source = EXAMPLE.read_text()
    assert FIXED_STEP in source
    result = _run(pytester, source.replace(FIXED_STEP, "        ids = token.cpu().to(device)  # the bug: a round trip"))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*transfers: h2d: 1 per decode token (budget 0; 8 bytes per decode token; over 6 decode tokens) from to at test_user.py:*",
        "*transfers: d2h: 2 per decode token (budget 1; 16 bytes per decode token; over 6 decode tokens) from cpu at test_user.py:*",
    ])


def test_the_marker_needs_the_target_fixture(pytester) -> None:
    result = _run(pytester, "import pytest\n\n@pytest.mark.samedevice(devices=['cuda:0'])\ndef test_x():\n    pass\n")
    assert result.ret != 0
    assert "parametrizes the `samedevice_target` fixture" in result.stdout.str() + result.stderr.str()
