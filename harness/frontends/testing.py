"""samedevice inside your own tests: simulated GPUs, the transfer ledger and budget checks.

The one import path for users' tests (pytest loads the fixtures and the marker by itself
once samedevice is installed):

    import torch
    from harness.frontends.testing import assert_transfers

    @pytest.mark.samedevice(devices=["cpu", "cuda:0", "auto"])
    def test_generate_keeps_the_token_on_the_device(samedevice_target, transfer_ledger):
        model = MyModel().to(samedevice_target.device)       # cuda:0 is real, or simulated
        with transfer_ledger.track(model):                    # phases from the model's forward
            model.generate(torch.tensor([[1, 2, 3]], device=samedevice_target.device), 8)
        assert_transfers(transfer_ledger, decode={"h2d": 0, "d2h": 1, "syncs": 0})

- `@pytest.mark.samedevice(devices=[...])` runs the test once per device: `cpu`, `cuda:N`
  (a real GPU where there are N+1, else simulated GPUs), `auto` (several: `gpus=`, default
  2). The test body of a simulated device runs inside `simulated_gpus()`: `torch.cuda` says
  the GPUs exist, tensors on them are CPU tensors that report `cuda:N`, and an op across
  devices raises PyTorch's own error. Where neither exists, the test is skipped with why.
- `samedevice_target`: the device of this run (`.device`, `.devices`, `.label`, `.simulated`).
- `sim_gpus`: simulated GPUs for a test of its own (`@pytest.mark.samedevice(gpus=N)`
  sets the count; default 2), skipped with the reason where simulation cannot run.
- `transfer_ledger`: a `TrackedLedger`: `with transfer_ledger.track(module):` counts every
  host/device copy and sync (simulated, real CUDA, or host reads on the CPU) into the
  harness's phases (setup, prefill, decode steps, finish); `per_token(kind)`, `count(phase,
  kind)` read it.
- `assert_transfers(ledger, decode={...}, prefill={...})`: the scenario budget check; its
  failure reads exactly like a scenario's (`d2h: 2 per decode token (budget 1; ...) from ...`).

Simulated GPUs are for inference: the test body runs under `torch.no_grad()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.devices.ledger import PHASES, Ledger
from harness.format.labels import DeviceLabel
from harness.format.suggest import did_you_mean

__all__ = ["DeviceRun", "TrackedLedger", "assert_transfers", "device_runs", "simulated_gpus", "track_transfers"]


def simulated_gpus(count: int = 2, ledger: Ledger | None = None):
    """`harness.devices.simulated_gpus`: torch answers as if `count` CUDA GPUs existed."""
    from harness.devices import simulated_gpus as simulate

    return simulate(count=count, ledger=ledger)


def track_transfers(ledger: Ledger):
    """`harness.devices.track_transfers`: count copies and syncs into `ledger`."""
    from harness.devices import track_transfers as track

    return track(ledger)


@dataclass(frozen=True)
class DeviceRun:
    """One device of a `@pytest.mark.samedevice(devices=...)` test."""

    label: str  # cpu, cuda:0, sim:cuda:0, auto, sim:auto
    devices: tuple[str, ...]  # where to place a model: ("cpu",), ("cuda:0",), ("cuda:0", "cuda:1")
    simulated: bool
    skip: str | None = None  # why this device cannot run here
    problem: str | None = None  # what is wrong with the marker: the test fails with it

    @property
    def gpu_count(self) -> int:
        """GPUs to simulate for this run: enough for its highest cuda:N, at least 2."""
        return max(2, *(DeviceLabel.parse(d).gpus_needed(0) for d in self.devices))

    @property
    def device(self) -> str:
        return self.devices[0]

    @property
    def kind(self) -> str:
        return "cpu" if self.devices == ("cpu",) else ("auto" if len(self.devices) > 1 else "cuda")


MARKER_KEYWORDS = ("devices", "gpus")


def marker_problem(args: tuple, kwargs: Mapping[str, Any]) -> str | None:
    """What is wrong with a `@pytest.mark.samedevice(...)`, in one line, or None."""
    from harness.format.labels import MAX_GPUS, SIM_PREFIX

    usage = "use @pytest.mark.samedevice(devices=['cpu', 'cuda:0', 'auto'], gpus=2)"
    if args:
        return f"@pytest.mark.samedevice takes keywords only, got {args!r}: {usage}"
    for key in kwargs:
        if key not in MARKER_KEYWORDS:
            hint = did_you_mean(key, MARKER_KEYWORDS, otherwise=usage)
            return f"@pytest.mark.samedevice: unknown keyword {key!r} ({hint})"
    gpus = kwargs.get("gpus", 2)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS:
        return f"@pytest.mark.samedevice: gpus must be a whole number from 1 to {MAX_GPUS}, got {gpus!r}"
    if "devices" not in kwargs:
        return None
    devices = kwargs["devices"]
    if isinstance(devices, str) or not isinstance(devices, (list, tuple)) or not devices:
        return f"@pytest.mark.samedevice: devices must be a non-empty list such as ['cpu', 'cuda:0'], got {devices!r}"
    for device in devices:
        if _scenario_device(device) is None:
            hint = (" (drop the sim: prefix: a real GPU is used where present, a simulated one otherwise)"
                    if isinstance(device, str) and device.startswith(SIM_PREFIX) else "")
            return f"@pytest.mark.samedevice: device {device!r} is not cpu, cuda:N or auto{hint}"
    if "auto" in devices and gpus < 2:
        return f"@pytest.mark.samedevice: auto spreads a model over gpus >= 2 GPUs, got gpus={gpus}"
    if len(set(devices)) != len(devices):
        return f"@pytest.mark.samedevice: a device is listed twice in {list(devices)!r}"
    return None


def _scenario_device(device: object) -> DeviceLabel | None:
    try:
        return DeviceLabel.parse(device, simulated=False)
    except ValueError:
        return None


def device_runs(devices: list[str], gpus: int = 2) -> list[DeviceRun]:
    """Each asked device on real hardware where present, else on simulated GPUs."""
    import torch

    from harness.devices import unavailable_reason
    from harness.devices.state import STATE

    # Under `pytest --sim-gpus` torch answers for the session's simulated GPUs: none is real.
    have = 0 if STATE.active else (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    why_not_sim = unavailable_reason()
    runs = []
    for device in devices:
        label = DeviceLabel.parse(device, simulated=False)
        if label.kind == "cpu":
            runs.append(DeviceRun("cpu", ("cpu",), False))
            continue
        placed, needed = label.placement(gpus), label.gpus_needed(gpus)
        if have >= needed:
            runs.append(DeviceRun(device, placed, False))
        elif why_not_sim is None:
            runs.append(DeviceRun(str(label.with_simulated(True)), placed, True))
        else:
            runs.append(DeviceRun(device, placed, False, skip=f"needs {needed} CUDA device(s), {have} visible, "
                                                               f"and simulated GPUs are unavailable: {why_not_sim}"))
    return runs


@dataclass
class TrackedLedger:
    """A transfer ledger with the harness's phases, for a user's own test."""

    ledger: Ledger = field(default_factory=Ledger)
    tracker: Any = None

    @contextlib.contextmanager
    def track(self, module: Any = None) -> Iterator[TrackedLedger]:
        """Count copies and syncs of the block. With `module` (the model), its forwards mark
        the phases the way they do for an engine: the first is the prefill, each later one
        a decode step; without it, everything in the block is `setup`. Call `phase("prefill")`
        / `phase("decode")` to mark them yourself."""
        import torch

        from harness.execute.phases import PhaseTracker

        self.tracker = PhaseTracker(self.ledger)
        if module is not None:
            self.tracker.hook(module)
        try:
            with torch.no_grad(), track_transfers(self.ledger):
                self.tracker.begin_generate()
                yield self
                self.tracker.end_generate()
        finally:
            self.tracker.unhook()

    def phase(self, name: str) -> None:
        """Mark `prefill` (a prompt starts) or `decode` yourself, like an engine."""
        self.tracker.on_phase(name)

    def per_token(self, kind: str) -> float:
        """Events of `kind` (h2d, d2h, d2d, syncs; `sync` too) per complete decode step."""
        return self.ledger.per_token(_kind(kind))

    def count(self, phase: str, kind: str) -> int:
        """Events of `kind` in `phase` (load, setup, prefill, decode, finish)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}: one of {', '.join(PHASES)}")
        return self.ledger.count(phase, _kind(kind))

    @property
    def decode_steps(self) -> int:
        return self.ledger.decode_tokens

    def summary(self) -> dict[str, Any]:
        return self.ledger.to_json()


def _kind(kind: str) -> str:
    """A ledger kind from a budget's name (`syncs`) or the ledger's own (`sync`); a typo is an
    error, never a count of 0."""
    from harness.devices.ledger import BUDGET_NAMES

    if kind in BUDGET_NAMES.values():
        return kind
    if kind in BUDGET_NAMES:
        return BUDGET_NAMES[kind]
    raise ValueError(f"unknown transfer kind {kind!r}: one of {', '.join(BUDGET_NAMES)}")


def assert_transfers(ledger: TrackedLedger | Ledger, **budgets: dict[str, float]) -> None:
    """Budgets per phase (`decode=` per decode step; `setup=`, `prefill=`, `finish=` for the
    whole phase; fields h2d, d2h, d2d, syncs), checked as a scenario's are.

    Decode steps: the first forward is the prefill and each later forward starts a step that
    is complete when the next one starts, so a generate of N tokens has N - 2 complete steps
    (the last token's read-back is `finish`)."""
    from pydantic import ValidationError

    from harness.checks.judge import check_transfers
    from harness.format.scenario import PhaseBudgets

    target = ledger.ledger if isinstance(ledger, TrackedLedger) else ledger
    try:
        phase_budgets = PhaseBudgets.model_validate(budgets)
    except ValidationError as exc:
        raise TypeError(f"assert_transfers: {_budget_problem(exc)}") from None
    if phase_budgets.decode is not None and target.decode_tokens <= 0 and not target.counts:
        raise AssertionError("decode budget not judged: the ledger saw nothing; generate inside "
                             "`with transfer_ledger.track(model):`, passing the model so its forwards mark the steps")
    failures = check_transfers(phase_budgets, target).failures
    if failures:
        raise AssertionError("\n".join(f"{f.check}: {f.message}" for f in failures))


def _budget_problem(exc: Any) -> str:
    """The first problem of assert_transfers' budgets, in one line with a "did you mean"."""
    from harness.format.scenario import Budget, PhaseBudgets

    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "extra_forbidden":
        known = list(PhaseBudgets.model_fields) if len(loc) == 1 else list(Budget.model_fields)
        hint = did_you_mean(loc[-1], known, otherwise=f"one of {', '.join(known)}")
        return f"{'.'.join(loc)}: unknown key {loc[-1]!r} ({hint})"
    return f"{'.'.join(loc)}: {error['msg']}"
