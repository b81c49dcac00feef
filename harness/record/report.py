"""Summaries of a run: a markdown report (also a CI job summary) and a console table.

Everything that came from data (ids, paths, messages, reasons, versions from run.json) goes
through harness.record.render: into markdown only inside code spans or fenced blocks, onto the
terminal only escaped. A report states whether the run is complete: cases that never ran
(from the ids run.json says were selected), a merge's gaps and duplicates, damaged lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from harness.format.labels import DeviceLabel
from harness.record.render import markdown_block, markdown_code, shorten, terminal_text
from harness.record.results import STATUSES, CaseResult, DamagedLine, wanted_ids

_ICON = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "skip"}
_LISTED = 50  # ids listed under a heading before "... and N more"


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
    return f"{value:.0f}" if isinstance(value, (int, float)) and value else ""


def _code(value: object) -> str:
    return markdown_code(value, table=True)


def completeness(results: list[CaseResult], run_info: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(one sentence saying the run is incomplete, or None; the ids that never ran).

    The cases a run was to run are `selected_ids` in run.json (a shard's own share), or
    `expected_ids` for an unsharded or merged run; a run without them (a pytest run) is
    judged by whether it recorded its end."""
    if not run_info:
        return "INCOMPLETE: no run.json, so which cases were to run and whether the run ended are unknown", []
    ran = {r.id for r in results}
    wanted = wanted_ids(run_info)
    cause = _stop_cause(run_info)
    if wanted is not None:
        missing = [case_id for case_id in dict.fromkeys(wanted) if case_id not in ran]
        if missing:
            total = len(set(wanted))
            return (f"INCOMPLETE: {total - len(missing)} of {total} cases ran; {len(missing)} never ran"
                    + (f" ({cause})" if cause else "")), missing
        if run_info.get("write_error"):
            return f"INCOMPLETE: {cause}", []
        return None, []
    if cause:
        return f"INCOMPLETE: {cause}; which cases never ran is unknown (run.json lists no selected cases)", []
    return None, []


def _stop_cause(run_info: dict[str, Any]) -> str | None:
    if run_info.get("write_error"):
        return f"stopped: {run_info['write_error']}"
    if run_info.get("interrupted"):
        return f"interrupted by {run_info['interrupted']}"
    if run_info.get("exitstatus") in (2, 3):  # pytest: interrupted, internal error
        return f"pytest ended with exit status {run_info['exitstatus']}"
    if run_info and "finished" not in run_info and "merged_from" not in run_info:
        return "the run never recorded its end: killed, still running, or unable to write run.json"
    return None


def matrix(results: list[CaseResult]) -> list[str]:
    """engine x feature rows, device columns: counts of passed / failed+error / skipped."""
    devices = sorted({r.device for r in results}, key=_device_column)
    cells: dict[tuple[str, str], Counter[str]] = {}
    for r in results:
        for feature in r.features or ["(plain)"]:
            cells.setdefault((f"{r.engine} / {feature}", r.device), Counter())[r.status] += 1
    rows = sorted({row for row, _ in cells})
    lines = ["| engine / feature | " + " | ".join(_code(d) for d in devices) + " |", "|---|" + "---|" * len(devices)]
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
        lines.append(f"| {_code(row)} | " + " | ".join(out) + " |")
    return lines


def _device_column(device: str) -> tuple[bool, bool, str]:
    """Real devices first, cpu first among them; a device that is no label sorts as a real GPU."""
    try:
        label = DeviceLabel.parse(device)
    except ValueError:
        return (False, True, device)
    return (label.simulated, label.kind != "cpu", device)


def _listed(items: Iterable[object]) -> list[str]:
    items = list(items)
    lines = [f"- {markdown_code(item)}" for item in items[:_LISTED]]
    if len(items) > _LISTED:
        lines.append(f"- ... and {len(items) - _LISTED} more")
    return lines


def markdown(results: list[CaseResult], run_info: dict[str, Any], invalid_files: list[str] | None = None,
             damaged: Iterable[DamagedLine | str] = ()) -> str:
    """The report of one run (or of a merge, whose gaps, duplicates and problems come from
    its run.json). `invalid_files` defaults to run.json's; `damaged`: unreadable result lines."""
    if invalid_files is None:
        invalid_files = run_info.get("invalid_files") or []
    damaged = [str(d) for d in damaged] + list(run_info.get("damaged") or [])
    lines = [f"# samedevice run {markdown_code(run_info.get('run_id', ''))}", ""]
    verdict, never_ran = completeness(results, run_info)
    if verdict:
        lines += [f"**{verdict}**", ""]
    versions = ", ".join(f"{name} {markdown_code(run_info.get(name, 'unknown'))}" for name in ("samedevice", "torch", "transformers"))
    devices = ", ".join(markdown_code(d) for d in run_info.get("devices") or []) or "unknown"
    lines += [f"**{counts_line(results)}** - {versions}, devices: {devices}", ""]
    merge_sections = (
        ("gaps", "Gaps: expected cases that no run produced"),
        ("duplicates", "Duplicates: cases produced by more than one run (the first is kept)"),
        ("unexpected", "Unexpected cases: not in any run's expected set"),
        ("problems", "Problems with the merged runs"),
    )
    for key, heading in merge_sections:
        if run_info.get(key):
            lines += [f"## {heading}", "", *_listed(run_info[key]), ""]
    if never_ran and not run_info.get("gaps"):
        lines += ["## Never ran", "", *_listed(never_ran), ""]
    if damaged:
        lines += ["## Damaged result lines (not counted above)", "", *_listed(damaged), ""]
    if invalid_files:
        lines += ["## Invalid scenario files", "", *_listed(invalid_files), ""]
    if results:
        lines += ["## Matrix", "", *matrix(results), ""]
        skips = Counter(r.reason for r in results if r.status == "skipped")
        if skips:
            lines += ["## Skipped, by reason", ""] + [f"- {n} x {markdown_code(reason)}" for reason, n in skips.most_common()] + [""]
    lines += [
        "## Cases", "",
        "| case | status | decode tok/s | D2H/tok | H2D/tok | D2D/tok | syncs/tok | details |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        detail = r.summary_line()
        lines.append(
            f"| {_code(r.id)} | {_ICON.get(r.status, r.status)} | {_tps(r)} | {_per_token(r, 'd2h')} | {_per_token(r, 'h2d')} "
            f"| {_per_token(r, 'd2d')} | {_per_token(r, 'sync')} | {_code(detail[:160]) if detail else ''} |"
        )
    bad = [r for r in results if r.status in ("failed", "error")]
    if bad:
        lines += ["", "## Failures", ""]
        for r in bad:
            lines.append(f"### {markdown_code(r.id)} ({r.status})")
            lines.append(markdown_code(f"{r.file}:{r.line}"))
            lines.append("")
            for f in r.failures:
                lines += [f"**{markdown_code(f.check)}**:", "", markdown_block(f.message), ""]
            if r.error is not None and r.status == "error":
                lines += [markdown_block((r.error.message + "\n" + (r.error.traceback or ""))[-1500:]), ""]
    findings = [(r.id, f) for r in results for f in r.findings]
    if findings:
        lines += ["", "## Findings (known engine behaviour, not failures)", ""]
        lines += [f"- {markdown_code(cid)}: {markdown_code(f)}" for cid, f in findings]
    notes = [(r.id, n) for r in results for n in r.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {markdown_code(cid)}: {markdown_code(n)}" for cid, n in notes]
    return "\n".join(lines) + "\n"


def console_table(results: list[CaseResult]):
    from rich.table import Table

    table = Table(title="samedevice", show_lines=False, expand=False)
    for column in ("case", "status", "tok/s", "D2H/tok", "H2D/tok", "D2D/tok", "syncs/tok", "details"):
        table.add_column(column, overflow="fold", no_wrap=column == "case")
    style = {"passed": "green", "failed": "bold red", "error": "bold magenta", "skipped": "yellow"}
    for r in results:
        table.add_row(
            terminal_text(r.id), terminal_text(_ICON.get(r.status, r.status), style.get(r.status, "")),
            _tps(r), _per_token(r, "d2h"), _per_token(r, "h2d"), _per_token(r, "d2d"), _per_token(r, "sync"),
            terminal_text(shorten(r.summary_line(), 120)),
        )
    return table
