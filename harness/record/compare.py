"""`samedevice compare BASE HEAD`: the benchmark gate on two run directories, without asv.

For CI jobs that keep only artifacts: each side is a `results/<run-id>/` directory
(`cases.jsonl`), written by `samedevice run` or by the benchmark runner
(`nox -s bench_compare`), which repeats every case and pools several rounds into one
directory. For every case id present on both sides:

- transfers per generated token, per kind (h2d, d2h, d2d, syncs), and the prefill's
  total copies: deterministic, so **any** increase fails, naming the case, its scenario,
  the kind and `before -> after`;
- decode throughput: the best run of each side (the least disturbed by a noisy machine);
  head below base / factor fails (default factor 1.1);
- a case that errored on head but ran on base fails (it has no figures to compare).

Cases present on one side only, or skipped on either, are listed and not judged.
Exit codes: 0 no regression, 1 regression, 2 unusable input (not a run directory, nothing
in common to compare).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.devices.ledger import KINDS
from harness.record import fidelity
from harness.record.figures import CaseFigures, pool
from harness.record.render import markdown_code, terminal
from harness.record.results import CaseResult, RunDirectory

LABELS = {"h2d": "h2d", "d2h": "d2h", "d2d": "d2d", "sync": "syncs"}
DEFAULT_FACTOR = 1.1
_EPS = 1e-9


def summarise(results: list[CaseResult]) -> dict[str, CaseFigures]:
    """Each case's runs pooled (`harness.record.figures`: the same rule asv uses)."""
    return pool(results)


@dataclass
class Finding:
    case_id: str
    scenario: str
    what: str  # "d2h per token", "prefill h2d copies", "decode throughput", "error"
    before: str
    after: str

    def __str__(self) -> str:
        return f"{self.case_id} (scenario {self.scenario}): {self.what} {self.before} -> {self.after}"


@dataclass
class Row:
    case_id: str
    base: CaseFigures
    head: CaseFigures
    regressions: list[Finding] = field(default_factory=list)
    improvements: list[Finding] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        b, h = self.base.best_tps, self.head.best_tps
        return h / b if b and h else None


@dataclass
class Comparison:
    factor: float | None  # None: throughput not judged
    rows: list[Row] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Finding]:
        return [f for row in self.rows for f in row.regressions]

    @property
    def ok(self) -> bool:
        return not self.regressions


def _count(value: float) -> str:
    return f"{value:.4g}"


def compare(base: dict[str, CaseFigures], head: dict[str, CaseFigures], factor: float | None = DEFAULT_FACTOR) -> Comparison:
    result = Comparison(factor)
    for case_id in sorted(set(base) | set(head)):
        b, h = base.get(case_id), head.get(case_id)
        if b is None or h is None:
            result.not_compared.append(f"{markdown_code(case_id)}: only in {'base' if h is None else 'head'}")
            continue
        if b.runs == 0:
            why = f"errored on base ({b.error})" if b.error else f"skipped on base ({b.skipped or 'no figures'})"
            result.not_compared.append(f"{markdown_code(case_id)}: {markdown_code(why)}")
            continue
        row = Row(case_id, b, h)
        if h.error and not b.error:
            errored = h.statuses["error"]
            row.regressions.append(Finding(case_id, h.scenario, "status", "ran",
                                           f"errored in {errored} of {sum(h.statuses.values())} runs ({h.error})"))
        if h.runs == 0:
            if h.error:
                result.rows.append(row)
            else:
                why = f"skipped on head ({h.skipped or 'no figures'})"
                result.not_compared.append(f"{markdown_code(case_id)}: {markdown_code(why)}")
            continue
        _judge_transfers(row)
        _judge_throughput(row, factor)
        for side, figures in (("base", b), ("head", h)):
            if figures.nondeterministic:
                result.notes.append(f"{markdown_code(case_id)}: transfer counts varied between runs on {side} "
                                    f"({', '.join(sorted(figures.nondeterministic))}); the largest is compared")
        result.rows.append(row)
    return result


def _judge_transfers(row: Row) -> None:
    b, h = row.base, row.head
    for kind in KINDS:
        before, after = b.per_token[kind], h.per_token[kind]
        finding = Finding(row.case_id, h.scenario, f"{LABELS[kind]} per token", _count(before), _count(after))
        if after > before + _EPS:
            row.regressions.append(finding)
        elif after < before - _EPS:
            row.improvements.append(finding)
        before_p, after_p = b.prefill[kind], h.prefill[kind]
        finding = Finding(row.case_id, h.scenario, f"prefill {LABELS[kind]} (total)", str(before_p), str(after_p))
        if after_p > before_p:
            row.regressions.append(finding)
        elif after_p < before_p:
            row.improvements.append(finding)


def _judge_throughput(row: Row, factor: float | None) -> None:
    before, after = row.base.best_tps, row.head.best_tps
    if factor is None or before is None or after is None:
        return
    finding = Finding(row.case_id, row.head.scenario, "decode tokens/s (best run)", f"{before:.5g}", f"{after:.5g}")
    finding.after += f" ({after / before:.2f}x; fails below {1 / factor:.2f}x)"
    if after * factor < before:
        row.regressions.append(finding)
    elif after > before * factor:
        row.improvements.append(finding)


def load_side(path: Path, warnings: list[str] | None = None, allow_incomplete: bool = False) -> dict[str, CaseFigures]:
    """A run directory's figures. ValueError if it is not one, if its run.json or a line of
    its cases.jsonl is damaged (naming the file and line), or if the run is not whole (no
    run.json, cases it was to run without results, never recorded its end) unless
    `allow_incomplete`: a gate must not judge part of a run as if it were all of it. OSError
    if it cannot be read. A torn last line (a writer killed mid-case) is not a case: it is
    left out and named in `warnings`."""
    from harness.record.report import completeness

    directory = RunDirectory(path)
    if not directory.cases_path.is_file():
        raise ValueError(f"{path} is not a run directory (no cases.jsonl)")
    info = directory.read_run_info()  # DamagedResults (a ValueError) names the file
    read = directory.load_cases()
    damaged = [d for d in read.damaged if not d.torn]
    if damaged:
        more = f" (and {len(damaged) - 1} more damaged lines)" if len(damaged) > 1 else ""
        raise ValueError(f"damaged result line: {damaged[0]}{more}")
    if warnings is not None:
        warnings += [f"left out: {d}" for d in read.damaged if d.torn]
    incomplete = completeness(read.results, info)[0]
    if incomplete and not allow_incomplete:
        raise ValueError(f"{path}: {incomplete}: not a whole run, so not judged "
                         "(rerun it, or --allow-incomplete compares the cases it has)")
    if incomplete and warnings is not None:
        warnings.append(f"{path}: {incomplete}; compared as it is (--allow-incomplete)")
    return summarise(read.results)


def compare_dirs(base: Path, head: Path, factor: float | None = DEFAULT_FACTOR,
                 warnings: list[str] | None = None, allow_incomplete: bool = False) -> Comparison:
    return compare(load_side(base, warnings, allow_incomplete), load_side(head, warnings, allow_incomplete), factor)


# --- output ------------------------------------------------------------------------------------

def _side_label(path: Path) -> str:
    info = RunDirectory(path).read_run_info()
    parts = [markdown_code(path)]
    if info.get("label"):
        parts.append(markdown_code(info["label"]))
    elif info.get("git_commit"):
        parts.append(f"commit {markdown_code(str(info['git_commit'])[:10])}")
    if info.get("rounds"):
        parts.append(f"{info['rounds']} round(s)")
    return ", ".join(parts)


def _cell(row: Row, kind: str) -> str:
    before, after = row.base.per_token[kind], row.head.per_token[kind] if row.head.runs else None
    if after is None:
        return _count(before)
    if abs(before - after) <= _EPS:
        return _count(before)
    text = f"{_count(before)} -> {_count(after)}"
    return f"**{text}**" if after > before else text


def _tps_cell(row: Row) -> str:
    b, h = row.base.best_tps, row.head.best_tps
    if b is None or h is None:
        return "n/a"
    return f"{b:.0f} -> {h:.0f} ({h / b:.2f}x; {row.base.runs}/{row.head.runs} runs)"


def markdown(comparison: Comparison, base_label: str = "base", head_label: str = "head") -> str:
    verdict = "REGRESSION" if comparison.regressions else "no regression"
    lines = [f"## samedevice compare: {verdict}", ""]
    lines.append(f"- base: {base_label}")
    lines.append(f"- head: {head_label}")
    if comparison.factor is None:
        lines.append("- decode throughput: not judged (--no-throughput)")
    else:
        lines.append(f"- decode throughput: best run per side; head below base / {comparison.factor:g} fails")
    lines.append("- transfers per generated token (and prefill totals): any increase fails")
    lines += ["", "| case | h2d/tok | d2h/tok | d2d/tok | syncs/tok | prefill copies+syncs | decode tok/s best (base -> head) | verdict |",
              "|---|---:|---:|---:|---:|---:|---|---|"]
    for row in comparison.rows:
        prefill_b = sum(row.base.prefill.values())
        prefill_h = sum(row.head.prefill.values()) if row.head.runs else prefill_b
        prefill = str(prefill_b) if prefill_b == prefill_h else f"{prefill_b} -> {prefill_h}"
        verdict = "**REGRESSION**" if row.regressions else ("improved" if row.improvements else "ok")
        lines.append(f"| {markdown_code(row.case_id, table=True)} | {_cell(row, 'h2d')} | {_cell(row, 'd2h')} | {_cell(row, 'd2d')} | "
                     f"{_cell(row, 'sync')} | {prefill} | {_tps_cell(row)} | {verdict} |")
    if not comparison.rows:
        lines.append("| (no case ran on both sides) | | | | | | | |")
    if comparison.regressions:
        lines += ["", "### Regressions", ""] + [f"- {markdown_code(f.case_id)} (scenario {markdown_code(f.scenario)}): {markdown_code(f'{f.what} {f.before} -> {f.after}')}"
                                                for f in comparison.regressions]
    improvements = [f for row in comparison.rows for f in row.improvements]
    if improvements:
        lines += ["", "### Improvements", ""] + [f"- {markdown_code(f.case_id)}: {markdown_code(f'{f.what} {f.before} -> {f.after}')}" for f in improvements]
    if comparison.not_compared:
        lines += ["", "### Not compared", ""] + [f"- {text}" for text in comparison.not_compared]
    if comparison.notes:
        lines += ["", "### Notes", ""] + [f"- {text}" for text in comparison.notes]
    return "\n".join(lines) + "\n"


# --- command line ------------------------------------------------------------------------------

def _factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 1, but got {text!r}") from None
    if not math.isfinite(value) or value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number >= 1, but got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `compare` on the `samedevice` subcommands (harness/frontends/cli.py calls this)."""
    parser = subparsers.add_parser(
        "compare", help="compare two run directories: transfer-count and throughput regressions",
        description="The benchmark gate on two run directories: any increase of transfers per "
                    "token fails, and decode tokens/s below base / factor fails.",
    )
    parser.add_argument("run_a", type=Path, metavar="RUN_A", help="base run directory (results/<run-id>/)")
    parser.add_argument("run_b", type=Path, metavar="RUN_B", help="head run directory")
    parser.add_argument("--throughput-factor", type=_factor, default=DEFAULT_FACTOR,
                        help=f"fail when head decode tokens/s < base / FACTOR (default: {DEFAULT_FACTOR})")
    parser.add_argument("--no-throughput", action="store_true",
                        help="judge transfer counts only (runs from different machines; default: off)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="compare a run that is not whole (interrupted, killed, no run.json) "
                             "instead of refusing it (default: refuse, exit 2)")
    parser.add_argument("--sim-vs-real", action="store_true",
                        help="RUN_A holds real-GPU cases, RUN_B (may be the same directory) their simulated twins: "
                             "fail where tokens or any ledger count differ (harness/record/fidelity.py)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="OUT",
                        help="also write the markdown table here (default: stdout only)")
    parser.set_defaults(func=cmd_compare)
    return parser


def cmd_compare(args: argparse.Namespace) -> int:
    if args.sim_vs_real:
        return cmd_sim_vs_real(args)
    warnings: list[str] = []
    try:
        comparison = compare_dirs(args.run_a, args.run_b, None if args.no_throughput else args.throughput_factor,
                                  warnings, args.allow_incomplete)
        labels = _side_label(args.run_a), _side_label(args.run_b)
    except (ValueError, OSError) as exc:
        print(f"samedevice compare: error: {terminal(exc)}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"samedevice compare: {terminal(warning)}", file=sys.stderr)
    _publish(markdown(comparison, *labels), args.markdown)
    for finding in comparison.regressions:
        print(f"REGRESSION {terminal(finding)}", file=sys.stderr)
    if not comparison.rows:
        print("samedevice compare: error: no case has figures on both sides; nothing was compared", file=sys.stderr)
        return 2
    return 1 if comparison.regressions else 0


def _publish(text: str, out: Path | None) -> None:
    """The table on stdout, in `out` if given, and in the CI job summary where there is one."""
    sys.stdout.write(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as handle:
            handle.write(text)


def cmd_sim_vs_real(args: argparse.Namespace) -> int:
    try:
        real, sim = (RunDirectory(path).load_cases().results for path in (args.run_a, args.run_b))
    except (ValueError, OSError) as exc:
        print(f"samedevice compare: error: {terminal(exc)}", file=sys.stderr)
        return 2
    measured = fidelity.measure(real, sim)
    _publish(fidelity.markdown(measured), args.markdown)
    for pair in measured.differing:
        print(f"SIMULATOR DIFFERS {terminal(pair.real.id)} vs {terminal(pair.sim.device)}: "
              f"{terminal('; '.join(pair.differences))}", file=sys.stderr)
    if not measured.judged:
        print("samedevice compare: error: no real-GPU case has a simulated twin that ran; nothing was compared",
              file=sys.stderr)
        return 2
    return 1 if measured.differing else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.record.compare RUN_A RUN_B ...` (until the CLI registers `compare`)."""
    parser = argparse.ArgumentParser(prog="samedevice")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
