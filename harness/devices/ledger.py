"""The transfer & sync ledger: one type for simulated and real devices.

Trackers (`harness.devices`) record events; checks, reports, `compare` and the benchmarks
read exact counts from it. Events are aggregated as they arrive (phase, kind, op, site) so
a long decode costs a dict update per event, not a growing list.

Phases are the harness's (`harness.execute.phases` marks them): `load` (engine.load), `setup`
(generate() before the prompt's first forward), `prefill`, `decode` and `finish`. Decode
events are collected per step: `end_step()` books the events of one complete decode step
(one forward and what follows it up to the next forward), and `finish_steps()` books
whatever came after the last step start (the last step's tail and one-off work such as
reading the result back) under `finish`. So `per_token` is the steady state: a whole
number for a clean engine, the same at 4 tokens and at 64.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["h2d", "d2h", "d2d", "sync"]
Phase = Literal["load", "setup", "prefill", "decode", "finish"]
KINDS: tuple[Kind, ...] = ("h2d", "d2h", "d2d", "sync")
PHASES: tuple[Phase, ...] = ("load", "setup", "prefill", "decode", "finish")
BUDGET_NAMES: dict[str, Kind] = {"h2d": "h2d", "d2h": "d2h", "d2d": "d2d", "syncs": "sync"}


@dataclass
class _Events:
    """Counts, bytes and call sites of some events."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (phase, kind) -> n
    bytes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (phase, kind) -> bytes
    sites: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)  # (phase, kind, op, site)

    def add(self, phase: str, kind: str, nbytes: int, op: str, site: str, n: int = 1) -> None:
        self.counts[(phase, kind)] += n
        self.bytes[(phase, kind)] += nbytes
        self.sites[(phase, kind, op, site)] += n

    def clear(self) -> None:
        self.counts.clear()
        self.bytes.clear()
        self.sites.clear()


@dataclass
class Ledger:
    phase: Phase = "load"
    # Complete decode steps: the per-token denominator. Counted by `end_step()` where the
    # harness sees the steps, else set from the engine's own count (`harness.execute.phases`).
    decode_tokens: int = 0
    booked: _Events = field(default_factory=_Events)
    # The decode events since the current step began (also in `booked`): what
    # `finish_steps()` re-books under `finish`.
    _step: _Events = field(default_factory=_Events)

    # --- recording ---------------------------------------------------------------------------

    def record(self, kind: Kind, nbytes: int = 0, op: str = "", site: str = "") -> None:
        self.booked.add(self.phase, kind, nbytes, op, site)
        if self.phase == "decode":
            self._step.add("decode", kind, nbytes, op, site)

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase

    def end_step(self) -> None:
        """One complete decode step ended: the next one starts now."""
        self._step.clear()
        self.decode_tokens += 1

    def finish_steps(self) -> None:
        """The decode events since the last step began were no complete step: the last
        step's tail and one-off work. Book them under `finish`."""
        self.move_step("finish")

    def move_step(self, phase: str) -> None:
        """Re-book the decode events since the current step began under `phase` (the
        events before the first decode forward belong to the prefill's tail)."""
        for (_, kind, op, site), n in self._step.sites.items():
            self.booked.sites[("decode", kind, op, site)] -= n
            self.booked.add(phase, kind, 0, op, site, n)
        for (_, kind), nbytes in self._step.bytes.items():
            self.booked.bytes[("decode", kind)] -= nbytes
            self.booked.bytes[(phase, kind)] += nbytes
        for (_, kind), n in self._step.counts.items():
            self.booked.counts[("decode", kind)] -= n
        for counter in (self.booked.counts, self.booked.sites, self.booked.bytes):
            for key in [k for k, v in counter.items() if v == 0 and k[0] == "decode"]:
                del counter[key]
        self._step.clear()

    # --- reading -------------------------------------------------------------------------------

    @property
    def counts(self) -> Counter[tuple[str, str]]:
        return self.booked.counts

    @property
    def bytes(self) -> Counter[tuple[str, str]]:
        return self.booked.bytes

    @property
    def sites(self) -> Counter[tuple[str, str, str, str]]:
        return self.booked.sites

    def count(self, phase: str, kind: str) -> int:
        return self.booked.counts[(phase, kind)]

    def per_token(self, kind: str) -> float:
        """Decode events of `kind` per complete decode step (0 when there was none)."""
        if self.decode_tokens <= 0:
            return 0.0
        return self.booked.counts[("decode", kind)] / self.decode_tokens

    def bytes_per_token(self, kind: str) -> float:
        if self.decode_tokens <= 0:
            return 0.0
        return self.booked.bytes[("decode", kind)] / self.decode_tokens

    def top_sites(self, phase: str, kind: str, limit: int = 5) -> list[tuple[str, str, int]]:
        """(op, site, count) for the most frequent call sites of one phase and kind; ties in
        the order they were first seen (deterministic: no set or hash order)."""
        rows = [(op, site, n) for (p, k, op, site), n in self.booked.sites.items() if p == phase and k == kind]
        return sorted(rows, key=lambda row: -row[2])[:limit]

    def is_empty(self) -> bool:
        return not self.booked.counts

    # --- JSON ----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Exact counts; `per_token` is derived (rounded for reading, never re-read)."""
        return {
            "decode_tokens": self.decode_tokens,
            "counts": {f"{p}.{k}": n for (p, k), n in sorted(self.booked.counts.items())},
            "bytes": {f"{p}.{k}": n for (p, k), n in sorted(self.booked.bytes.items()) if n},
            "per_token": {k: round(self.per_token(k), 4) for k in KINDS},
            "bytes_per_token": {k: round(self.bytes_per_token(k), 1) for k in KINDS},
            "sites": [
                {"phase": p, "kind": k, "op": op, "site": site, "count": n}
                for (p, k, op, site), n in sorted(self.booked.sites.items(), key=lambda kv: -kv[1])[:50]
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        ledger = cls(decode_tokens=int(data.get("decode_tokens", 0) or 0))
        for key, n in data.get("counts", {}).items():
            phase, kind = key.split(".")
            ledger.booked.counts[(phase, kind)] = n
        for key, n in data.get("bytes", {}).items():
            phase, kind = key.split(".")
            ledger.booked.bytes[(phase, kind)] = n
        for row in data.get("sites", []):
            ledger.booked.sites[(row["phase"], row["kind"], row["op"], row["site"])] = row["count"]
        return ledger
