"""The CI job matrix: which jobs to start (device kind x engine x shard) for a suite, and an
example GitHub Actions workflow rendered from it.

Jobs select disjoint cases (by device labels and engine), so the merge job can demand that
the union of their results is exactly the expanded case set.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import yaml

from harness.cases import Case
from harness.sharding import expected_cost

RUNNERS: dict[str, str | list[str]] = {
    "cpu": "ubuntu-latest",
    "gpu": ["self-hosted", "linux", "gpu"],
    "multigpu": ["self-hosted", "linux", "multi-gpu"],
}


@dataclass
class Job:
    name: str
    kind: str  # cpu | gpu | multigpu
    engine: str
    devices: list[str]
    shard: str
    runs_on: str | list[str]
    strict_devices: bool

    def command(self) -> str:
        parts = ["samedevice", "run", "-e", self.engine] + [a for d in self.devices for a in ("-d", d)]
        parts += ["--shard", self.shard, "--results", "results", "--junit", f"results/junit-{self.name}.xml", "--no-progress"]
        if self.strict_devices:
            parts.append("--strict-devices")
        return " ".join(parts)


def job_kind(case: Case, gpus_per_runner: int) -> str | None:
    """cpu for cpu and simulated cases, gpu for one real GPU, multigpu for more; None when a
    case needs more GPUs than a runner has."""
    if case.target.simulated or case.target.kind == "cpu":
        return "cpu"
    needed = case.target.spec.gpus_needed
    if needed > gpus_per_runner:
        return None
    return "gpu" if needed == 1 else "multigpu"


def build_matrix(cases: list[Case], gpus_per_runner: int = 2, cost_per_job: float = 400.0) -> tuple[list[Job], list[str]]:
    """The jobs, and the ids of cases no runner can take."""
    groups: dict[tuple[str, str], list[Case]] = {}
    unschedulable = []
    for case in cases:
        kind = job_kind(case, gpus_per_runner)
        if kind is None:
            unschedulable.append(case.id)
            continue
        groups.setdefault((kind, case.engine), []).append(case)
    jobs = []
    for (kind, engine), members in sorted(groups.items()):
        shards = max(1, math.ceil(sum(expected_cost(c) for c in members) / cost_per_job))
        if kind == "cpu":
            devices = sorted({"cpu" if c.target.kind == "cpu" else "sim" for c in members})
        else:
            devices = sorted({c.target.label for c in members})
        for index in range(1, shards + 1):
            jobs.append(Job(
                name=f"{kind}-{engine}-{index}of{shards}", kind=kind, engine=engine, devices=devices,
                shard=f"{index}/{shards}", runs_on=RUNNERS[kind], strict_devices=kind != "cpu",
            ))
    return jobs, unschedulable


def github_matrix(jobs: list[Job]) -> str:
    """For `strategy.matrix: ${{ fromJSON(...) }}`."""
    return json.dumps({"include": [asdict(j) | {"command": j.command()} for j in jobs]})


def render_workflow(jobs: list[Job]) -> str:
    """A complete workflow: the matrix jobs (CPU sim job + GPU jobs with --strict-devices,
    which run the tracker self-test before their cases) and a merge job that writes the job summary and fails on any failure or gap."""
    install = "python -m pip install -c constraints.txt -e '.[engines]'"
    workflow = {
        "name": "samedevice",
        "on": {"push": {"branches": ["main"]}, "pull_request": None},
        "jobs": {
            "cases": {
                "name": "${{ matrix.name }}",
                "runs-on": "${{ matrix.runs_on }}",
                "strategy": {"fail-fast": False, "matrix": {"include": [
                    {"name": j.name, "runs_on": j.runs_on, "command": j.command(), "gpu": j.kind != "cpu"}
                    for j in jobs
                ]}},
                "steps": [
                    {"uses": "actions/checkout@v4"},
                    {"uses": "actions/setup-python@v5", "with": {"python-version": "3.11"}},
                    {"name": "Install (CPU torch from constraints; GPU runners keep their CUDA torch)",
                     "run": f"if [ \"${{{{ matrix.gpu }}}}\" = true ]; then python -m pip install -e '.[engines]'; else {install}; fi"},
                    # Before the cases: a tracker that miscounts on this GPU fails here, not by
                    # passing transfer budgets (harness/selftest.py).
                    {"name": "Tracker self-test: a workload of known copies and syncs, counted exactly",
                     "if": "matrix.gpu", "run": "samedevice doctor --selftest --tracker cuda"},
                    {"name": "Run the shard", "run": "${{ matrix.command }}"},
                    {"uses": "actions/upload-artifact@v4", "if": "always()",
                     "with": {"name": "samedevice-${{ matrix.name }}", "path": "results/"}},
                ],
            },
            # The architecture sweep (sweeps/architectures.yaml, `nox -s sweep`): not the bundled
            # suite, so not in the matrix. Its failures are findings about transformers, listed in the
            # job summary; they do not fail the workflow.
            "sweep": {
                "name": "architecture sweep (transformers on cpu + simulated GPUs)",
                "runs-on": "ubuntu-latest",
                "continue-on-error": True,
                "timeout-minutes": 60,
                "steps": [
                    {"uses": "actions/checkout@v4"},
                    {"uses": "actions/setup-python@v5", "with": {"python-version": "3.11"}},
                    {"run": "python -m pip install nox"},
                    {"name": "Sweep every architecture transformers builds tiny", "run": "python -m nox -s sweep"},
                    {"name": "Table into the job summary", "if": "always()",
                     "run": "cat results/sweep/architectures.md >> \"$GITHUB_STEP_SUMMARY\""},
                    {"uses": "actions/upload-artifact@v4", "if": "always()",
                     "with": {"name": "sweep-results", "path": "results/sweep/"}},  # not samedevice-*: the merge job takes those
                ],
            },
            "merge": {
                "needs": "cases",
                "if": "always()",
                "runs-on": "ubuntu-latest",
                "steps": [
                    {"uses": "actions/checkout@v4"},
                    {"uses": "actions/setup-python@v5", "with": {"python-version": "3.11"}},
                    {"run": install},
                    {"uses": "actions/download-artifact@v4", "with": {"path": "shards", "pattern": "samedevice-*"}},
                    {"name": "Merge shards; fail on any failure, gap or duplicate",
                     "run": "samedevice merge shards/*/2*/ --results merged --summary \"$GITHUB_STEP_SUMMARY\""},
                ],
            },
        },
    }
    header = (f"# Generated by `samedevice matrix --format workflow` ({len(jobs)} case jobs, the architecture sweep "
              "and a merge job).\n"
              "# Regenerate after adding scenarios; tests/test_ci.py checks it is current.\n")
    return header + yaml.safe_dump(workflow, sort_keys=False, width=200)
