"""Checks on synthetic results: parity tells a near tie from a divergence, budgets name
their excess call sites, expectations invert the checks for fault scenarios."""

from __future__ import annotations

import torch

from harness import checks
from harness.errors import ErrorInfo
from harness.ledger import Ledger
from harness.results import CaseResult
from harness.scenario import ParityCheck, Scenario


def _result(tokens: list[list[int]]) -> CaseResult:
    return CaseResult(id="s[e-d]", scenario="s", engine="e", device="d", file="f.yaml", line=1, tokens=tokens)


def _scenario(**fields) -> Scenario:
    return Scenario.model_validate({"name": "s", "description": "d", "prompt": "hi", **fields})


def _scorer(logits: torch.Tensor):
    return lambda ids: logits


def test_equal_tokens_pass_parity_without_scoring() -> None:
    result = _result([[1, 2, 3]])
    checks.check_parity(result, _result([[1, 2, 3]]), ParityCheck(), None, None, [[9]])
    assert result.status == "passed" and not result.notes


def test_a_near_tie_flip_passes_with_a_note() -> None:
    cpu_logits = torch.zeros(4, 8)
    device_logits = cpu_logits + 5e-4  # within atol 1e-3
    result = _result([[1, 5, 3]])
    checks.check_parity(result, _result([[1, 2, 3]]), ParityCheck(), _scorer(device_logits), _scorer(cpu_logits), [[9]])
    assert result.status == "passed", result.failures
    assert "near tie" in result.notes[0]


def test_a_real_divergence_fails_parity_naming_the_step() -> None:
    cpu_logits = torch.zeros(4, 8)
    device_logits = cpu_logits.clone()
    device_logits[2, 5] = 3.0
    result = _result([[1, 5, 3]])
    checks.check_parity(result, _result([[1, 2, 3]]), ParityCheck(), _scorer(device_logits), _scorer(cpu_logits), [[9]])
    assert result.status == "failed"
    assert result.failures[0].check == "parity"
    assert "step 1: device chose 5, CPU chose 2" in result.failures[0].message
    assert "differ by up to 3" in result.failures[0].message


def test_text_only_engines_compare_text() -> None:
    result, oracle = _result([[]]), _result([[]])
    result.texts, oracle.texts = ["abc"], ["abd"]
    checks.check_parity(result, oracle, ParityCheck(), None, None, [[9]])
    assert result.failures[0].check == "parity"


def test_transfer_budget_failure_lists_counts_bytes_and_sites() -> None:
    ledger = Ledger()
    ledger.set_phase("decode")
    for _ in range(8):
        ledger.record("d2h", 2048, op="_to_copy", site="user.py:12")
        ledger.record("h2d", 2048, op="_to_copy", site="user.py:12")
        ledger.record("d2h", 8, op="_to_copy", site="gen.py:40")
    ledger.decode_tokens = 8
    result = _result([[1] * 9])
    checks.check_transfers(result, _scenario(checks={"transfers": {"decode": {"h2d": 0, "d2h": 1}}}), ledger)
    messages = sorted(f.message for f in result.failures)
    assert len(messages) == 2
    assert messages[0].startswith("d2h: 2 per decode token (budget 1; 2056 bytes per decode token")
    assert "_to_copy at user.py:12 x8" in messages[0]
    assert messages[1].startswith("h2d: 1 per decode token (budget 0")


def test_within_budget_passes() -> None:
    ledger = Ledger(decode_tokens=4)
    ledger.set_phase("decode")
    for _ in range(4):
        ledger.record("d2h", 8)
    result = _result([[1] * 5])
    checks.check_transfers(result, _scenario(checks={"transfers": {"decode": {"d2h": 1, "h2d": 0, "syncs": 0}}}), ledger)
    assert result.status == "passed"


def test_output_check_catches_overlong_and_post_eos_generation() -> None:
    scenario = _scenario(max_new_tokens=3)
    result = _result([[5, 1, 7], [4, 4, 4, 4]])
    checks.check_output(result, scenario, eos_id=1)
    assert [f.message for f in result.failures] == [
        "prompt 0: generation went on after EOS (at step 1)",
        "prompt 1: 4 tokens generated, max_new_tokens is 3",
    ]


def test_expected_error_turns_a_caught_mismatch_into_a_pass() -> None:
    scenario = _scenario(checks={"expect_error": {"match": "same device", "op": "cat"}})
    error = ErrorInfo("RuntimeError", "Expected all tensors to be on the same device ... wrapper_CUDA_cat", mismatch=True, op="cat")
    result = _result([])
    checks.check_error(result, error)
    checks.apply_expectations(result, scenario, error)
    assert result.status == "passed" and "expected error caught" in result.notes[0]


def test_expected_error_that_never_happens_fails() -> None:
    scenario = _scenario(checks={"expect_error": {"match": "same device"}})
    result = _result([[1]])
    checks.apply_expectations(result, scenario, None)
    assert result.status == "failed" and "went undetected" in result.failures[0].message


def test_expected_error_in_the_wrong_op_fails() -> None:
    scenario = _scenario(checks={"expect_error": {"match": "same device", "op": "cat"}})
    error = ErrorInfo("RuntimeError", "Expected all tensors to be on the same device", mismatch=True, op="add")
    result = _result([])
    checks.check_error(result, error)
    checks.apply_expectations(result, scenario, error)
    assert result.status == "failed" and "expected the error in op cat, got op add" in result.failures[-1].message


def test_expected_transfer_failure_passes_only_when_the_budget_fails() -> None:
    scenario = _scenario(checks={"expect_failure": ["transfers"]})
    caught = _result([[1]])
    caught.fail("transfers", "h2d: 1 per decode token")
    checks.apply_expectations(caught, scenario, None)
    assert caught.status == "passed"
    missed = _result([[1]])
    checks.apply_expectations(missed, scenario, None)
    assert missed.status == "failed" and missed.failures[0].check == "expect_failure"
