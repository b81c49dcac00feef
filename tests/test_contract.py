"""The engine contract, enforced: user-style engines that each break it one way
(tests/plugins/contract_engines.py) are caught with a clear message, through the runner
and through `samedevice check-engine`; clean engines pass with steady-state counts."""

from __future__ import annotations

import pytest

import tests.plugins.contract_engines  # registers the contract-* engines
import tests.plugins.user_bug_engines  # noqa: F401  (registers the user-bugs toy engine)
from harness.execute.case import Companions, RunOptions, run_case
from harness.execute.cases import Case, DeviceTarget
from harness.format.loader import LoadedScenario
from harness.format.scenario import DeviceSpec, Scenario
from harness.frontends.check_engine import Line, check_engine, device_targets


def _run(engine: str, device: str, simulated: bool = True, companions: Companions | None = None, **fields):
    data = {"name": "contract", "description": "d", "prompt": "The quick brown fox", "max_new_tokens": 8,
            "stop_at_eos": False, "engines": [engine], **fields}
    case = Case(LoadedScenario(Scenario.model_validate(data), "contract.yaml", 1), engine,
                DeviceTarget(DeviceSpec(device=device), simulated))
    return run_case(case, RunOptions(), companions if companions is not None else Companions())


@pytest.mark.parametrize("engine", ["contract-clean", "reference", "transformers"])
@pytest.mark.parametrize("device", ["cuda:0", "auto"])
def test_a_clean_engine_has_the_same_whole_number_counts_at_4_and_at_16_tokens(engine, device) -> None:
    short, long = (_run(engine, device, max_new_tokens=n) for n in (4, 16))
    assert short.status == long.status == "passed", (short.summary_line(), long.summary_line())
    assert short.ledger is not None and long.ledger is not None
    counts = [{k: r.ledger.per_token(k) for k in ("h2d", "d2h", "d2d", "sync")} for r in (short, long)]  # type: ignore[union-attr]
    assert counts[0] == counts[1], f"per-token counts depend on max_new_tokens: {counts}"
    assert all(v.is_integer() for v in counts[1].values()), f"not a whole number per token: {counts[1]}"
    assert (short.ledger.decode_tokens, long.ledger.decode_tokens) == (2, 14), "complete decode steps: n - 2"


def test_an_engine_that_marks_no_phase_still_has_its_decode_budget_judged() -> None:
    result = _run("contract-no-marks", "cuda:0", checks={"transfers": {"decode": {"h2d": 0, "d2h": 1}}})
    messages = sorted(f.message for f in result.failures if f.check == "transfers")
    assert len(messages) == 2, result.summary_line()
    assert messages[0].startswith("d2h: 2 per decode token (budget 1")
    assert messages[1].startswith("h2d: 1 per decode token (budget 0")
    assert "tests/plugins/contract_engines.py" in messages[1], "the stray copy's call site is named"


def test_a_device_only_divergence_behind_a_plain_forward_teacher_forcing_fails_parity() -> None:
    result = _run("contract-diverge", "cuda:0")
    [failure] = [f for f in result.failures if f.check == "parity"]
    assert "device chose 100" in failure.message
    assert "on the CPU run's own logits at that step token 100 scores" in failure.message, failure.message


def test_an_engine_that_ignores_auto_fails_placement_showing_the_device_map() -> None:
    result = _run("contract-ignores-auto", "auto")
    [failure] = [f for f in result.failures if f.check == "placement"]
    assert "auto over cuda:0, cuda:1 asked for the model split over 2 devices, but no weights on cuda:1" in failure.message
    assert "cuda:0 (" in failure.message and "model.layers.0-1" in failure.message, failure.message


def test_an_engine_the_harness_cannot_hook_and_that_marks_nothing_fails_phases() -> None:
    result = _run("contract-unhookable", "cuda:0", checks={"transfers": {"decode": {"h2d": 0}}})
    assert any(f.check == "phases" and "engine contract-unhookable generated 8 tokens" in f.message
               for f in result.failures), result.summary_line()


def test_a_baseline_engine_on_the_same_device_bounds_the_copies_per_token() -> None:
    companions = Companions()
    result = _run("contract-no-marks", "auto", companions=companions, engines=["reference", "contract-no-marks"],
                  checks={"transfers": {"baseline": "reference"}})
    messages = [f.message for f in result.failures if f.check == "transfers"]
    assert any(m.startswith("h2d: 1 per decode token (baseline reference: 0;") for m in messages), messages
    reference = _run("reference", "auto", companions=companions, engines=["reference", "contract-no-marks"],
                     checks={"transfers": {"baseline": "reference"}})
    assert reference.status == "passed", "the baseline engine is not judged against itself"


def test_a_suppressed_token_is_minus_inf_on_both_sides_no_false_alarm() -> None:
    companions = Companions()
    result = _run("user-bugs", "cuda:0", companions=companions, prompt="The", max_new_tokens=6, tags=["near-tie", "suppress"])
    assert result.status == "passed", result.summary_line()
    assert any("near tie" in n for n in result.notes), result.notes
    assert not any("nan" in n for n in result.notes)


# --- check-engine ---------------------------------------------------------------------------

def _battery(engine: str, devices: list[str]) -> list[Line]:
    companions = Companions()
    return check_engine(engine, device_targets(engine, devices), lambda case, options: run_case(case, options, companions), lambda line: None)


def _failed(lines: list[Line]) -> list[str]:
    return [f"{line.what}: {line.detail}" for line in lines if line.verdict == "FAIL"]


def test_check_engine_passes_a_clean_engine() -> None:
    lines = _battery("contract-clean", ["cpu", "sim:cuda:0", "sim:auto"])
    assert not _failed(lines), _failed(lines)
    assert any(line.what.startswith("phases visible on sim:auto") and line.verdict == "PASS" for line in lines)


def test_check_engine_never_passes_a_line_on_a_device_where_generation_fails() -> None:
    lines = _battery("contract-cpu-bias", ["cpu", "sim:cuda:0"])
    for start in ("loads and generates on sim:cuda:0", "phases visible on sim:cuda:0", "deterministic on sim:cuda:0 (greedy"):
        [line] = [one for one in lines if one.what.startswith(start)]
        assert line.verdict == "FAIL", line
        assert "Expected all tensors to be on the same device" in line.detail, line


def test_check_engine_takes_device_groups_as_run_does_and_always_checks_the_cpu() -> None:
    labels = {tuple(wanted): [t.label for t in device_targets("contract-clean", wanted)]
              for wanted in ([], ["sim"], ["cpu", "sim"], ["sim:auto"], ["cuda:0"], ["cpu"])}
    assert labels[()] == labels[("sim",)] == labels[("cpu", "sim")] == ["cpu", "sim:cuda:0", "sim:auto"]
    assert labels[("sim:auto",)] == ["cpu", "sim:auto"]
    assert labels[("cuda:0",)] == ["cpu", "sim:cuda:0"], "a scenario device names its simulated twin"
    assert labels[("cpu",)] == ["cpu"]
    with pytest.raises(ValueError, match=r"-d gpu selects no device contract-clean runs on here \(there are: cpu, "):
        device_targets("contract-clean", ["gpu"])


def test_check_engine_refuses_a_device_filter_that_selects_nothing_in_one_line(tmp_path) -> None:
    import subprocess
    import sys

    for devices, expected in ((["bogus"], "unknown device 'bogus'"), (["gpu"], "-d gpu selects no device reference")):
        done = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "check-engine", "reference",
                               *[a for d in devices for a in ("-d", d)]], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and not done.stdout


@pytest.mark.parametrize(("engine", "devices", "line", "detail"), [
    ("contract-diverge", ["cpu", "sim:cuda:0"], "parity with the CPU run on sim:cuda:0", "device chose 100"),
    ("contract-ignores-auto", ["cpu", "sim:auto"], "placement honoured on sim:auto", "no weights on cuda:1"),
    ("contract-unhookable", ["cpu", "sim:cuda:0"], "phases visible on sim:cuda:0", "no decode phase"),
    ("contract-bad-tf", ["cpu"], "teacher forcing consistent with generation", "teacher-forced logits is"),
    ("contract-no-marks", ["cpu", "sim:cuda:0"], "phases visible on sim:cuda:0", None),
])
def test_check_engine_catches_each_breach(engine, devices, line, detail) -> None:
    lines = _battery(engine, devices)
    [found] = [one for one in lines if one.what.startswith(line)]
    if detail is None:  # no marks is allowed: the harness's own phases apply
        assert found.verdict == "PASS", found
        assert "h2d 1, d2h 2" in found.detail, "its stray round trip shows in the steady-state counts"
    else:
        assert found.verdict == "FAIL", found
        assert detail in found.detail, found
