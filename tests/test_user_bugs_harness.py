"""The four founding bugs and a silent round trip, in a user's module, run through the
harness on simulated GPUs: each fails with the op, the devices and the user's line; with
the upstream fix the same scenario passes with CPU parity; nothing fails on `cpu`."""

from __future__ import annotations

import pytest

import tests.plugins.user_bug_engines  # noqa: F401  (registers the user-bugs engine)
from harness.execute.case import OracleCache, RunOptions, run_case
from harness.execute.cases import Case, DeviceTarget
from harness.format.loader import LoadedScenario
from harness.format.scenario import DeviceSpec, Scenario
from tests.sim_user_bugs import marked_line


def _run(tags: list[str], device: str, simulated: bool = True, **fields):
    scenario = Scenario.model_validate({"name": "user", "description": "d", "prompt": "The", "max_new_tokens": 6,
                                        "engines": ["user-bugs"], "tags": tags, "stop_at_eos": False, **fields})
    case = Case(LoadedScenario(scenario, "user.yaml", 1), "user-bugs", DeviceTarget(DeviceSpec(device=device), simulated))
    return run_case(case, RunOptions(), OracleCache())


BUGS = [
    # tag, device, op, devices as PyTorch orders them
    ("bug:1", "cuda:0", "add", ["cpu", "cuda:0"]),
    ("bug:2", "cuda:0", "cat", ["cuda:0", "cpu"]),
    ("bug:3", "auto", "index_select", ["cpu", "cuda:0"]),
    ("bug:4", "cuda:0", "mm", ["cuda:0", "cpu"]),
]


@pytest.mark.parametrize(("tag", "device", "op", "devices"), BUGS)
def test_each_founding_bug_fails_with_op_devices_and_the_users_line(tag, device, op, devices) -> None:
    result = _run([tag], device)
    assert result.status == "failed", result.summary_line()
    [failure] = result.failures
    assert failure.check == "mismatch"
    assert result.error is not None
    assert result.error.op == op
    assert sorted(result.error.devices) == sorted(devices)
    assert result.error.site == f"tests/sim_user_bugs.py:{marked_line('BUG ' + tag[-1])}"
    assert result.error.message.startswith("Expected all tensors to be on the same device")


@pytest.mark.parametrize(("tag", "device"), [(tag, device) for tag, device, _, _ in BUGS])
def test_the_upstream_fix_passes_with_cpu_parity(tag, device) -> None:
    result = _run([tag, "fixed"], device)
    cpu = _run([tag], "cpu", simulated=False)
    assert result.status == "passed", result.summary_line()
    assert cpu.status == "passed", "no false alarm on cpu, even with the bug in place"
    assert result.tokens == cpu.tokens


def test_the_cuda0_index_against_a_cuda1_layer_is_caught_too() -> None:
    from harness.devices import simulated_gpus
    from harness.execute.case_errors import describe_error
    from tests.sim_user_bugs import reorder_cache

    with simulated_gpus(count=2):
        import torch

        layers = [torch.zeros(3, 2, device="cuda:0"), torch.zeros(3, 2, device="cuda:1")]
        with pytest.raises(RuntimeError) as caught:
            reorder_cache(layers, 3, fixed=1)
    info = describe_error(caught.value)
    assert info.mismatch and info.op == "index_select" and set(info.devices) == {"cuda:0", "cuda:1"}


# The clean loop reads each token back with .item(): one sync per token, nothing else.
BUDGET = {"checks": {"transfers": {"decode": {"h2d": 0, "d2h": 0, "syncs": 1}}}}


def test_a_silent_round_trip_passes_untracked_but_fails_the_budget_with_counts_and_site() -> None:
    untracked = _run(["stray"], "cuda:0")
    assert untracked.status == "passed", "the stray copy raises nothing"
    budgeted = _run(["stray"], "cuda:0", **BUDGET)
    assert budgeted.status == "failed"
    messages = sorted(f.message for f in budgeted.failures)
    site = f"tests/sim_user_bugs.py:{marked_line('STRAY')}"
    assert messages[0].startswith("d2h: 1 per decode token (budget 0; 128 bytes per decode token; over 6 decode tokens)")
    assert messages[1].startswith("h2d: 1 per decode token (budget 0; 128 bytes per decode token; over 6 decode tokens)")
    assert all(site in m for m in messages), messages


def test_without_the_round_trip_the_budget_holds() -> None:
    assert _run(["stray", "fixed"], "cuda:0", **BUDGET).status == "passed"


def test_a_gpu_only_path_missing_a_cpu_kernel_is_a_reported_kernel_gap_not_a_failure() -> None:
    result = _run(["gpu-only-path"], "cuda:0")
    assert result.status == "skipped", result.summary_line()
    assert result.reason.startswith("kernel gap: a GPU-only code path hit a kernel the CPU lacks")
    assert any(note.startswith("kernel_gaps: ") for note in result.notes)
    assert _run(["gpu-only-path"], "cpu", simulated=False).status == "passed"


def test_a_silent_numeric_divergence_fails_parity_through_teacher_forcing() -> None:
    result = _run(["diverge"], "cuda:0")
    assert result.status == "failed", result.summary_line()
    [failure] = result.failures
    assert failure.check == "parity"
    assert "output diverges from the CPU run at prompt 0, step 0" in failure.message
    assert "device chose 63" in failure.message
    assert "teacher-forced logits differ by up to 500" in failure.message


def test_a_near_tie_flip_on_the_device_is_a_note_not_a_failure() -> None:
    result = _run(["near-tie"], "cuda:0")
    cpu = _run(["near-tie"], "cpu", simulated=False)
    assert result.tokens != cpu.tokens, "the nudge must flip the tied argmax for this test to mean anything"
    assert result.status == "passed", result.summary_line()
    assert any("a near tie, not a bug" in note for note in result.notes)
