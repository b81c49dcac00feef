"""The CI job matrix: which jobs to start (device kind x engine x shard) for a suite, and an
example GitHub Actions workflow rendered from it.

Jobs select disjoint cases (by device labels and engine), so the merge job can demand that
the union of their results is exactly the expanded case set. A job exists only where its
engine declares the device kind and the job can install the engine, and every shard holds a
case that can run: a job that skips everything is left out, with the reason, not started.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from harness.engines import BUILTIN_ENGINES
from harness.execute.cases import Case, declared_skip_reason, target_matches
from harness.execute.sharding import assign_shards, expected_cost

RUNNERS: dict[str, str | list[str]] = {
    "cpu": "ubuntu-latest",
    "gpu": ["self-hosted", "linux", "gpu"],
    "multigpu": ["self-hosted", "linux", "multi-gpu"],
}
# PyPI's Linux torch wheel is the CUDA build (plus GBs of CUDA libraries); CPU jobs take this one.
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
# Every job installs `.[engines]` (outlines, mistral.rs); an engine outside it names its extra.
BASE_EXTRAS = ("engines",)
ENGINE_EXTRAS = {"llamacpp": ("llamacpp",)}
# On a GPU runner these engines build their CUDA variant from source, with no cached (CPU)
# wheel, and the job checks the build offloads before any case runs.
GPU_BUILD = {
    "llamacpp": ("CMAKE_ARGS=-DGGML_CUDA=on ", "--no-cache-dir ",
                 "python -c \"import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), 'a CPU-only build'\""),
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
    install: str
    cases: list[str] = field(default_factory=list)  # what this job runs (ids)
    skipped: list[str] = field(default_factory=list)  # selected, but skipped wherever they run
    paths: list[str] = field(default_factory=list)  # scenario paths (default: scenarios/)
    fidelity: bool = False  # a GPU job whose cases also run on simulated GPUs, compared with the real ones

    def sim_command(self) -> str:
        """The job's cases on simulated GPUs (`sim:` + each label), for `compare --sim-vs-real`."""
        parts = ["samedevice", "run", *self.paths, "-e", self.engine]
        parts += [a for d in self.devices for a in ("-d", f"sim:{d}")]
        return " ".join([*parts, "--results", "results-sim", "--no-progress", "--allow-empty"])

    def command(self) -> str:
        parts = ["samedevice", "run", *self.paths, "-e", self.engine] + [a for d in self.devices for a in ("-d", d)]
        parts += ["--shard", self.shard, "--results", "results", "--junit", f"results/junit-{self.name}.xml", "--no-progress"]
        if self.strict_devices:
            parts.append("--strict-devices")
        return " ".join(parts)

    def entry(self) -> dict:
        """The job as a workflow matrix entry."""
        return {"name": self.name, "runs_on": self.runs_on, "cases": len(self.cases), "install": self.install,
                "command": self.command(), "gpu": self.kind != "cpu",
                "fidelity": self.sim_command() if self.fidelity else ""}

    def summary(self) -> str:
        skipped = f" (+{len(self.skipped)} skipped by declaration)" if self.skipped else ""
        return f"{self.name}: {len(self.cases)} case{'s' if len(self.cases) != 1 else ''}{skipped}"


@dataclass
class LeftOut:
    """An engine x device label with no job: none of its cases can run in one."""

    engine: str
    label: str
    reasons: Counter

    def line(self) -> str:
        count = sum(self.reasons.values())
        why = "; ".join(reason if len(self.reasons) == 1 else f"{n} x {reason}" for reason, n in self.reasons.most_common())
        return f"left out: {self.engine} x {self.label} ({count} case{'s' if count != 1 else ''}): {why}"


@dataclass
class Matrix:
    jobs: list[Job]
    unschedulable: list[str]  # ids of cases that need more GPUs than a runner has
    left_out: list[LeftOut]


def job_kind(case: Case, gpus_per_runner: int) -> str | None:
    """cpu for cpu and simulated cases, gpu for one real GPU, multigpu for more; None when a
    case needs more GPUs than a runner has."""
    if case.target.simulated or case.target.kind == "cpu":
        return "cpu"
    needed = case.target.spec.gpus_needed
    if needed > gpus_per_runner:
        return None
    return "gpu" if needed == 1 else "multigpu"


def pinned_torch(constraints: Path = CONSTRAINTS) -> str:
    """The torch version constraints.txt (the lock) pins: CPU jobs install it from the CPU index."""
    for line in constraints.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and name.strip().lower() == "torch":
            return version.strip()
    raise ValueError(f"{constraints}: no torch==VERSION pin")


def install_problem(engine: str) -> str | None:
    """Why a CI job cannot install `engine` (a plugin: the workflow knows no install step)."""
    if engine not in BUILTIN_ENGINES:
        return f"engine {engine} is a plugin: the workflow has no step that installs it"
    return None


def install_command(kind: str, engine: str, torch_version: str) -> str:
    extras = ",".join(BASE_EXTRAS + ENGINE_EXTRAS.get(engine, ()))
    if kind == "cpu":
        # torch alone (as nox installs it); its dependencies come with the project, locked.
        return (f"python -m pip install --index-url {CPU_TORCH_INDEX} --no-deps torch=={torch_version} && "
                f"python -m pip install -c constraints.txt -e '.[{extras}]'")
    # GPU runners keep their CUDA torch: no constraints (they pin the CPU build's version).
    env, pip_flags, check = GPU_BUILD.get(engine, ("", "", ""))
    return f"{env}python -m pip install {pip_flags}-e '.[{extras}]'" + (f" && {check}" if check else "")


def build_matrix(cases: list[Case], gpus_per_runner: int = 2, cost_per_job: float = 400.0,
                 paths: list[str] | None = None, torch_version: str | None = None) -> Matrix:
    """The jobs (every shard holds a case that can run), the cases no runner can take, and
    the engine x device labels left out because none of their cases can run anywhere."""
    torch_version = torch_version or pinned_torch()
    declared = {c.id: declared_skip_reason(c) for c in cases}
    problems = {e: install_problem(e) for e in sorted({c.engine for c in cases})}
    groups: dict[tuple[str, str], list[Case]] = {}
    unschedulable = []
    left: dict[tuple[str, str], Counter] = {}
    for case in cases:
        kind = job_kind(case, gpus_per_runner)
        if kind is None:
            unschedulable.append(case.id)
            continue
        groups.setdefault((kind, case.engine), []).append(case)
        reason = problems[case.engine] or declared[case.id]
        if reason:
            left.setdefault((case.engine, case.target.label), Counter())[reason] += 1
    jobs = []
    for (kind, engine), members in sorted(groups.items()):
        runnable = [c for c in members if not problems[engine] and declared[c.id] is None]
        if not runnable:
            continue
        if kind == "cpu":
            devices = sorted({"cpu" if c.target.kind == "cpu" else "sim" for c in runnable})
        else:
            devices = sorted({c.target.label for c in runnable})
        # What `samedevice run -e ENGINE -d ...` selects, sharded as the run shards it.
        selection = [c for c in cases if c.engine == engine and target_matches(c.target, devices)]
        count = max(1, math.ceil(sum(expected_cost(c) for c in runnable) / cost_per_job))
        while True:  # fewer shards until each holds a case that runs
            shards = assign_shards(selection, count)
            if count == 1 or all(any(declared[c.id] is None for c in shard) for shard in shards):
                break
            count -= 1
        for index, shard in enumerate(shards, start=1):
            jobs.append(Job(
                name=f"{kind}-{engine}-{index}of{count}", kind=kind, engine=engine, devices=devices,
                shard=f"{index}/{count}", runs_on=RUNNERS[kind], strict_devices=kind != "cpu",
                install=install_command(kind, engine, torch_version),
                cases=[c.id for c in shard if declared[c.id] is None],
                skipped=[c.id for c in shard if declared[c.id] is not None], paths=list(paths or []),
                fidelity=kind != "cpu" and any(c.engine == engine and c.target.simulated and declared[c.id] is None
                                               and c.target.label.removeprefix("sim:") in devices for c in cases),
            ))
    covered = {(j.engine, c.target.label) for j in jobs for c in cases if c.engine == j.engine and target_matches(c.target, j.devices)}
    left_out = [LeftOut(engine, label, reasons) for (engine, label), reasons in sorted(left.items()) if (engine, label) not in covered]
    return Matrix(jobs, unschedulable, left_out)


def text_matrix(matrix: Matrix) -> str:
    """One line per job (its case count and command), then what was left out and why."""
    lines = [f"{j.summary()}  [{j.command()}]" for j in matrix.jobs]
    return "\n".join(lines + [lo.line() for lo in matrix.left_out]) + "\n"


def json_matrix(matrix: Matrix, cases: int) -> str:
    """Every job with the ids of the cases it runs, and what no job takes."""
    return json.dumps({"jobs": [asdict(j) | {"command": j.command()} for j in matrix.jobs],
                       "unschedulable": matrix.unschedulable,
                       "left_out": [{"engine": lo.engine, "device": lo.label, "reasons": dict(lo.reasons)} for lo in matrix.left_out],
                       "cases": cases}, indent=2)


def github_matrix(jobs: list[Job]) -> str:
    """For `strategy.matrix: ${{ fromJSON(...) }}`."""
    return json.dumps({"include": [j.entry() for j in jobs]})


def render_workflow(matrix: Matrix, torch_version: str | None = None) -> str:
    """A complete workflow: the matrix jobs (CPU sim jobs + GPU jobs with --strict-devices,
    which run the tracker self-test before their cases) and a merge job that writes the job
    summary and fails on any failure or gap. The header lists each job's case count and what
    was left out."""
    jobs = matrix.jobs
    cpu_install = install_command("cpu", "reference", torch_version or pinned_torch())
    workflow = {
        "name": "samedevice",
        "on": {"push": {"branches": ["main"]}, "pull_request": None},
        "jobs": {
            "cases": {
                "name": "${{ matrix.name }}",
                "runs-on": "${{ matrix.runs_on }}",
                "strategy": {"fail-fast": False, "matrix": {"include": [j.entry() for j in jobs]}},
                "steps": [
                    {"uses": "actions/checkout@v4"},
                    {"uses": "actions/setup-python@v5", "with": {"python-version": "3.11"}},
                    {"name": "Install (CPU jobs: torch from PyTorch's CPU index; GPU runners keep their CUDA torch)",
                     "run": "${{ matrix.install }}"},
                    # Before the cases: a tracker that miscounts on this GPU fails here, not by
                    # passing transfer budgets (harness/devices/selftest.py).
                    {"name": "Tracker self-test: a workload of known copies and syncs, counted exactly",
                     "if": "matrix.gpu", "run": "samedevice doctor --selftest --tracker cuda"},
                    {"name": "Run the shard", "run": "${{ matrix.command }}"},
                    # The first real GPU run measures the simulator: the same cases on simulated
                    # GPUs must give the same tokens and ledger counts (harness/record/fidelity.py).
                    # A difference is a finding about the simulator, not the engine: reported in the
                    # job summary, it does not fail the job.
                    {"name": "Simulator fidelity: the same cases on simulated GPUs, compared with this GPU",
                     "if": "always() && matrix.fidelity", "continue-on-error": True,
                     "run": "${{ matrix.fidelity }} && samedevice compare --sim-vs-real results/2*/ results-sim/2*/"},
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
                    {"run": cpu_install},
                    {"uses": "actions/download-artifact@v4", "with": {"path": "shards", "pattern": "samedevice-*"}},
                    {"name": "Merge shards; fail on any failure, gap or duplicate",
                     "run": "samedevice merge shards/*/2*/ --results merged --summary \"$GITHUB_STEP_SUMMARY\""},
                ],
            },
        },
    }
    header = (f"# Generated by `samedevice matrix --format workflow` ({len(jobs)} case jobs, the architecture sweep "
              "and a merge job).\n"
              "# Regenerate after adding scenarios; tests/test_ci.py checks it is current.\n#\n"
              "# Case jobs and the cases each runs:\n" + "".join(f"#   {j.summary()}\n" for j in jobs))
    if matrix.left_out:
        header += "# No job (nothing there could run):\n" + "".join(f"#   {lo.line()}\n" for lo in matrix.left_out)
    return header + yaml.safe_dump(workflow, sort_keys=False, width=200)
