"""Merge shard run directories into one run: duplicates and gaps reported, and the merged
case set must equal the expanded set the shards were cut from, or the merge fails."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import report
from harness.results import CaseResult, RunDirectory


@dataclass
class MergeOutcome:
    run_dir: RunDirectory
    results: list[CaseResult]
    duplicates: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.duplicates or self.gaps or self.unexpected or self.problems)


def merge_runs(sources: list[Path], root: Path) -> MergeOutcome:
    expected: set[str] = set()
    seen: dict[str, CaseResult] = {}
    outcome_problems, duplicates, merged = [], [], []
    infos = []
    for source in sources:
        run = RunDirectory(source)
        info = run.read_run_info()
        if not info and not run.cases_path.exists():
            outcome_problems.append(f"{source}: not a run directory (no run.json or cases.jsonl)")
            continue
        infos.append(info)
        if "expected_ids" in info:
            expected.update(info["expected_ids"])
        else:
            outcome_problems.append(f"{source}: run.json lists no expected_ids (not written by samedevice run?)")
        if info.get("interrupted"):
            outcome_problems.append(f"{source}: that run was interrupted ({info['interrupted']})")
        for result in run.read_cases():
            if result.id in seen:
                duplicates.append(result.id)
                continue
            seen[result.id] = result
            merged.append(result)
    run_dir = RunDirectory.create(root)
    for result in merged:
        run_dir.append(result)
    outcome = MergeOutcome(
        run_dir, merged, sorted(set(duplicates)), sorted(expected - seen.keys()),
        sorted(seen.keys() - expected) if expected else [], outcome_problems,
    )
    base = infos[0] if infos else {}
    info = {k: base.get(k) for k in ("samedevice", "python", "torch", "transformers", "git_commit")}
    info |= {
        "run_id": run_dir.path.name, "merged_from": [str(s) for s in sources], "finished": time.time(),
        "devices": sorted({d for i in infos for d in i.get("devices", [])}),
        "expected_ids": sorted(expected), "duplicates": outcome.duplicates, "gaps": outcome.gaps,
        "unexpected": outcome.unexpected, "problems": outcome.problems,
    }
    run_dir.write_run_info(info)
    (run_dir.path / "report.md").write_text(report.markdown(merged, info, outcome.problems))
    return outcome
