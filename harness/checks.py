"""The checks a case result goes through, each adding `Failure`s to the result.

mismatch (a device error), parity (against the CPU run), transfers (per-token budget),
output (length, EOS), and the expectations of fault scenarios, which invert the others.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from harness.errors import ErrorInfo
from harness.ledger import KINDS, Ledger
from harness.results import CaseResult, Failure
from harness.scenario import Budget, ParityCheck, Scenario

_BUDGET_KINDS = {"h2d": "h2d", "d2h": "d2h", "d2d": "d2d", "syncs": "sync"}


def check_error(result: CaseResult, error: ErrorInfo | None) -> None:
    if error is None:
        return
    if error.mismatch:
        result.fail("mismatch", error.one_line())
    else:
        result.status = "error"


def check_output(result: CaseResult, scenario: Scenario, eos_id: int) -> None:
    if not scenario.checks.output:
        return
    for index, tokens in enumerate(result.tokens):
        where = f"prompt {index}: " if len(result.tokens) > 1 else ""
        if len(tokens) > scenario.max_new_tokens:
            result.fail("output", f"{where}{len(tokens)} tokens generated, max_new_tokens is {scenario.max_new_tokens}")
        if eos_id in tokens[:-1] and scenario.stop_at_eos:
            result.fail("output", f"{where}generation went on after EOS (at step {tokens.index(eos_id)})")
        if not scenario.stop_at_eos and len(tokens) != scenario.max_new_tokens and not scenario.features.beam_search:
            result.fail("output", f"{where}{len(tokens)} tokens generated, expected exactly {scenario.max_new_tokens} (stop_at_eos: false)")


def check_transfers(result: CaseResult, scenario: Scenario, ledger: Ledger) -> None:
    budgets = scenario.checks.transfers
    if budgets is None:
        return
    for phase, budget in (("decode", budgets.decode), ("prefill", budgets.prefill)):
        if budget is None:
            continue
        for message in _over_budget(ledger, phase, budget):
            result.fail("transfers", message)


def _over_budget(ledger: Ledger, phase: str, budget: Budget) -> list[str]:
    messages = []
    for field_name, kind in _BUDGET_KINDS.items():
        limit = getattr(budget, field_name)
        if limit is None:
            continue
        if phase == "decode":
            seen, unit = ledger.per_token(kind), " per decode token"
        else:
            seen, unit = float(ledger.count(phase, kind)), " in prefill"
        if seen <= limit + 1e-9:
            continue
        nbytes = ledger.bytes_per_token(kind) if phase == "decode" else ledger.bytes[(phase, kind)]
        sites = ", ".join(f"{op or '?'} at {site or '?'} x{n}" for op, site, n in ledger.top_sites(phase, kind))
        messages.append(
            f"{kind}: {seen:g}{unit} (budget {limit:g}; {nbytes:g} bytes{unit}; "
            f"over {ledger.decode_tokens} decode tokens) from {sites or 'unknown sites'}"
        )
    return messages


def check_parity(
    result: CaseResult,
    oracle: CaseResult,
    config: ParityCheck,
    score_device: Callable[[list[int]], torch.Tensor] | None,
    score_cpu: Callable[[list[int]], torch.Tensor] | None,
    prompt_ids: list[list[int]],
) -> None:
    """Tokens equal to the CPU run's, or else teacher-forced logits within tolerance."""
    if oracle.status in ("error", "skipped") or oracle.error:
        result.notes.append(f"parity not checked: the CPU run did not complete ({oracle.summary_line()})")
        return
    if not result.tokens or not any(result.tokens):
        if result.texts != oracle.texts:
            result.fail("parity", f"text differs from the CPU run: {result.texts[0][:80]!r} vs {oracle.texts[0][:80]!r}")
        return
    for index, (mine, theirs) in enumerate(zip(result.tokens, oracle.tokens, strict=False)):
        if mine == theirs:
            continue
        step = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs)))
        where = f"prompt {index}, step {step}: device chose {mine[step] if step < len(mine) else 'EOS/stop'}, CPU chose {theirs[step] if step < len(theirs) else 'EOS/stop'}"
        if score_device is None or score_cpu is None:
            result.fail("parity", f"tokens differ from the CPU run at {where} (engine cannot score tokens, so no logit comparison)")
            return
        ids = prompt_ids[index] + theirs
        device_logits, cpu_logits = score_device(ids), score_cpu(ids)
        start = len(prompt_ids[index]) - 1
        a, b = device_logits[start:-1], cpu_logits[start:-1]
        excess = (a - b).abs() - (config.atol + config.rtol * b.abs())
        worst = float((a - b).abs().max())
        if bool((excess <= 0).all()):
            result.notes.append(f"tokens differ at {where}; teacher-forced logits agree (max |dlogit| {worst:.3g}): a near tie, not a bug")
            continue
        position = int(excess.max(dim=-1).values.argmax())
        result.fail(
            "parity",
            f"output diverges from the CPU run at {where}; teacher-forced logits differ by up to {worst:.4g} "
            f"(first beyond atol={config.atol:g}, rtol={config.rtol:g} at step {position})",
        )
        return


def apply_expectations(result: CaseResult, scenario: Scenario, error: ErrorInfo | None) -> None:
    """Fault scenarios pass only when the harness catches the injected bug."""
    expect = scenario.checks.expect_error
    if expect is not None:
        if error is None:
            result.fail("expect_error", f"expected an error matching /{expect.match}/ but generation succeeded: the bug went undetected")
            return
        if not re.search(expect.match, error.message):
            result.failures = [f for f in result.failures if f.check != "mismatch"]
            result.status = "failed"
            result.fail("expect_error", f"expected an error matching /{expect.match}/, got {error.one_line()}")
            return
        if expect.op is not None and error.op != expect.op:
            result.status = "failed"
            result.fail("expect_error", f"expected the error in op {expect.op}, got op {error.op}: {error.one_line()}")
            return
        result.failures = [f for f in result.failures if f.check != "mismatch"]
        result.status = "passed" if not result.failures else "failed"
        result.notes.append(f"expected error caught: {error.one_line()}")
        return
    for check in scenario.checks.expect_failure:
        caught = [f for f in result.failures if f.check == check]
        if caught:
            result.failures = [f for f in result.failures if f.check != check]
            result.notes += [f"expected {check} failure caught: {f.message}" for f in caught]
        else:
            result.failures.append(_missed(check))
    if scenario.checks.expect_failure and result.status != "error":
        result.status = "failed" if result.failures else "passed"


def _missed(check: str) -> Failure:
    return Failure("expect_failure", f"expected the {check} check to fail (the injected bug), but it passed: the bug went undetected")


__all__ = ["KINDS", "apply_expectations", "check_error", "check_output", "check_parity", "check_transfers"]
