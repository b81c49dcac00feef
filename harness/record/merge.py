"""Merge shard run directories into one run: duplicates, gaps, unexpected cases, damaged
lines and unusable inputs are reported, and the merged case set must equal the expanded set
the shards were cut from, or the merge fails. Damaged input is named (file and line), never
a traceback; the merged run.json keeps all of it, so its report (the CI job summary) says so."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.record.lifecycle import Run, RunSettings
from harness.record.results import CaseResult, DamagedLine, DamagedResults, RunDirectory


@dataclass
class MergeOutcome:
    run_dir: RunDirectory
    results: list[CaseResult]
    duplicates: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    damaged: list[DamagedLine] = field(default_factory=list)
    report: str = ""  # the merged run's report.md
    sources_read: int = 0  # the sources whose cases could be read

    @property
    def complete(self) -> bool:
        return not (self.duplicates or self.gaps or self.unexpected or self.problems or self.damaged)


def _read_source(source: Path, problems: list[str]) -> tuple[dict, list[CaseResult], list[DamagedLine]] | None:
    """One shard's run.json and cases; None (with a problem recorded) if it is unusable."""
    run = RunDirectory(source)
    if not run.run_path.exists() and not run.cases_path.exists():
        problems.append(f"{source}: not a run directory (no run.json or cases.jsonl)")
        return None
    info: dict = {}
    if not run.run_path.exists():  # its expected cases, its end and its environment are unknown
        problems.append(f"{source}: no run.json (its expected cases are unknown; killed before its start was "
                        "recorded, or not written by samedevice?)")
    try:
        info = run.read_run_info()
    except DamagedResults as exc:
        problems.append(f"{exc} (its expected cases are unknown)")
    except OSError as exc:
        problems.append(f"{run.run_path}: cannot be read: {exc.strerror or exc}")
    try:
        read = run.load_cases()
    except OSError as exc:
        problems.append(f"{run.cases_path}: cannot be read: {exc.strerror or exc}")
        return None
    if info and "expected_ids" not in info:
        problems.append(f"{source}: run.json lists no expected_ids (not written by samedevice run?)")
    if info.get("interrupted"):
        problems.append(f"{source}: that run was interrupted ({info['interrupted']})")
    if info.get("write_error"):
        problems.append(f"{source}: that run stopped early: {info['write_error']}")
    elif info and "finished" not in info:
        problems.append(f"{source}: that run never recorded its end: killed, still running, or unable to write run.json")
    return info, read.results, read.damaged


def merge_runs(sources: list[Path], root: Path) -> MergeOutcome:
    """Merge `sources` into a new run under `root`. OSError if the merged run cannot be written."""
    expected: set[str] = set()
    seen: dict[str, CaseResult] = {}
    problems: list[str] = []
    duplicates, merged, damaged, infos = [], [], [], []
    for source in sources:
        one = _read_source(Path(source), problems)
        if one is None:
            continue
        info, results, bad_lines = one
        infos.append(info)
        damaged += bad_lines
        expected.update(info.get("expected_ids", []))
        for result in results:
            if result.id in seen:
                duplicates.append(result.id)
                continue
            seen[result.id] = result
            merged.append(result)
    base = infos[0] if infos else {}
    environment = {k: base.get(k) for k in ("samedevice", "python", "torch", "transformers", "git_commit", "libraries")
                   if base.get(k) is not None}
    environment["devices"] = sorted({d for i in infos for d in i.get("devices", [])})
    run = Run.start(RunSettings(results_root=root, front_end="merge"), expected_ids=sorted(expected),
                    invalid_files=sorted({f for i in infos for f in i.get("invalid_files", [])}),
                    environment=environment, merged_from=[str(s) for s in sources])
    for result in merged:
        run.record(result)
    outcome = MergeOutcome(
        run.directory, merged, sorted(set(duplicates)), sorted(expected - seen.keys()),
        sorted(seen.keys() - expected) if expected else [], problems, damaged, sources_read=len(infos),
    )
    run.info.duplicates, run.info.gaps, run.info.unexpected = outcome.duplicates, outcome.gaps, outcome.unexpected
    run.info.problems, run.info.damaged = outcome.problems, [str(d) for d in damaged]
    unwritten = run.close(merged)
    if unwritten:
        raise OSError("; ".join(unwritten))
    outcome.report = (run.path / "report.md").read_text()
    return outcome
