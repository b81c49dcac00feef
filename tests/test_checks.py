"""Checks on synthetic evidence, and the verdict as a table: parity judges a flip on the CPU
run's own logits, budgets name their excess call sites per phase and device kind, and
`decide()` turns outcomes, errors and scoped expectations into one status."""

from __future__ import annotations

import pytest
import torch

from harness.checks import judge as checks
from harness.checks.judge import Outcome, ParityEvidence, decide
from harness.devices.ledger import Ledger
from harness.execute.case_errors import ErrorInfo
from harness.format.scenario import ParityCheck, Scenario
from harness.record.results import Failure

INF = float("inf")


def _scenario(**fields) -> Scenario:
    return Scenario.model_validate({"name": "s", "description": "d", "prompt": "hi", **fields})


def _rows(*tops: tuple[int, float], vocab: int = 8, steps: int = 3) -> torch.Tensor:
    """Logits [steps, V] of zeros, with (token, value) set at every step."""
    rows = torch.zeros(steps, vocab)
    for token, value in tops:
        rows[:, token] = value
    return rows


def _evidence(device: list[int], cpu: list[int], **fields) -> ParityEvidence:
    return ParityEvidence(tokens=[device], texts=[""], cpu_tokens=[cpu], cpu_texts=[""], prompt_ids=[[9]], **fields)


# --- parity ---------------------------------------------------------------------------------

def test_equal_tokens_pass_parity_without_any_logits() -> None:
    out = checks.check_parity(_evidence([1, 2, 3], [1, 2, 3]), ParityCheck())
    assert not out.failures and not out.notes


def test_a_flip_the_cpus_own_logits_call_a_tie_passes_with_a_note() -> None:
    cpu = _rows((2, 5.0), (5, 5.0 - 5e-4))  # token 5 within atol of the CPU's top token 2
    out = checks.check_parity(_evidence([1, 5, 3], [1, 2, 3], cpu_steps=[cpu], device_steps=[cpu + 1e-4]), ParityCheck())
    assert not out.failures, out.failures
    assert "near tie" in out.notes[0] and "step 1" in out.notes[0]


def test_a_flip_to_a_token_the_cpu_ranked_far_below_fails_even_if_teacher_forcing_agrees() -> None:
    """The plain-forward teacher forcing of the example plugin sees no difference; the CPU
    run's own logits at the step do: the device's token was 5 logits below the top."""
    cpu = _rows((2, 5.0), (5, 0.0))
    same = _rows((2, 1.0))
    evidence = _evidence([1, 5, 3], [1, 2, 3], cpu_steps=[cpu], score_device=lambda ids: same, score_cpu=lambda ids: same)
    out = checks.check_parity(evidence, ParityCheck())
    [failure] = out.failures
    assert failure.check == "parity"
    assert "step 1: device chose 5, CPU chose 2" in failure.message
    assert "token 5 scores 0 and token 2 5: 5 below the top" in failure.message


def test_the_devices_own_step_logits_are_compared_at_the_flip() -> None:
    cpu = _rows((2, 5.0), (5, 5.0))  # an exact tie on the CPU...
    device = cpu.clone()
    device[1, 7] = 40.0  # ...but the device's generation produced different logits
    out = checks.check_parity(_evidence([1, 5, 3], [1, 2, 3], cpu_steps=[cpu], device_steps=[device]), ParityCheck())
    assert "the logits the device's generation produced at that step differ" in out.failures[0].message
    assert "up to 40 (at token 7)" in out.failures[0].message


def test_the_logit_bias_is_applied_before_judging_a_flip() -> None:
    cpu = _rows((2, 5.0), (5, 0.0))  # raw: 5 is far below 2; the scenario boosts 5 by +5
    out = checks.check_parity(_evidence([1, 5, 3], [1, 2, 3], cpu_steps=[cpu], bias={5: 5.0}), ParityCheck())
    assert not out.failures


def test_teacher_forced_logits_that_differ_fail_naming_the_step() -> None:
    cpu_logits = torch.zeros(4, 8)
    device_logits = cpu_logits.clone()
    device_logits[2, 5] = 3.0
    evidence = _evidence([1, 5, 3], [1, 2, 3], score_device=lambda ids: device_logits, score_cpu=lambda ids: cpu_logits)
    out = checks.check_parity(evidence, ParityCheck())
    assert "step 1: device chose 5, CPU chose 2" in out.failures[0].message
    assert "differ by up to 3" in out.failures[0].message


def test_equal_infinities_agree_no_false_alarm() -> None:
    suppressed = torch.zeros(4, 8)
    suppressed[:, 3] = -INF  # a token the bias or grammar suppressed, on both sides
    evidence = _evidence([1, 5, 3], [1, 2, 3], score_device=lambda ids: suppressed.clone(),
                         score_cpu=lambda ids: suppressed.clone(),  # and each run's own logits (a tie rests on them)
                         cpu_steps=[suppressed[:3].clone()], device_steps=[suppressed[:3].clone()])
    out = checks.check_parity(evidence, ParityCheck())
    assert not out.failures, out.failures
    assert "near tie" in out.notes[0]


def test_an_infinity_on_one_side_only_fails() -> None:
    cpu = torch.zeros(4, 8)
    device = cpu.clone()
    device[1, 3] = -INF
    evidence = _evidence([1, 5, 3], [1, 2, 3], score_device=lambda ids: device, score_cpu=lambda ids: cpu)
    assert "differ by up to inf" in checks.check_parity(evidence, ParityCheck()).failures[0].message


def test_a_nan_in_the_devices_logits_fails_naming_the_step_even_with_equal_tokens() -> None:
    device = torch.zeros(3, 8)
    device[2, 4] = float("nan")
    out = checks.check_parity(_evidence([1, 2, 3], [1, 2, 3], cpu_steps=[torch.zeros(3, 8)], device_steps=[device]),
                              ParityCheck())
    assert out.failures[0].message == "prompt 0, step 2: the device run's logits hold NaN"


def test_a_flip_with_no_logits_at_all_fails() -> None:
    out = checks.check_parity(_evidence([1, 5, 3], [1, 2, 3]), ParityCheck())
    assert "no logits to judge the flip by" in out.failures[0].message


def test_text_only_engines_compare_text() -> None:
    evidence = ParityEvidence(tokens=[[]], texts=["abc"], cpu_tokens=[[]], cpu_texts=["abd"], prompt_ids=[[9]],
                              token_ids=False)
    assert checks.check_parity(evidence, ParityCheck()).failures[0].check == "parity"


# --- transfers ------------------------------------------------------------------------------

def _decode_ledger(steps: int, per_step: list[tuple[str, int, str]]) -> Ledger:
    ledger = Ledger()
    ledger.set_phase("decode")
    for _ in range(steps):
        for kind, nbytes, site in per_step:
            ledger.record(kind, nbytes, op="_to_copy", site=site)  # type: ignore[arg-type]
        ledger.end_step()
    return ledger


def test_transfer_budget_failure_lists_counts_bytes_and_sites() -> None:
    ledger = _decode_ledger(8, [("d2h", 2048, "user.py:12"), ("h2d", 2048, "user.py:12"), ("d2h", 8, "gen.py:40")])
    budgets = _scenario(checks={"transfers": {"decode": {"h2d": 0, "d2h": 1}}}).checks.transfers
    assert budgets is not None
    messages = sorted(f.message for f in checks.check_transfers(budgets.for_kind("cuda"), ledger).failures)
    assert len(messages) == 2
    assert messages[0].startswith("d2h: 2 per decode token (budget 1; 2056 bytes per decode token")
    assert "_to_copy at user.py:12 x8" in messages[0]
    assert messages[1].startswith("h2d: 1 per decode token (budget 0")


def test_a_split_model_gets_its_own_budget() -> None:
    ledger = _decode_ledger(4, [("d2d", 64, "model.py:9")] * 3)
    budgets = _scenario(checks={"transfers": {"decode": {"d2d": 0, "d2h": 1}, "auto": {"decode": {"d2d": 3}}}}).checks.transfers
    assert budgets is not None
    assert budgets.for_kind("auto").decode is not None and budgets.for_kind("auto").decode.d2h == 1, "overrides merge"
    assert not checks.check_transfers(budgets.for_kind("auto"), ledger).failures
    assert "d2d: 3 per decode token (budget 0" in checks.check_transfers(budgets.for_kind("cuda"), ledger).failures[0].message


def test_a_baseline_engine_on_the_same_device_bounds_every_direction() -> None:
    mine = _decode_ledger(4, [("d2h", 8, "a.py:1"), ("sync", 0, "a.py:2")])
    theirs = _decode_ledger(4, [("d2h", 8, "b.py:1")])
    [failure] = checks.check_transfers(None, mine, theirs, "reference").failures
    assert failure.message.startswith("sync: 1 per decode token (baseline reference: 0;")


def test_a_decode_budget_with_no_complete_step_is_not_a_silent_pass() -> None:
    budgets = _scenario(checks={"transfers": {"decode": {"d2h": 1}}}).checks.transfers
    assert budgets is not None
    [failure] = checks.check_transfers(budgets.for_kind("cuda"), Ledger()).failures
    assert "decode budget not judged" in failure.message


def test_output_check_catches_overlong_and_post_eos_generation() -> None:
    out = checks.check_output([[5, 1, 7], [4, 4, 4, 4]], _scenario(max_new_tokens=3), eos_id=1)
    assert [f.message for f in out.failures] == [
        "prompt 0: generation went on after EOS (at step 1)",
        "prompt 1: 4 tokens generated, max_new_tokens is 3",
    ]


def test_several_tokens_without_a_decode_phase_fail_naming_the_engine() -> None:
    [failure] = checks.check_phases("my-engine", [[1, 2, 3]], decode_seen=False).failures
    assert failure.check == "phases" and "engine my-engine generated 3 tokens" in failure.message
    assert not checks.check_phases("my-engine", [[1]], decode_seen=False).failures


# --- the verdict, as a table ----------------------------------------------------------------

MISMATCH = ErrorInfo("RuntimeError", "Expected all tensors to be on the same device ... wrapper_CUDA_cat", mismatch=True, op="cat")
CRASH = ErrorInfo("crash", "the engine process died: killed by SIGABRT", origin="worker")
GAP = ErrorInfo("RuntimeError", '"histogram_cpu" not implemented for \'Int\'', kernel_gap="histc: not implemented at u.py:3")


def _expect_error(**fields):
    return _scenario(checks={"expect_error": fields}).checks.expect_error


def _expect_failures(*items):
    return _scenario(checks={"expect_failure": list(items)}).checks.expect_failure


def _outcome(*failed: str) -> Outcome:
    return Outcome([Failure(check, f"{check} went wrong") for check in failed])


@pytest.mark.parametrize(("outcome", "error", "expect_error", "expect_failures", "findings", "simulated", "status"), [
    (_outcome(), None, None, [], frozenset(), False, "passed"),
    (_outcome("parity"), None, None, [], frozenset(), False, "failed"),
    (checks.check_error(MISMATCH), MISMATCH, None, [], frozenset(), True, "failed"),
    (_outcome(), CRASH, None, [], frozenset(), True, "error"),
    (checks.check_error(MISMATCH), MISMATCH, {"match": "same device", "op": "cat"}, [], frozenset(), True, "passed"),
    (checks.check_error(MISMATCH), MISMATCH, {"match": "same device", "op": "add"}, [], frozenset(), True, "failed"),
    (_outcome(), None, {"match": "same device"}, [], frozenset(), True, "failed"),
    (_outcome(), CRASH, {"match": "same device"}, [], frozenset(), True, "failed"),
    (_outcome("transfers"), None, None, ["transfers"], frozenset(), True, "passed"),
    (_outcome(), None, None, ["transfers"], frozenset(), True, "failed"),
    (_outcome("json_schema"), None, None, [], frozenset({"json_schema"}), False, "passed"),
    (_outcome(), GAP, None, [], frozenset(), True, "skipped"),
    (_outcome(), GAP, None, [], frozenset(), False, "error"),
])
def test_decide(outcome, error, expect_error, expect_failures, findings, simulated, status) -> None:
    verdict = decide(outcome, error, _expect_error(**expect_error) if expect_error else None,
                     _expect_failures(*expect_failures), findings, simulated)
    assert verdict.status == status, verdict


def test_a_caught_expected_error_is_noted_and_its_mismatch_failure_dropped() -> None:
    verdict = decide(checks.check_error(MISMATCH), MISMATCH, _expect_error(match="same device", op="cat"))
    assert verdict.failures == [] and "expected error caught" in verdict.notes[0]


def test_an_expected_error_in_the_wrong_op_names_both_ops() -> None:
    verdict = decide(checks.check_error(MISMATCH), MISMATCH, _expect_error(match="same device", op="add"))
    assert "expected the error in op add, got op cat" in verdict.failures[-1].message


def test_findings_move_out_of_the_failures() -> None:
    verdict = decide(_outcome("json_schema", "parity"), None, findings=frozenset({"json_schema"}))
    assert [f.check for f in verdict.failures] == ["parity"]
    assert verdict.findings == ["json_schema: json_schema went wrong"]


def test_expectations_cover_only_their_engines_and_devices() -> None:
    scenario = _scenario(engines=["reference", "transformers"],
                         checks={"expect_failure": [{"check": "transfers", "engines": ["transformers"], "devices": ["auto"]}]})
    [scope] = scenario.checks.expect_failure
    assert scope.covers("transformers", "sim:auto") and scope.covers("transformers", "auto")
    assert not scope.covers("transformers", "sim:cuda:0")
    assert not scope.covers("reference", "sim:auto")


def test_a_scope_naming_an_engine_the_scenario_does_not_run_is_refused() -> None:
    with pytest.raises(ValueError, match="'transformers' not among this scenario's engines"):
        _scenario(checks={"expect_error": {"match": "x", "engines": ["transformers"]}})
