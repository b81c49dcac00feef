"""Summaries of a run: a markdown report (also a CI job summary) and a console table."""

from __future__ import annotations

from collections import Counter
from typing import Any

from harness.results import STATUSES, CaseResult

_ICON = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "skip"}


def counts(results: list[CaseResult]) -> Counter[str]:
    return Counter(r.status for r in results)


def counts_line(results: list[CaseResult]) -> str:
    c = counts(results)
    return ", ".join(f"{c[s]} {s}" for s in STATUSES if c[s]) or "no cases"


def _per_token(result: CaseResult, kind: str) -> str:
    if result.ledger is None or not result.ledger.decode_tokens:
        return ""
    return f"{result.ledger.per_token(kind):.4g}"


def _tps(result: CaseResult) -> str:
    value = result.timings.get("decode_tokens_per_s")
    return f"{value:.0f}" if value else ""


def matrix(results: list[CaseResult]) -> list[str]:
    """engine x feature rows, device columns: counts of passed / failed+error / skipped."""
    devices = sorted({r.device for r in results}, key=lambda d: (d.startswith("sim:"), d != "cpu", d))
    cells: dict[tuple[str, str], Counter[str]] = {}
    for r in results:
        for feature in r.features or ["(plain)"]:
            cells.setdefault((f"{r.engine} / {feature}", r.device), Counter())[r.status] += 1
    rows = sorted({row for row, _ in cells})
    lines = ["| engine / feature | " + " | ".join(devices) + " |", "|---|" + "---|" * len(devices)]
    for row in rows:
        out = []
        for device in devices:
            c = cells.get((row, device))
            if not c:
                out.append("")
                continue
            parts = [f"{c['passed']} pass" if c["passed"] else "", f"{c['failed'] + c['error']} FAIL" if c["failed"] + c["error"] else "",
                     f"{c['skipped']} skip" if c["skipped"] else ""]
            out.append(", ".join(p for p in parts if p))
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    return lines


def markdown(results: list[CaseResult], run_info: dict[str, Any], problems: list[str] | None = None) -> str:
    lines = [f"# samedevice run {run_info.get('run_id', '')}", ""]
    lines.append(f"**{counts_line(results)}** - samedevice {run_info.get('samedevice')}, torch {run_info.get('torch')}, "
                 f"transformers {run_info.get('transformers')}, devices: {', '.join(run_info.get('devices', []))}")
    lines.append("")
    if problems:
        lines += ["## Invalid scenario files", ""] + [f"- `{p}`" for p in problems] + [""]
    if results:
        lines += ["## Matrix", "", *matrix(results), ""]
        skips = Counter(r.reason for r in results if r.status == "skipped")
        if skips:
            lines += ["## Skipped, by reason", ""] + [f"- {n} x {reason}" for reason, n in skips.most_common()] + [""]
    lines += [
        "## Cases", "",
        "| case | status | decode tok/s | D2H/tok | H2D/tok | D2D/tok | syncs/tok | details |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        detail = r.summary_line().replace("|", "\\|")
        lines.append(
            f"| `{r.id}` | {_ICON.get(r.status, r.status)} | {_tps(r)} | {_per_token(r, 'd2h')} | {_per_token(r, 'h2d')} "
            f"| {_per_token(r, 'd2d')} | {_per_token(r, 'sync')} | {detail[:160]} |"
        )
    bad = [r for r in results if r.status in ("failed", "error")]
    if bad:
        lines += ["", "## Failures", ""]
        for r in bad:
            lines.append(f"### `{r.id}` ({r.status})")
            lines.append(f"{r.file}:{r.line}")
            lines.append("")
            for f in r.failures:
                lines.append(f"- **{f.check}**: {f.message}")
            if r.error is not None and r.status == "error":
                lines += ["", "```", (r.error.message + "\n" + (r.error.traceback or ""))[-1500:], "```"]
            lines.append("")
    findings = [(r.id, f) for r in results for f in r.findings]
    if findings:
        lines += ["", "## Findings (known engine behaviour, not failures)", ""] + [f"- `{cid}`: {f}" for cid, f in findings]
    notes = [(r.id, n) for r in results for n in r.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"- `{cid}`: {n}" for cid, n in notes]
    return "\n".join(lines) + "\n"


def console_table(results: list[CaseResult]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="samedevice", show_lines=False, expand=False)
    for column in ("case", "status", "tok/s", "D2H/tok", "H2D/tok", "D2D/tok", "syncs/tok", "details"):
        table.add_column(column, overflow="fold", no_wrap=column == "case")
    style = {"passed": "green", "failed": "bold red", "error": "bold magenta", "skipped": "yellow"}
    for r in results:
        table.add_row(
            escape(r.id), f"[{style[r.status]}]{_ICON[r.status]}[/]", _tps(r), _per_token(r, "d2h"), _per_token(r, "h2d"),
            _per_token(r, "d2d"), _per_token(r, "sync"), escape(r.summary_line()[:120]),
        )
    return table
