"""The transfer & sync ledger: one type for simulated and real devices.

Trackers (`harness.devices`) record events; checks and benchmarks read counts. Events are
aggregated as they arrive (kind, phase, site) so a long decode costs a dict update per
event, not a growing list.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["h2d", "d2h", "d2d", "sync"]
Phase = Literal["load", "prefill", "decode"]
KINDS: tuple[Kind, ...] = ("h2d", "d2h", "d2d", "sync")
PHASES: tuple[Phase, ...] = ("load", "prefill", "decode")


@dataclass
class Ledger:
    phase: Phase = "load"
    decode_tokens: int = 0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (phase, kind) -> n
    bytes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (phase, kind) -> bytes
    sites: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)  # (phase, kind, op, site)

    def record(self, kind: Kind, nbytes: int = 0, op: str = "", site: str = "") -> None:
        key = (self.phase, kind)
        self.counts[key] += 1
        self.bytes[key] += nbytes
        self.sites[(self.phase, kind, op, site)] += 1

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase

    def count(self, phase: str, kind: str) -> int:
        return self.counts[(phase, kind)]

    def per_token(self, kind: str) -> float:
        """Decode-phase events of `kind` per generated token (0 when nothing was decoded)."""
        if self.decode_tokens <= 0:
            return 0.0
        return self.counts[("decode", kind)] / self.decode_tokens

    def bytes_per_token(self, kind: str) -> float:
        if self.decode_tokens <= 0:
            return 0.0
        return self.bytes[("decode", kind)] / self.decode_tokens

    def top_sites(self, phase: str, kind: str, limit: int = 5) -> list[tuple[str, str, int]]:
        """(op, site, count) for the most frequent call sites of one phase and kind."""
        rows = [(op, site, n) for (p, k, op, site), n in self.sites.items() if p == phase and k == kind]
        return sorted(rows, key=lambda row: -row[2])[:limit]

    def is_empty(self) -> bool:
        return not self.counts

    def to_json(self) -> dict:
        return {
            "decode_tokens": self.decode_tokens,
            "counts": {f"{p}.{k}": n for (p, k), n in sorted(self.counts.items())},
            "bytes": {f"{p}.{k}": n for (p, k), n in sorted(self.bytes.items()) if n},
            "per_token": {k: round(self.per_token(k), 4) for k in KINDS},
            "bytes_per_token": {k: round(self.bytes_per_token(k), 1) for k in KINDS},
            "sites": [
                {"phase": p, "kind": k, "op": op, "site": site, "count": n}
                for (p, k, op, site), n in sorted(self.sites.items(), key=lambda kv: -kv[1])[:50]
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> Ledger:
        ledger = cls(decode_tokens=data.get("decode_tokens", 0))
        for key, n in data.get("counts", {}).items():
            phase, kind = key.split(".")
            ledger.counts[(phase, kind)] = n
        for key, n in data.get("bytes", {}).items():
            phase, kind = key.split(".")
            ledger.bytes[(phase, kind)] = n
        for row in data.get("sites", []):
            ledger.sites[(row["phase"], row["kind"], row["op"], row["site"])] = row["count"]
        return ledger
