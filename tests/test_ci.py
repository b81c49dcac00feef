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

from harness.cases import expand
from harness.loader import load_paths
from harness.matrix import build_matrix, render_workflow
from harness.sharding import assign_shards, expected_cost, parse_shard
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
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


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
    jobs, unschedulable = build_matrix(bundled_cases(), gpus_per_runner=2)
    assert unschedulable == []
    kinds = {j.kind for j in jobs}
    assert {"cpu", "gpu", "multigpu"} <= kinds
    assert all(j.strict_devices == (j.kind != "cpu") for j in jobs)
    cpu_devices = {d for j in jobs if j.kind == "cpu" for d in j.devices}
    assert cpu_devices == {"cpu", "sim"}


def test_a_case_needing_more_gpus_than_a_runner_has_is_unschedulable() -> None:
    cases = bundled_cases()
    jobs, unschedulable = build_matrix(cases, gpus_per_runner=1)
    needs_two = {c.id for c in cases if not c.target.simulated and c.target.spec.gpus_needed > 1}
    assert needs_two and set(unschedulable) == needs_two
    assert all(j.kind != "multigpu" for j in jobs)


def test_the_bundled_workflow_is_generated_from_the_matrix() -> None:
    jobs, _ = build_matrix(bundled_cases())
    assert WORKFLOW.read_text() == render_workflow(jobs), "regenerate: samedevice matrix --format workflow > .github/workflows/samedevice.yml"


@pytest.mark.skipif(shutil.which("check-jsonschema") is None, reason="check-jsonschema is not installed (dev extra)")
def test_the_bundled_workflow_validates_against_github_schema() -> None:
    out = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_doctor_names_versions_devices_simulation_and_engines() -> None:
    out = subprocess.run([sys.executable, "-m", "harness.cli", "doctor"], capture_output=True, text=True, check=True)
    text = out.stdout
    for expected in ("torch ", "simulation ", "engine     reference: ok", "engine     transformers:"):
        assert expected in text
