"""`samedevice doctor --selftest`: a workload of known transfers through the active tracker.

A tiny `nn.Module` whose forward makes an exact, known set of copies and syncs runs the way
the harness runs an engine: `harness.execute.phases.PhaseTracker` hooks its forward (one prompt
forward, then one forward per decode step), so the real phase and step machinery books
the events, inside the tracker the harness would use for that device:

- simulated GPUs (`harness.devices.simulated_gpus`, 2 devices), where no CUDA is visible;
- real CUDA (`harness.devices.track_transfers`: torch.profiler memcpy events, sync debug
  mode warnings, replayed in time order with the phase and step marks), where it is. The
  phase tracker synchronises at phase boundaries there, as the runner's does.

The ledger is then compared with the profile line by line, per phase and kind: counts and
bytes, and the number of complete decode steps. Same-device work (a contiguous clone, a
matmul) runs in every forward and must count as nothing. One profile for both trackers:
that is the ledger's contract, so a tracker that miscounts on a real GPU fails here,
loudly, instead of passing transfer budgets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from harness.devices.ledger import KINDS, PHASES, Ledger

# Bytes of one copy of each kind (float32 elements x 4): distinct, so a copy booked under
# the wrong kind shows in the byte totals too.
H2D_ELEMENTS, D2H_ELEMENTS, D2D_ELEMENTS = 1024, 512, 256
PROMPT = [1, 2, 3, 4]
DECODE_FORWARDS = 4  # complete steps: 3 (the last forward's step ends in `finish`)
VOCAB = 16


@dataclass(frozen=True)
class Work:
    """Copies and syncs of one piece of the workload (counts per kind)."""

    h2d: int = 0
    d2h: int = 0
    d2d: int = 0
    sync: int = 0

    def scaled(self, times: int) -> Work:
        return Work(self.h2d * times, self.d2h * times, self.d2d * times, self.sync * times)

    def __add__(self, other: Work) -> Work:
        return Work(self.h2d + other.h2d, self.d2h + other.d2h, self.d2d + other.d2d, self.sync + other.sync)

    def count(self, kind: str) -> int:
        return int(getattr(self, kind))

    def describe(self) -> str:
        parts = [f"{self.count(k)} {k}" for k in ("h2d", "d2h", "d2d") if self.count(k)]
        parts += [f"{self.sync} sync{'s' if self.sync != 1 else ''}"] if self.sync else []
        return ", ".join(parts) or "nothing"


BYTES_PER_COPY = {"h2d": H2D_ELEMENTS * 4, "d2h": D2H_ELEMENTS * 4, "d2d": D2D_ELEMENTS * 4, "sync": 0}


@dataclass(frozen=True)
class Profile:
    """The workload's plan: what each phase does, in the harness's phase terms."""

    load: Work = Work(h2d=2)  # module.to(device): its two buffers
    setup: Work = Work(h2d=1)  # the prompt's ids uploaded before the first forward
    prefill: Work = Work(h2d=2, d2h=1, d2d=1, sync=1)  # the prompt's forward
    step: Work = Work(h2d=3, d2h=2, d2d=1, sync=2)  # each decode forward
    finish: Work = Work(d2h=1, sync=1)  # after the last forward: the result read back
    decode_forwards: int = DECODE_FORWARDS

    def without_d2d(self) -> Profile:
        """The profile where only one GPU is there (a D2D copy needs two)."""
        return Profile(self.load, self.setup, Work(self.prefill.h2d, self.prefill.d2h, 0, self.prefill.sync),
                       Work(self.step.h2d, self.step.d2h, 0, self.step.sync), self.finish, self.decode_forwards)

    def expected(self) -> dict[str, Work]:
        """What the ledger must hold per phase: a decode step is one forward and what follows
        it up to the next forward, so the last forward's work is booked under `finish`."""
        steps = self.decode_forwards - 1
        return {"load": self.load, "setup": self.setup, "prefill": self.prefill,
                "decode": self.step.scaled(steps), "finish": self.step + self.finish}

    def expected_bytes(self, phase: str, kind: str) -> int:
        """Bytes of the phase's copies of `kind` (the prompt's ids are int64, not float32)."""
        work = self.expected()[phase]
        if phase == "setup" and kind == "h2d":
            return work.h2d * len(PROMPT) * 8
        if phase == "finish" and kind == "d2h":  # the steps' copies and the result's ids
            return self.step.d2h * BYTES_PER_COPY["d2h"] + self.finish.d2h * (len(PROMPT) + DECODE_FORWARDS) * 8
        return work.count(kind) * BYTES_PER_COPY[kind]


class Workload(torch.nn.Module):
    """The engine's main model, as the harness sees it: a forward of several positions is
    the prompt, of one position a decode step. Each forward makes its phase's copies and
    syncs, then computes logits on its own device (same-device work, never a transfer)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, profile: Profile, peer: torch.device | None) -> None:
        super().__init__()
        self.profile, self.peer = profile, peer
        self.register_buffer("weight", torch.ones(H2D_ELEMENTS))
        self.register_buffer("bias", torch.zeros(H2D_ELEMENTS))
        self.host = torch.full((H2D_ELEMENTS,), 2.0)  # host data the forwards upload (no buffer: stays on the CPU)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [1, S] -> logits [1, S, VOCAB]
        self.transfers(self.profile.prefill if ids.shape[1] > 1 else self.profile.step)
        mixed = self.weight.clone()[: VOCAB * VOCAB].view(VOCAB, VOCAB)  # same device: counts nothing
        scores = ids.float().unsqueeze(-1).expand(*ids.shape, VOCAB) @ mixed  # [1, S, VOCAB]
        return scores + self.bias[:VOCAB]

    def transfers(self, work: Work) -> None:
        device = self.weight.device
        for _ in range(work.h2d):
            self.host.to(device)  # H2D, 4096 B
        for _ in range(work.d2h):
            self.weight[:D2H_ELEMENTS].to("cpu")  # D2H, 2048 B
        for _ in range(work.d2d):
            assert self.peer is not None, "a D2D copy needs a second device"
            self.weight[:D2D_ELEMENTS].to(self.peer)  # D2D, 1024 B
        for index in range(work.sync):
            if index % 2 == 0:
                torch.cuda.synchronize(device)  # a host wait on the device
            else:
                torch.cuda.current_stream(device).synchronize()  # a host wait on the stream


def drive(model: Workload, device: torch.device, tracker) -> list[int]:
    """Generate the way an engine under the harness does: load, setup, a prompt forward,
    decode forwards, finish. Returns the ids read back."""
    model.to(device)  # load
    tracker.hook(model)
    tracker.begin_generate()
    ids = torch.tensor([PROMPT])
    for _ in range(model.profile.setup.h2d):
        ids = torch.tensor([PROMPT]).to(device)  # setup: the prompt's ids
    logits = model(ids)  # prefill
    for _ in range(model.profile.decode_forwards):
        token = logits[:, -1:].argmax(-1)  # stays on the device
        ids = torch.cat([ids, token], dim=1)
        logits = model(token)  # one decode step
    result: list[int] = []
    for _ in range(model.profile.finish.d2h):
        result = ids.to("cpu").tolist()[0]  # finish: the result read back
    for _ in range(model.profile.finish.sync):
        torch.cuda.synchronize(device)
    tracker.end_generate()
    tracker.unhook()
    return result


# --- running and judging ----------------------------------------------------------------------


@dataclass
class Line:
    phase: str
    kind: str
    expected: int
    seen: int
    expected_bytes: int
    seen_bytes: int
    sites: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.expected == self.seen and self.expected_bytes == self.seen_bytes


@dataclass
class SelftestReport:
    tracker: str  # which tracker ran, in words
    profile: Profile
    rows: list[Line] = field(default_factory=list)  # one per phase and kind
    steps: tuple[int, int] = (0, 0)  # expected, seen complete decode steps
    per_token: dict[str, float] = field(default_factory=dict)  # what transfer budgets read
    notes: list[str] = field(default_factory=list)
    error: str = ""  # the workload could not run (or the tracker is not available)

    @property
    def mismatches(self) -> list[Line]:
        return [row for row in self.rows if not row.ok]

    @property
    def ok(self) -> bool:
        return not self.error and not self.mismatches and self.steps[0] == self.steps[1]

    def lines(self) -> list[str]:
        """The report as printed: which tracker, the workload, one line per phase and kind."""
        profile = self.profile
        out = [f"selftest   tracker: {self.tracker}",
               "selftest   phases: harness.execute.phases.PhaseTracker hooks the workload's forward (1 prompt forward, "
               f"{profile.decode_forwards} decode forwards)",
               f"selftest   workload: load {profile.load.describe()}; setup {profile.setup.describe()}; "
               f"prefill forward {profile.prefill.describe()}; each decode forward {profile.step.describe()}; "
               f"finish {profile.finish.describe()}; same-device clone and matmul in every forward (count nothing)"]
        out += [f"selftest   note: {note}" for note in self.notes]
        if self.error:
            return [*out, f"selftest   ERROR: {self.error}"]
        out.append(f"  {'phase':8} {'kind':5} {'expected':>18} {'seen':>18}")
        for line in self.rows:
            verdict = "ok" if line.ok else "MISMATCH"
            out.append(f"  {line.phase:8} {line.kind:5} {_amount(line.expected, line.expected_bytes):>18} "
                       f"{_amount(line.seen, line.seen_bytes):>18}  {verdict}")
            if not line.ok:
                out += [f"{'':20}seen at {site} ({op}) x{n}" for op, site, n in line.sites]
        expected_steps, seen_steps = self.steps
        out.append(f"  {'decode':8} {'steps':5} {expected_steps:>18} {seen_steps:>18}  "
                   f"{'ok' if expected_steps == seen_steps else 'MISMATCH'}")
        seen = ", ".join(f"{kind} {self.per_token.get(kind, 0.0):g}" for kind in KINDS)
        wanted = ", ".join(f"{kind} {profile.step.count(kind)}" for kind in KINDS)
        out.append(f"  per decode token (what budgets read): seen {seen}; expected {wanted}")
        if self.ok:
            out.append(f"selftest passed: all {len(self.rows)} phase x kind lines and the step count matched")
        else:
            wrong = [f"{line.phase} {line.kind} (expected {line.expected}, seen {line.seen})" for line in self.mismatches]
            if expected_steps != seen_steps:
                wrong.append(f"decode steps (expected {expected_steps}, seen {seen_steps})")
            out.append(f"selftest FAILED: {len(wrong)} mismatch(es): {'; '.join(wrong)}")
        return out



def _amount(count: int, nbytes: int) -> str:
    return f"{count} ({nbytes} B)" if nbytes else str(count)


def judge(ledger: Ledger, profile: Profile) -> tuple[list[Line], tuple[int, int]]:
    """The ledger against the profile: one line per phase and kind, and the steps."""
    expected = profile.expected()
    lines = []
    for phase in PHASES:
        for kind in KINDS:
            lines.append(Line(phase, kind, expected[phase].count(kind), ledger.count(phase, kind),
                              profile.expected_bytes(phase, kind), int(ledger.bytes[(phase, kind)]),
                              ledger.top_sites(phase, kind)))
    return lines, (profile.decode_forwards - 1, ledger.decode_tokens)


def _choose(tracker: str) -> str:
    if tracker == "auto":
        return "cuda" if torch.cuda.is_available() else "sim"
    return tracker


@contextlib.contextmanager
def _tracked(which: str, ledger: Ledger, profile: Profile) -> Iterator[tuple[torch.device, torch.device | None]]:
    """(device, peer or None) inside the chosen tracker, recording into `ledger`."""
    from harness import devices
    from harness.execute.phases import PhaseTracker

    with torch.no_grad():
        if which == "sim":
            with devices.simulated_gpus(count=2, ledger=ledger):
                yield torch.device("cuda:0"), torch.device("cuda:1")
            return
        device = torch.device("cuda:0")
        peer = torch.device("cuda:1") if torch.cuda.device_count() >= 2 else None
        # One untracked pass first: the CUDA context, cuBLAS, the caching allocator and peer
        # access are set up before anything is counted.
        drive(Workload(profile, peer), device, PhaseTracker(Ledger()))
        torch.cuda.synchronize()
        with devices.track_transfers(ledger):
            yield device, peer


def run_selftest(tracker: str = "auto", profile: Profile | None = None) -> SelftestReport:
    """Run the workload through `tracker` (auto, sim or cuda) and judge the ledger."""
    from harness.execute.phases import PhaseTracker

    which = _choose(tracker)
    profile = profile or Profile()
    if which == "cuda" and not torch.cuda.is_available():
        return SelftestReport("real CUDA", profile, error="no CUDA device is visible (try --tracker sim)")
    notes = []
    if which == "cuda":
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        described = (f"real CUDA (harness.devices.track_transfers: torch.profiler memcpy events and sync debug "
                     f"mode, {torch.cuda.device_count()} device(s): {names})")
        if torch.cuda.device_count() < 2:
            profile = profile.without_d2d()
            notes.append("one CUDA device: the workload's D2D copies need two and are left out (expected 0)")
    else:
        from harness.devices import unavailable_reason

        reason = unavailable_reason()
        if reason:
            return SelftestReport("simulated GPUs", profile, error=f"simulated GPUs cannot run here: {reason}")
        described = "simulated GPUs (harness.devices.simulated_gpus, 2 devices)"
        if torch.cuda.is_available():
            notes.append("CUDA is visible but --tracker sim was asked for")
    report = SelftestReport(described, profile, notes=notes)
    ledger = Ledger()
    phases = PhaseTracker(ledger, torch.cuda.synchronize if which == "cuda" else None)
    try:
        with _tracked(which, ledger, profile) as (device, peer):
            drive(Workload(profile, peer), device, phases)
    except Exception as exc:  # the tracker or the device broke: the self-test fails saying so
        phases.unhook()
        report.error = f"the workload raised {type(exc).__name__}: {exc}"
        return report
    report.rows, report.steps = judge(ledger, profile)
    report.per_token = {kind: ledger.per_token(kind) for kind in KINDS}
    return report
