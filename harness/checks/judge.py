"""The checks a case goes through, as pure functions of their evidence, and the verdict.

Each check returns an `Outcome` (failures and notes) and changes nothing; `decide()` turns
the outcomes, the error and the scenario's expectations into the case's status. A check
never switches itself off: where its evidence is missing, it says so in a note or fails.

- mismatch: a device error (PyTorch's wording, the op, the user's line);
- output: max_new_tokens respected, nothing after EOS;
- phases: a tracked case that generated several tokens has a decode phase;
- placement: the weights live where the case asked (`harness.engines.weights`);
- transfers: per-phase budgets (decode per token), per device kind, and no more per token
  than a baseline engine on the same device;
- parity: token ids equal to the CPU run's; a flip is a near tie only if the CPU run's own
  logits at that step rank the device's token within tolerance of the CPU's token, the
  device's logits at that step agree with the CPU's, and the engine's teacher-forced
  logits agree too. Equal infinities agree; a NaN on one side fails, naming the step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from harness.devices.ledger import BUDGET_NAMES, Ledger
from harness.execute.case_errors import ErrorInfo
from harness.format.scenario import (
    Budget,
    ExpectError,
    ExpectFailure,
    ParityCheck,
    PhaseBudgets,
    Scenario,
)
from harness.record.results import Failure, Status


@dataclass
class Outcome:
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, check: str, message: str) -> None:
        self.failures.append(Failure(check, message))

    def add(self, other: Outcome) -> Outcome:
        self.failures += other.failures
        self.notes += other.notes
        return self


# --- mismatch, output, phases, placement ----------------------------------------------------

def check_error(error: ErrorInfo | None) -> Outcome:
    out = Outcome()
    if error is not None and error.mismatch:
        out.fail("mismatch", error.one_line())
    if error is not None and error.race:  # simulated GPUs: a read no stream or host sync ordered
        out.fail("race", error.one_line())
    return out


def check_output(tokens: list[list[int]], scenario: Scenario, eos_id: int) -> Outcome:
    out = Outcome()
    if not scenario.checks.output:
        return out
    for index, row in enumerate(tokens):
        where = f"prompt {index}: " if len(tokens) > 1 else ""
        if len(row) > scenario.max_new_tokens:
            out.fail("output", f"{where}{len(row)} tokens generated, max_new_tokens is {scenario.max_new_tokens}")
        if eos_id in row[:-1] and scenario.stop_at_eos:
            out.fail("output", f"{where}generation went on after EOS (at step {row.index(eos_id)})")
        if not scenario.stop_at_eos and len(row) != scenario.max_new_tokens and not scenario.features.beam_search:
            out.fail("output", f"{where}{len(row)} tokens generated, expected exactly {scenario.max_new_tokens} (stop_at_eos: false)")
    return out


def check_phases(engine: str, tokens: list[list[int]], decode_seen: bool) -> Outcome:
    """On a tracked device, several tokens need a decode phase, or no decode budget means
    anything: every copy would be counted under prefill."""
    out = Outcome()
    longest = max((len(t) for t in tokens), default=0)
    if longest > 1 and not decode_seen:
        out.fail("phases", f"engine {engine} generated {longest} tokens but the harness saw no decode phase: "
                           "no forward of its main module (Engine.modules()[0]) could be hooked and it never "
                           "called request.on_phase('decode'); per-token transfer counts cannot be judged")
    return out


def check_placement(engine: str, problem: str | None, found_any: bool, torch_engine: bool) -> Outcome:
    out = Outcome()
    if not torch_engine:
        out.notes.append(f"placement not checked: engine {engine} does not run on torch, its weights are not visible")
    elif not found_any:
        out.fail("placement", f"engine {engine} runs on torch, but no torch module or tensor was found on it after "
                              "load: return the model from Engine.modules()")
    elif problem is not None:
        out.fail("placement", problem)
    return out


# --- transfers ------------------------------------------------------------------------------

def check_transfers(budgets: PhaseBudgets | None, ledger: Ledger, baseline: Ledger | None = None,
                    baseline_engine: str | None = None) -> Outcome:
    out = Outcome()
    for phase in PhaseBudgets.model_fields:
        budget: Budget | None = getattr(budgets, phase) if budgets is not None else None
        if budget is None:
            continue
        if phase == "decode" and ledger.decode_tokens <= 0:
            out.fail("transfers", "decode budget not judged: no complete decode step was seen "
                                  "(a step is complete when the next one starts: generate at least 3 tokens)")
            continue
        for name, kind in BUDGET_NAMES.items():
            limit = getattr(budget, name)
            if limit is not None and _seen(ledger, phase, kind) > limit + 1e-9:
                out.fail("transfers", _excess(ledger, phase, kind, f"budget {limit:g}"))
    if baseline is not None:  # per decode token, every direction and the syncs
        for kind in BUDGET_NAMES.values():
            allowed = baseline.per_token(kind)
            if ledger.per_token(kind) > allowed + 1e-9:
                out.fail("transfers", _excess(ledger, "decode", kind, f"baseline {baseline_engine}: {allowed:g}"))
    return out


def _seen(ledger: Ledger, phase: str, kind: str) -> float:
    return ledger.per_token(kind) if phase == "decode" else float(ledger.count(phase, kind))


def _excess(ledger: Ledger, phase: str, kind: str, limit: str) -> str:
    unit = " per decode token" if phase == "decode" else f" in {phase}"
    nbytes = ledger.bytes_per_token(kind) if phase == "decode" else ledger.bytes[(phase, kind)]
    sites = ", ".join(f"{op or '?'} at {site or '?'} x{n}" for op, site, n in ledger.top_sites(phase, kind))
    return (f"{kind}: {_seen(ledger, phase, kind):g}{unit} ({limit}; {nbytes:g} bytes{unit}; "
            f"over {ledger.decode_tokens} decode tokens) from {sites or 'unknown sites'}")


# --- parity ---------------------------------------------------------------------------------

Scorer = Callable[[list[int]], torch.Tensor]


@dataclass
class ParityEvidence:
    """What parity is judged on. `*_steps`: per prompt, the logits [steps, V] the main model
    produced at each step of the real generation (None where they could not be recorded)."""

    tokens: list[list[int]]
    texts: list[str]
    cpu_tokens: list[list[int]]
    cpu_texts: list[str]
    prompt_ids: list[list[int]]
    cpu_steps: list[torch.Tensor] | None = None
    device_steps: list[torch.Tensor] | None = None
    score_device: Scorer | None = None  # the engine's teacher forcing, on the device
    score_cpu: Scorer | None = None
    token_ids: bool = True
    greedy: bool = True
    bias: dict[int, float] = field(default_factory=dict)
    repetition_penalty: float | None = None
    stop_id: int | None = None


def check_parity(e: ParityEvidence, config: ParityCheck) -> Outcome:
    out = Outcome()
    if not e.token_ids:
        if e.texts != e.cpu_texts:
            index = next(i for i, (a, b) in enumerate(zip(e.texts, e.cpu_texts, strict=False)) if a != b) \
                if len(e.texts) == len(e.cpu_texts) else 0
            out.fail("parity", f"text differs from the CPU run (prompt {index}): {e.texts[index][:80]!r} vs "
                               f"{e.cpu_texts[index][:80]!r}" if e.texts and e.cpu_texts else "text differs from the CPU run")
        return out
    for side, steps in (("device", e.device_steps), ("CPU", e.cpu_steps)):
        nan = _first_nan(steps)
        if nan is not None:
            out.fail("parity", f"prompt {nan[0]}, step {nan[1]}: the {side} run's logits hold NaN")
            return out
    for index, (mine, theirs) in enumerate(zip(e.tokens, e.cpu_tokens, strict=False)):
        if _without_stop(mine, e.stop_id) == _without_stop(theirs, e.stop_id):
            continue  # equal, or one engine keeps the final EOS and the other does not
        step = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs)))
        failure = _judge_flip(e, config, index, step, out)
        if failure is not None:
            out.fail("parity", failure)
            return out
    return out


def _without_stop(tokens: list[int], stop_id: int | None) -> list[int]:
    return tokens[:-1] if tokens and stop_id is not None and tokens[-1] == stop_id else tokens


def check_teacher_forcing(tokens: list[list[int]], prompt_ids: list[list[int]], score: Scorer) -> Outcome:
    """Greedy on the CPU: at every step, the argmax of the engine's teacher-forced logits is
    the token it generated (its scoring and its generation are the same computation)."""
    out = Outcome()
    for index, (prompt, generated) in enumerate(zip(prompt_ids, tokens, strict=True)):
        if not generated:
            continue
        logits = score(prompt + generated)
        start = len(prompt) - 1
        chosen = logits[start : start + len(generated)].argmax(dim=-1).tolist()
        for step, (want, got) in enumerate(zip(generated, chosen, strict=False)):
            if want != got:
                out.fail("teacher_forcing", f"prompt {index}, step {step}: the argmax of the engine's teacher-forced "
                                            f"logits is {got}, but it generated {want}: teacher_forced_logits does not "
                                            "score the way generate() chooses")
                break
    return out


def _token(tokens: list[int], step: int, stop_id: int | None) -> int | None:
    """The token at `step`; past the end, the stop token (None when there is none)."""
    return tokens[step] if step < len(tokens) else stop_id


def _judge_flip(e: ParityEvidence, config: ParityCheck, index: int, step: int, out: Outcome) -> str | None:
    """None for a near tie (noted), else the failure message."""
    mine, theirs = _token(e.tokens[index], step, e.stop_id), _token(e.cpu_tokens[index], step, e.stop_id)
    where = (f"prompt {index}, step {step}: device chose {_name(mine)}, CPU chose {_name(theirs)}")
    evidence = []
    cpu_row = _row(e.cpu_steps, index, step)
    if cpu_row is not None and e.greedy and mine is not None and theirs is not None:
        scores = _processed(cpu_row, e.bias, e.repetition_penalty, e.prompt_ids[index] + e.cpu_tokens[index][:step])
        top, chosen = float(scores[theirs]), float(scores[mine])
        gap = 0.0 if top == chosen else top - chosen
        tolerance = config.atol + config.rtol * abs(top)
        if not gap <= tolerance:
            return (f"output diverges from the CPU run at {where}; on the CPU run's own logits at that step "
                    f"token {mine} scores {chosen:.6g} and token {theirs} {top:.6g}: {gap:.4g} below the top, "
                    f"beyond atol={config.atol:g}, rtol={config.rtol:g}")
        evidence.append(f"on the CPU's logits token {mine} is {gap:.3g} below token {theirs}")
    device_row = _row(e.device_steps, index, step)
    if cpu_row is not None and device_row is not None:
        worst = _disagreement(device_row[None], cpu_row[None], config)
        if worst is not None:
            return (f"output diverges from the CPU run at {where}; the logits the device's generation produced at "
                    f"that step differ from the CPU run's by up to {worst[0]:.4g} (at token {worst[2]}), beyond "
                    f"atol={config.atol:g}, rtol={config.rtol:g}")
        evidence.append("the device's own logits at that step agree")
    if e.score_device is not None and e.score_cpu is not None:
        ids = e.prompt_ids[index] + e.cpu_tokens[index]
        start = len(e.prompt_ids[index]) - 1
        a, b = e.score_device(ids)[start:-1], e.score_cpu(ids)[start:-1]
        worst = _disagreement(a, b, config)
        if worst is not None:
            return (f"output diverges from the CPU run at {where}; teacher-forced logits differ by up to "
                    f"{worst[0]:.4g} (first beyond atol={config.atol:g}, rtol={config.rtol:g} at step {worst[1]})")
        evidence.append("the engine's teacher-forced logits agree")
    if cpu_row is None:  # a tie rests on the CPU run's own logits, never on the engine's word alone
        word = f" ({'; '.join(evidence)}: the engine's word alone)" if evidence else ""
        return (f"tokens differ from the CPU run at {where} (no logits to judge the flip by: the CPU run's own logits "
                f"at that step were not recorded{word}): return the module whose forward produces the logits first "
                "from modules() (the harness records its output at every step), or hand the logits back as generate() "
                "computes them, Generation(step_logits=[one [steps, V] tensor per prompt])")
    if not evidence:
        return (f"tokens differ from the CPU run at {where} (no logits to judge the flip by: the engine's forwards "
                "could not be recorded and it cannot score tokens)")
    out.notes.append(f"tokens differ at {where}; a near tie, not a bug: {'; '.join(evidence)}")
    return None


def _name(token: int | None) -> str:
    return "a stop" if token is None else str(token)


def _row(steps: list[torch.Tensor] | None, index: int, step: int) -> torch.Tensor | None:
    if steps is None or index >= len(steps) or step >= steps[index].shape[0]:
        return None
    return steps[index][step]


def _first_nan(steps: Sequence[torch.Tensor] | None) -> tuple[int, int] | None:
    for index, rows in enumerate(steps or []):
        bad = torch.isnan(rows).flatten(1).any(dim=1).nonzero()
        if bad.numel():
            return index, int(bad[0, 0])
    return None


def _processed(row: torch.Tensor, bias: dict[int, float], penalty: float | None, seen: list[int]) -> torch.Tensor:
    """The scores greedy decoding chose from: the logits with the scenario's bias and
    repetition penalty (transformers' rule) applied; a grammar mask allows both tokens."""
    scores = row.clone()
    for token, value in bias.items():
        if 0 <= token < scores.shape[0]:
            scores[token] += value
    if penalty:
        index = torch.tensor(sorted(set(seen)), dtype=torch.long)
        picked = scores[index]
        scores[index] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return scores


def _disagreement(a: torch.Tensor, b: torch.Tensor, config: ParityCheck) -> tuple[float, int, int] | None:
    """(largest |a - b|, row, column of the first entry beyond tolerance), or None when the
    logits agree. Equal entries agree, infinities included; a NaN never does."""
    a, b = a.float(), b.float()
    equal = a == b
    diff = torch.where(equal, torch.zeros_like(a), (a - b).abs())
    bad = ~equal & ~(diff <= config.atol + config.rtol * b.abs())
    if not bool(bad.any()):
        return None
    row, column = (int(v) for v in bad.nonzero()[0])
    finite = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    return float(finite.max()), row, column


# --- the verdict ----------------------------------------------------------------------------

@dataclass
class Verdict:
    status: Status
    failures: list[Failure]
    notes: list[str]
    findings: list[str]
    reason: str = ""  # why skipped


def decide(outcome: Outcome, error: ErrorInfo | None, expect_error: ExpectError | None = None,
           expect_failures: Sequence[ExpectFailure] = (), findings: frozenset[str] = frozenset(),
           simulated: bool = False) -> Verdict:
    """The status from the checks' outcome, the error, the expectations that cover this case
    and the checks the engine declares as known findings."""
    failures, notes = list(outcome.failures), list(outcome.notes)
    if error is not None and error.kernel_gap and simulated and expect_error is None:
        return Verdict("skipped", [], notes, [],  # the simulation's kernel_gaps note is among them
                       f"kernel gap: a GPU-only code path hit a kernel the CPU lacks ({error.kernel_gap})")
    error_explained = error is None or error.mismatch or error.race
    if expect_error is not None:
        failures = [f for f in failures if f.check not in ("mismatch", "race")]
        if error is None:
            failures.append(Failure("expect_error", f"expected an error matching /{expect_error.match}/ but generation "
                                                    "succeeded: the bug went undetected"))
        elif not re.search(expect_error.match, error.message):
            failures.append(Failure("expect_error", f"expected an error matching /{expect_error.match}/, got {error.one_line()}"))
        elif expect_error.op is not None and error.op != expect_error.op:
            failures.append(Failure("expect_error", f"expected the error in op {expect_error.op}, got op {error.op}: {error.one_line()}"))
        else:
            notes.append(f"expected error caught: {error.one_line()}")
        error_explained = True
    for expected in expect_failures:
        caught = [f for f in failures if f.check == expected.check]
        if caught:
            failures = [f for f in failures if f.check != expected.check]
            notes += [f"expected {expected.check} failure caught: {f.message}" for f in caught]
        else:
            failures.append(Failure("expect_failure", f"expected the {expected.check} check to fail (the injected bug), "
                                                      "but it passed: the bug went undetected"))
    known = [f for f in failures if f.check in findings]
    failures = [f for f in failures if f.check not in findings]
    status: Status = "error" if not error_explained else ("failed" if failures else "passed")
    return Verdict(status, failures, notes, [f"{f.check}: {f.message}" for f in known])
