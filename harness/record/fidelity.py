"""`samedevice compare --sim-vs-real REAL_RUN SIM_RUN`: the simulator measured against a real GPU.

A GPU job runs its cases on the real devices (`cuda:0`, `auto`) and the same cases on the
simulated ones (`sim:cuda:0`, `sim:auto`). Each real case is paired with its simulated twin
(same scenario, engine and device, `sim:` aside) and must agree on:

- the tokens generated (every prompt);
- the ledger: the count of every phase and kind (load, prefill, decode... x h2d, d2h, d2d,
  syncs), and the decode steps the counts are per.

One table says, per pair, what agreed and what did not; exit 1 when any pair differs, so the
first real GPU run measures the simulator's fidelity. Pairs of which one side did not run
(skipped, errored before generating) are listed, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.devices.ledger import Ledger
from harness.format.labels import SIM_PREFIX
from harness.record.render import markdown_code
from harness.record.results import CaseResult


def twin_key(case: CaseResult) -> tuple[str, str, str]:
    """What a case and its twin share: scenario, engine and the device without `sim:`."""
    return case.scenario, case.engine, case.device.removeprefix(SIM_PREFIX)


@dataclass
class Pair:
    real: CaseResult
    sim: CaseResult
    differences: list[str] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        return _ran(self.real) and _ran(self.sim)


@dataclass
class Fidelity:
    pairs: list[Pair]
    unpaired: list[str]  # real cases with no simulated twin

    @property
    def differing(self) -> list[Pair]:
        return [p for p in self.pairs if p.judged and p.differences]

    @property
    def judged(self) -> list[Pair]:
        return [p for p in self.pairs if p.judged]


def _ran(case: CaseResult) -> bool:
    return case.status in ("passed", "failed") and case.ledger is not None


def _counts(ledger: Ledger) -> dict[str, int]:
    return {f"{phase} {kind}": n for (phase, kind), n in ledger.booked.counts.items() if n}


def ledger_differences(real: Ledger, sim: Ledger) -> list[str]:
    """`decode d2h: real 16, sim 17` for every phase and kind whose counts differ."""
    out = []
    if real.decode_tokens != sim.decode_tokens:
        out.append(f"decode steps: real {real.decode_tokens}, sim {sim.decode_tokens}")
    real_counts, sim_counts = _counts(real), _counts(sim)
    for key in sorted(set(real_counts) | set(sim_counts)):
        if real_counts.get(key, 0) != sim_counts.get(key, 0):
            out.append(f"{key}: real {real_counts.get(key, 0)}, sim {sim_counts.get(key, 0)}")
    return out


def measure(real_cases: list[CaseResult], sim_cases: list[CaseResult]) -> Fidelity:
    sims = {twin_key(c): c for c in sim_cases if c.device.startswith(SIM_PREFIX)}
    pairs, unpaired = [], []
    for case in sorted(real_cases, key=lambda c: c.id):
        if case.device.startswith(SIM_PREFIX) or case.device == "cpu":
            continue
        twin = sims.get(twin_key(case))
        if twin is None:
            unpaired.append(f"{case.id}: no twin in the simulated run")
            continue
        pair = Pair(case, twin)
        if pair.judged:
            if pair.real.tokens != pair.sim.tokens:
                pair.differences.append("tokens differ")
            assert pair.real.ledger is not None and pair.sim.ledger is not None
            pair.differences += ledger_differences(pair.real.ledger, pair.sim.ledger)
        pairs.append(pair)
    return Fidelity(pairs, unpaired)


def markdown(fidelity: Fidelity) -> str:
    judged = fidelity.judged
    same = len(judged) - len(fidelity.differing)
    lines = ["## Simulated GPUs against real ones", "",
             f"{same} of {len(judged)} case pair(s) agree on tokens and on every ledger count "
             "(phase x kind) and decode step.", "",
             "| real case | simulated | tokens | ledger |", "|---|---|---|---|"]
    for pair in fidelity.pairs:
        if not pair.judged:
            why = pair.real.status if not _ran(pair.real) else pair.sim.status
            lines.append(f"| {markdown_code(pair.real.id)} | {markdown_code(pair.sim.device)} | not judged: {why} | |")
            continue
        tokens = "differ" if "tokens differ" in pair.differences else "same"
        ledger = [d for d in pair.differences if d != "tokens differ"]
        lines.append(f"| {markdown_code(pair.real.id)} | {markdown_code(pair.sim.device)} | {tokens} | "
                     + ("; ".join(markdown_code(d) for d in ledger) if ledger else "same") + " |")
    if fidelity.unpaired:
        lines += ["", "Not paired:", *[f"- {markdown_code(u)}" for u in fidelity.unpaired]]
    return "\n".join(lines) + "\n"
