"""CI support: shards cover the suite exactly once, merge finds gaps and duplicates, the
generated workflow is current and valid, JUnit XML and doctor work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.engines import Capabilities, Engine, register
from harness.execute.cases import declared_skip_reason, expand, selected
from harness.execute.matrix import CPU_TORCH_INDEX, build_matrix, pinned_torch, render_workflow
from harness.execute.sharding import assign_shards, expected_cost, parse_shard, select_shard
from harness.format.loader import load_paths
from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "samedevice.yml"


def bundled_cases():
    return [c for s in load_paths([REPO / "scenarios"]).scenarios for c in expand(s)]


def test_shards_cover_every_case_exactly_once_and_are_balanced() -> None:
    cases = bundled_cases()
    shards = assign_shards(cases, 3)
    ids = [c.id for shard in shards for c in shard]
    assert sorted(ids) == sorted(c.id for c in cases) and len(ids) == len(set(ids))
    loads = [sum(expected_cost(c) for c in shard) for shard in shards]
    assert max(loads) <= 1.5 * (sum(loads) / 3), f"unbalanced shards: {loads}"
    assert [[c.id for c in s] for s in assign_shards(cases, 3)] == [[c.id for c in s] for s in shards], "deterministic"


@pytest.mark.parametrize("bad", ["0/3", "4/3", "1-3", "a/b", "1/0"])
def test_bad_shard_specs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="--shard must look like i/n"):
        parse_shard(bad)


SUITE = "\n".join(
    f"- name: s{i}\n  description: d\n  devices: [cpu]\n  prompt: 'case {i}'\n  max_new_tokens: {2 + i % 3}\n"
    + ("  checks: {expect_error: {match: never}}\n" if i == 4 else "")
    for i in range(7)
)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.frontends.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _verdicts(run_dir: Path) -> dict[str, str]:
    return {c["id"]: c["status"] for c in map(json.loads, (run_dir / "cases.jsonl").read_text().splitlines())}


def test_three_shards_merged_equal_the_unsharded_run(tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(SUITE)
    whole = _cli("run", "suite.yaml", "--results", "whole", "--no-progress", "--isolation", "none", cwd=tmp_path)
    assert whole.returncode == 1, "one case is built to fail"
    for i in (1, 2, 3):
        _cli("run", "suite.yaml", "--shard", f"{i}/3", "--results", f"shard{i}", "--no-progress", "--isolation", "none", cwd=tmp_path)
    shard_dirs = [str(next((tmp_path / f"shard{i}").iterdir())) for i in (1, 2, 3)]
    merged = _cli("merge", *shard_dirs, "--results", "merged", "--summary", "summary.md", cwd=tmp_path)
    assert merged.returncode == 1, "the merged run carries the failing case"
    assert "0 gaps, 0 duplicates" in merged.stderr
    [merged_dir] = list((tmp_path / "merged").iterdir())
    assert _verdicts(merged_dir) == _verdicts(next((tmp_path / "whole").iterdir()))
    assert "s4[reference-cpu]" in (tmp_path / "summary.md").read_text()

    gap = _cli("merge", *shard_dirs[:2], "--results", "gap", cwd=tmp_path)
    assert gap.returncode == 1 and "gap: " in gap.stderr
    dup = _cli("merge", shard_dirs[0], shard_dirs[0], shard_dirs[1], shard_dirs[2], "--results", "dup", cwd=tmp_path)
    assert dup.returncode == 1 and "duplicate: " in dup.stderr


def test_junit_xml_counts_match_the_run(tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(SUITE)
    _cli("run", "suite.yaml", "--results", "r", "--junit", "junit.xml", "--no-progress", "--isolation", "none", cwd=tmp_path)
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("7", "1", "0")
    assert suite.find("testcase[@name='s4[reference-cpu]']/failure") is not None


def test_matrix_jobs_are_disjoint_and_gpu_jobs_are_strict() -> None:
    matrix = build_matrix(bundled_cases(), gpus_per_runner=2)
    jobs = matrix.jobs
    assert matrix.unschedulable == []
    kinds = {j.kind for j in jobs}
    assert {"cpu", "gpu", "multigpu"} <= kinds
    assert all(j.strict_devices == (j.kind != "cpu") for j in jobs)
    cpu_devices = {d for j in jobs if j.kind == "cpu" for d in j.devices}
    assert cpu_devices == {"cpu", "sim"}


def test_a_case_needing_more_gpus_than_a_runner_has_is_unschedulable() -> None:
    cases = bundled_cases()
    matrix = build_matrix(cases, gpus_per_runner=1)
    needs_two = {c.id for c in cases if not c.target.simulated and c.target.spec.gpus_needed > 1}
    assert needs_two and set(matrix.unschedulable) == needs_two
    assert all(j.kind != "multigpu" for j in matrix.jobs)


def test_the_bundled_workflow_is_generated_from_the_matrix() -> None:
    assert WORKFLOW.read_text() == render_workflow(build_matrix(bundled_cases())), \
        "regenerate: samedevice matrix --format workflow > .github/workflows/samedevice.yml"


def _runs(job, cases) -> tuple[list[str], list[str]]:
    """What `samedevice run -e ENGINE -d ... --shard I/N` selects: (declared runnable, declared skipped)."""
    shard = select_shard([c for c in cases if selected(c, [job.engine], job.devices)], job.shard)
    return ([c.id for c in shard if declared_skip_reason(c) is None],
            [c.id for c in shard if declared_skip_reason(c) is not None])


def test_every_job_runs_the_cases_it_lists_and_none_is_empty() -> None:
    cases = bundled_cases()
    matrix = build_matrix(cases)
    for job in matrix.jobs:
        assert job.cases, f"{job.name} would run nothing"
        assert _runs(job, cases) == (job.cases, job.skipped), job.name
    # Each case is in one job, or left out (with its engine x device label), never both.
    listed = [i for j in matrix.jobs for i in j.cases + j.skipped]
    assert len(listed) == len(set(listed))
    left = {(lo.engine, lo.label) for lo in matrix.left_out}
    assert {c.id for c in cases if (c.engine, c.target.label) in left} | set(listed) == {c.id for c in cases}
    assert not {c.id for c in cases if (c.engine, c.target.label) in left} & set(listed)


def test_engines_get_no_job_on_device_kinds_they_do_not_declare() -> None:
    matrix = build_matrix(bundled_cases())
    jobs = {(j.kind, j.engine) for j in matrix.jobs}
    # mistral.rs declares cpu only (its PyPI wheel is a CPU build); llama.cpp cpu and cuda.
    assert ("cpu", "mistralrs") in jobs and ("gpu", "mistralrs") not in jobs and ("multigpu", "mistralrs") not in jobs
    assert ("gpu", "llamacpp") in jobs and ("multigpu", "llamacpp") not in jobs
    lines = [lo.line() for lo in matrix.left_out]
    assert "left out: mistralrs x cuda:0 (3 cases): engine mistralrs does not support device kind cuda" in lines
    assert "left out: llamacpp x auto (3 cases): engine llamacpp does not support device kind auto" in lines
    out = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "matrix", "--format", "workflow"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout == WORKFLOW.read_text()
    assert "left out: mistralrs x cuda:0 (3 cases): engine mistralrs does not support device kind cuda" in out.stderr.splitlines()


def test_an_optional_engine_job_installs_its_extra_and_cpu_jobs_take_cpu_torch() -> None:
    jobs = {j.name: j for j in build_matrix(bundled_cases()).jobs}
    assert jobs["cpu-llamacpp-1of1"].install.endswith("-e '.[engines,llamacpp]'")
    gpu = jobs["gpu-llamacpp-1of1"].install
    # The CUDA build, not a cached CPU wheel, checked to offload before any case runs.
    assert gpu.startswith("CMAKE_ARGS=-DGGML_CUDA=on ") and "--no-cache-dir" in gpu and "llama_supports_gpu_offload()" in gpu
    for job in jobs.values():
        if job.engine != "llamacpp":
            assert "llamacpp" not in job.install
        torch_first = f"python -m pip install --index-url {CPU_TORCH_INDEX} --no-deps torch=={pinned_torch()} && "
        assert job.install.startswith(torch_first) == (job.kind == "cpu"), job.name
        assert ("constraints.txt" in job.install) == (job.kind == "cpu"), "GPU jobs keep their CUDA torch"
    assert f"torch=={pinned_torch()} && python -m pip install -c constraints.txt -e '.[engines]'" in WORKFLOW.read_text()


def test_a_shard_that_would_hold_only_skipped_cases_is_not_made(tmp_path: Path) -> None:
    # outlines lacks beam_search: those cases are selected by `-e outlines -d cpu` and skip.
    suite = "".join(f"- name: beam{i}\n  description: d\n  engines: [outlines]\n  devices: [cpu]\n  prompt: 'p'\n"
                    f"  max_new_tokens: 64\n  features: {{beam_search: {{num_beams: 2}}}}\n" for i in range(3))
    suite += "- name: plain\n  description: d\n  engines: [outlines]\n  devices: [cpu]\n  prompt: 'p'\n  max_new_tokens: 2\n"
    (tmp_path / "s.yaml").write_text(suite)
    cases = [c for s in load_paths([tmp_path / "s.yaml"]).scenarios for c in expand(s)]
    assert [declared_skip_reason(c) is None for c in cases] == [False, False, False, True]
    # The cost of the runnable case asks for several shards; the expensive skipped cases
    # would fill all but one of them.
    matrix = build_matrix(cases, cost_per_job=1.0)
    assert [(j.name, j.cases, len(j.skipped)) for j in matrix.jobs] == [("cpu-outlines-1of1", ["plain[outlines-cpu]"], 3)]


@register
class CiPluginEngine(Engine):  # registered by this module: a plugin, as far as the matrix knows
    name = "ci-plugin"
    capabilities = Capabilities(devices=frozenset({"cpu"}))

    def load(self, request, placement):
        raise NotImplementedError

    def generate(self, request):
        raise NotImplementedError


def test_an_engine_with_no_install_step_gets_no_job(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("- name: x\n  description: d\n  engines: [ci-plugin, reference]\n  devices: [cpu]\n"
                                     "  prompt: 'p'\n  max_new_tokens: 2\n")
    loaded = load_paths([tmp_path / "s.yaml"])
    assert loaded.errors == []
    matrix = build_matrix([c for s in loaded.scenarios for c in expand(s)])
    assert [j.engine for j in matrix.jobs] == ["reference"]
    assert [lo.line() for lo in matrix.left_out] == [
        "left out: ci-plugin x cpu (1 case): engine ci-plugin is a plugin: the workflow has no step that installs it"]


ALL_SKIP = "- name: gpu-only\n  description: d\n  engines: [reference, mistralrs]\n  devices: [cuda:0]\n  prompt: 'p'\n  max_new_tokens: 2\n"


def test_a_run_where_every_case_skipped_fails_unless_allow_empty(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(ALL_SKIP)
    args = ("run", "s.yaml", "-d", "cuda:0", "--no-progress", "--isolation", "none")
    out = _cli(*args, "--results", "a", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    assert "skipped: 1 x needs 1 CUDA device, 0 visible" in lines
    assert "skipped: 1 x engine mistralrs does not support device kind cuda" in lines
    assert ("samedevice: error: nothing ran: all 2 selected cases were skipped (reasons above; --allow-empty "
            "accepts a run where nothing ran)") in lines
    allowed = _cli(*args, "--results", "b", "--allow-empty", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert "skipped: 1 x needs 1 CUDA device, 0 visible" in allowed.stderr.splitlines()
    assert set(_verdicts(next((tmp_path / "b").iterdir())).values()) == {"skipped"}
    # One case that runs is enough.
    (tmp_path / "s.yaml").write_text(ALL_SKIP.replace("[cuda:0]", "[cpu, cuda:0]"))
    some = _cli("run", "s.yaml", "-e", "reference", "--no-progress", "--isolation", "none", "--results", "c", cwd=tmp_path)
    assert some.returncode == 0 and "nothing ran" not in some.stderr, some.stderr


def test_a_strict_gpu_job_that_can_run_nothing_fails(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(ALL_SKIP)
    # mistral.rs declares no cuda: without a GPU or with one, every case skips.
    for extra in ((), ("--allow-empty",)):
        out = _cli("run", "s.yaml", "-e", "mistralrs", "-d", "cuda:0", "--strict-devices", "--no-progress",
                   "--isolation", "none", "--results", "r", *extra, cwd=tmp_path)
        assert out.returncode == 1, out.stderr
        assert ("samedevice: error: nothing ran: all 1 selected cases were skipped, and --strict-devices fails a run "
                "that exercised no device (--allow-empty does not change that)") in out.stderr.splitlines()


@pytest.mark.skipif(shutil.which("check-jsonschema") is None, reason="check-jsonschema is not installed (dev extra)")
def test_the_bundled_workflow_validates_against_github_schema() -> None:
    out = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_doctor_names_versions_devices_simulation_and_engines() -> None:
    out = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "doctor"], capture_output=True, text=True, check=True)
    text = out.stdout
    for expected in ("torch ", "simulation ", "engine     reference: ok", "engine     transformers:"):
        assert expected in text
