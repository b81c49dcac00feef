"""`samedevice doctor --selftest`: the known workload counts exactly on simulated GPUs, and a
simulator that drops, doubles or misplaces one kind of event fails it, naming kind and phase."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import harness.devices
from harness.devices import selftest, state
from harness.frontends.cli import main

# Every module of the simulator that reports events: each imported `record` by name (found, not
# listed, so a module that starts recording is broken by these tests too).
RECORDING_MODULES = tuple(
    module for module in (importlib.import_module(f"harness.devices.{info.name}")
                          for info in pkgutil.iter_modules(harness.devices.__path__))
    if module is not state and getattr(module, "record", None) is state.record
)


def test_the_selftest_passes_on_simulated_gpus_with_every_line_matched():
    report = selftest.run_selftest("sim")
    assert report.ok, "\n".join(report.lines())
    assert report.tracker.startswith("simulated GPUs")
    assert len(report.rows) == 20, "5 phases x 4 kinds"
    profile = report.profile
    assert report.steps == (profile.decode_forwards - 1, profile.decode_forwards - 1)
    assert report.per_token == {"h2d": 3.0, "d2h": 2.0, "d2d": 1.0, "sync": 2.0}
    decode = {row.kind: (row.seen, row.seen_bytes) for row in report.rows if row.phase == "decode"}
    assert decode == {"h2d": (9, 9 * 4096), "d2h": (6, 6 * 2048), "d2d": (3, 3 * 1024), "sync": (6, 0)}, \
        "3 complete steps of 3 h2d, 2 d2h, 1 d2d, 2 syncs, with the bytes of each copy"


def test_doctor_selftest_says_which_tracker_ran_and_exits_zero(capsys):
    assert main(["doctor", "--selftest", "--tracker", "sim"]) == 0
    out = capsys.readouterr().out
    assert "selftest   tracker: simulated GPUs (harness.devices.simulated_gpus, 2 devices)" in out
    assert "PhaseTracker hooks the workload's forward" in out
    assert "  decode   d2h          6 (12288 B)        6 (12288 B)  ok" in out
    assert "selftest passed: all 20 phase x kind lines and the step count matched" in out


def test_asking_for_the_cuda_tracker_without_cuda_is_an_error_not_a_pass(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["doctor", "--selftest", "--tracker", "cuda"]) == 1
    assert "selftest   ERROR: no CUDA device is visible" in capsys.readouterr().out


def break_simulator(monkeypatch, kind: str, times: int, phase: str | None = None) -> None:
    """Make the simulator report each `kind` event `times` times (0 drops it), only in
    `phase` when given: a tracker bug planted where the events are made."""
    original = state.record

    def record(event_kind, nbytes, op):
        in_phase = phase is None or (state.STATE.ledger is not None and state.STATE.ledger.phase == phase)
        for _ in range(times if event_kind == kind and in_phase else 1):
            original(event_kind, nbytes, op)

    for module in RECORDING_MODULES:
        monkeypatch.setattr(module, "record", record)


@pytest.mark.parametrize(("kind", "times", "phase", "wrong"), [
    ("d2h", 0, None, ["prefill d2h (expected 1, seen 0)", "decode d2h (expected 6, seen 0)",
                      "finish d2h (expected 3, seen 0)"]),
    ("sync", 2, None, ["prefill sync (expected 1, seen 2)", "decode sync (expected 6, seen 12)",
                       "finish sync (expected 3, seen 6)"]),
    ("h2d", 0, "setup", ["setup h2d (expected 1, seen 0)"]),
    # recorded in decode: the last forward's step too, which the ledger then books under finish
    ("d2d", 2, "decode", ["decode d2d (expected 3, seen 6)", "finish d2d (expected 1, seen 2)"]),
])
def test_a_broken_tracker_fails_the_selftest_naming_kind_and_phase(monkeypatch, capsys, kind, times, phase, wrong):
    break_simulator(monkeypatch, kind, times, phase)
    assert main(["doctor", "--selftest", "--tracker", "sim"]) == 1
    out = capsys.readouterr().out
    verdict = next(line for line in out.splitlines() if line.startswith("selftest FAILED"))
    assert verdict == f"selftest FAILED: {len(wrong)} mismatch(es): {'; '.join(wrong)}"
    for phase_and_kind in (w.split(" (")[0].split() for w in wrong):
        row = next(line for line in out.splitlines() if line.split()[:2] == phase_and_kind)
        assert row.endswith("MISMATCH"), row


def test_a_doubled_event_names_the_call_sites_it_was_seen_at(monkeypatch):
    break_simulator(monkeypatch, "h2d", 2, "load")
    report = selftest.run_selftest("sim")
    (row,) = report.mismatches
    assert (row.phase, row.kind, row.expected, row.seen) == ("load", "h2d", 2, 4)
    assert row.sites and all("selftest.py" in site for _, site, _ in row.sites), row.sites


def test_a_lost_decode_step_fails_the_step_line(monkeypatch):
    """The phase machinery is part of what is tested: a step the ledger never ended."""
    from harness.devices.ledger import Ledger

    ended = []
    real_end_step = Ledger.end_step

    def end_step(self):
        ended.append(1)
        if len(ended) != 2:  # the second step boundary is lost
            real_end_step(self)

    monkeypatch.setattr(Ledger, "end_step", end_step)
    report = selftest.run_selftest("sim")
    assert not report.ok
    assert report.steps == (3, 2)
    assert "decode steps (expected 3, seen 2)" in report.lines()[-1]


@pytest.mark.parametrize("gpus", [1, 2])
def test_the_cuda_branch_runs_where_torch_cuda_answers(gpus):
    """No GPU here: inside simulated GPUs torch.cuda answers, so the CUDA branch's own code
    (device and peer choice, the untracked warm-up pass, the phase tracker synchronising at
    phase boundaries as the runner does on real GPUs) runs, with the simulator counting.
    Every copy line matches; the only extra syncs are the phase tracker's own
    torch.cuda.synchronize() (the simulator counts that call; whether CUDA's sync debug
    mode reports it is for a GPU run to show)."""
    from harness.devices import simulated_gpus

    with simulated_gpus(count=gpus):
        report = selftest.run_selftest("cuda")
    assert not report.error, report.error
    assert report.tracker.startswith(f"real CUDA (harness.devices.track_transfers: torch.profiler memcpy events "
                                     f"and sync debug mode, {gpus} device(s)")
    assert all(row.ok for row in report.rows if row.kind != "sync"), "\n".join(report.lines())
    assert report.steps == (3, 3)
    assert (gpus == 1) == any("D2D copies need two" in note for note in report.notes)
    extra = [site for row in report.mismatches for _, site, _ in row.sites if row.seen > row.expected]
    assert extra and any(site.startswith("harness/execute/phases.py") for site in extra), extra
    for row in report.mismatches:
        assert row.kind == "sync" and row.seen == row.expected + 1, row
