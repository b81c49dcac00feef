"""One case's figures pooled over repeated runs: what asv tracks and `compare` judges.

The one pooling rule, for every front end: throughput is the best run (the least
disturbed by a noisy machine), prefill latency the fastest; transfer counts are exact per
decode token and deterministic, so every run must give the same ones: a disagreement is
recorded as nondeterministic and the largest count kept.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.devices.ledger import KINDS, Ledger

_EPS = 1e-9


@dataclass
class CaseFigures:
    id: str
    scenario: str = ""
    runs: int = 0  # runs that produced figures
    statuses: Counter[str] = field(default_factory=Counter)
    per_token: dict[str, float] = field(default_factory=dict)  # largest over the runs
    bytes_per_token: dict[str, float] = field(default_factory=dict)
    prefill: dict[str, int] = field(default_factory=dict)  # prefill totals, largest
    nondeterministic: set[str] = field(default_factory=set)  # kinds whose counts varied
    decode_tps: list[float] = field(default_factory=list)
    prefill_s: list[float] = field(default_factory=list)
    peak_memory_bytes: list[int] = field(default_factory=list)
    decode_tokens: int = 0
    skipped: str = ""
    error: str = ""

    # --- pooling ---------------------------------------------------------------------------

    def add(self, status: str, ledger: Ledger | None, timings: dict[str, float],
            peak_memory_bytes: int | None = None, error: str = "", reason: str = "") -> None:
        """One more run of the case."""
        self.statuses[status] += 1
        if status == "skipped":
            self.skipped = self.skipped or reason
            return
        if error:
            self.error = self.error or error
            return
        ledger = ledger or Ledger()
        self._pool_counts({k: ledger.per_token(k) for k in KINDS}, {k: ledger.bytes_per_token(k) for k in KINDS},
                          {k: ledger.count("prefill", k) for k in KINDS})
        self.runs += 1
        self.decode_tokens = ledger.decode_tokens
        tps = timings.get("decode_tokens_per_s")
        if tps and math.isfinite(tps):
            self.decode_tps.append(float(tps))
        if "prefill_s" in timings:
            self.prefill_s.append(float(timings["prefill_s"]))
        if peak_memory_bytes is not None:
            self.peak_memory_bytes.append(int(peak_memory_bytes))

    def _pool_counts(self, per_token: dict[str, float], bytes_per_token: dict[str, float], prefill: dict[str, int]) -> None:
        for kind in KINDS:
            if self.runs and (abs(self.per_token[kind] - per_token[kind]) > _EPS or self.prefill[kind] != prefill[kind]):
                self.nondeterministic.add(kind)
            self.per_token[kind] = max(self.per_token.get(kind, 0.0), per_token[kind])
            self.bytes_per_token[kind] = max(self.bytes_per_token.get(kind, 0.0), bytes_per_token[kind])
            self.prefill[kind] = max(self.prefill.get(kind, 0), prefill[kind])

    def pooled(self, other: CaseFigures) -> CaseFigures:
        """These runs and `other`'s, of the same case."""
        out = CaseFigures(self.id, self.scenario or other.scenario, statuses=self.statuses + other.statuses,
                          skipped=self.skipped or other.skipped, error=self.error or other.error)
        for side in (self, other):
            if side.runs:
                out._pool_counts(side.per_token, side.bytes_per_token, side.prefill)
                out.runs += side.runs
                out.nondeterministic |= side.nondeterministic
                out.decode_tokens = side.decode_tokens
        out.decode_tps = self.decode_tps + other.decode_tps
        out.prefill_s = self.prefill_s + other.prefill_s
        out.peak_memory_bytes = self.peak_memory_bytes + other.peak_memory_bytes
        return out

    # --- derived figures ---------------------------------------------------------------------

    @property
    def best_tps(self) -> float | None:
        return max(self.decode_tps) if self.decode_tps else None

    @property
    def best_prefill_s(self) -> float | None:
        return min(self.prefill_s) if self.prefill_s else None

    @property
    def decode_ms_per_token(self) -> float:
        best = self.best_tps
        return 1000.0 / best if best else math.nan

    def to_bench(self, threads: int) -> dict[str, Any]:
        """The plain dict asv's `setup_cache` returns and every `track_` reads."""
        if self.error:
            return {"error": self.error}
        if not self.runs and self.skipped:
            return {"skipped": self.skipped}
        return {
            "decode_tokens_per_s": self.best_tps if self.best_tps is not None else math.nan,
            "decode_ms_per_token": self.decode_ms_per_token,
            "prefill_s": self.best_prefill_s if self.best_prefill_s is not None else math.nan,
            "per_token": dict(self.per_token),
            "bytes_per_token": dict(self.bytes_per_token),
            "prefill_counts": dict(self.prefill),
            "peak_memory_bytes": max(self.peak_memory_bytes) if self.peak_memory_bytes else None,
            "decode_tokens": self.decode_tokens,
            "runs": self.runs,
            "threads": threads,
            "nondeterministic_transfers": sorted(self.nondeterministic),
        }


def pool(results: Iterable[Any]) -> dict[str, CaseFigures]:
    """Case results (`CaseResult`s, several runs of a case allowed) by case id."""
    figures: dict[str, CaseFigures] = {}
    for result in results:
        one = figures.setdefault(result.id, CaseFigures(result.id, result.scenario))
        error = result.error.one_line() if result.status == "error" and result.error is not None else ""
        if result.status == "error" and not error:
            error = "error"
        one.add(result.status, result.ledger, result.timings, result.peak_memory_bytes, error, result.reason)
    return figures
