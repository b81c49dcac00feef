"""`report`, `merge` and `compare` on damaged or incomplete results: never a traceback; the
file and line are named and the exit code is non-zero; an interrupted or killed run's report
says how many cases never ran; a merge with gaps says so in its job summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.devices.ledger import Ledger
from harness.frontends.cli import main
from harness.record.results import CaseResult, RunDirectory

IDS = [f"s{i}[reference-cpu]" for i in range(5)]


def case(case_id: str) -> CaseResult:
    return CaseResult(id=case_id, scenario=case_id.split("[")[0], engine="reference", device="cpu",
                      file="suite.yaml", line=1, duration_s=0.01,
                      ledger=Ledger(decode_tokens=3))


def run_dir(path: Path, ids: list[str], info: dict) -> Path:
    directory = RunDirectory(path)
    path.mkdir(parents=True)
    for case_id in ids:
        directory.append(case(case_id))
    directory.write_run_info({"run_id": path.name, "devices": ["cpu"]} | info)
    return path


FINISHED = {"expected_ids": IDS, "selected_ids": IDS, "finished": 1.0, "complete": True}


@pytest.mark.parametrize(("damage", "reason"), [
    (b"[1, 2]\n", "a JSON array, not an object"),
    (b"\xff\xfe garbage\n", "not UTF-8 (byte 0xff at offset 0)"),
    (b'{"id": "s9[reference-cpu]", "status": 3}\n', "not a case result: field scenario: Field required"),
])
def test_report_names_a_damaged_line_and_fails(tmp_path: Path, capsys, damage: bytes, reason: str) -> None:
    path = run_dir(tmp_path / "run", IDS, FINISHED)
    with open(path / "cases.jsonl", "ab") as handle:
        handle.write(damage)
    assert main(["report", str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"damaged: {path / 'cases.jsonl'}:6: {reason}" in err
    assert "**5 passed**" in out and "## Damaged result lines (not counted above)" in out
    assert f"`{path / 'cases.jsonl'}:6: {reason}" in out


def test_report_of_a_corrupt_run_json_names_it_and_still_reports_the_cases(tmp_path: Path, capsys) -> None:
    path = run_dir(tmp_path / "run", IDS, FINISHED)
    (path / "run.json").write_text('{"run_id": "x", ')
    assert main(["report", str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"damaged: {path / 'run.json'}: not JSON (Expecting property name enclosed in double quotes" in err
    assert "**5 passed**" in out


@pytest.mark.parametrize(("info", "cause"), [
    ({"interrupted": "SIGTERM", "finished": 2.0}, "interrupted by SIGTERM"),
    ({}, "the run never recorded its end: killed, still running, or unable to write run.json"),  # SIGKILL: run.json as first written
])
def test_an_incomplete_run_says_how_many_cases_never_ran(tmp_path: Path, capsys, info: dict, cause: str) -> None:
    path = run_dir(tmp_path / "run", IDS[:2], {"expected_ids": IDS, "selected_ids": IDS, "complete": False} | info)
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"**INCOMPLETE: 2 of 5 cases ran; 3 never ran ({cause})**" in out
    assert "## Never ran" in out and all(f"- `{i}`" in out for i in IDS[2:])


def test_a_sharded_run_is_judged_by_its_own_share(tmp_path: Path, capsys) -> None:
    path = run_dir(tmp_path / "run", IDS[:2], FINISHED | {"shard": "1/2", "selected_ids": IDS[:2]})
    assert main(["report", str(path)]) == 0
    assert "INCOMPLETE" not in capsys.readouterr().out


def test_a_shard_without_selected_ids_is_not_judged_by_every_shards_cases(tmp_path: Path) -> None:
    """run.json's `complete` and the report apply one rule (results.wanted_ids): a shard's
    `expected_ids` are every shard's cases, so without `selected_ids` its share is unknown."""
    from harness.record import report
    from harness.record.lifecycle import Run, RunSettings

    run = Run.start(RunSettings(results_root=tmp_path), expected_ids=IDS, shard="1/2", environment={})
    for case_id in IDS[:2]:
        run.record(case(case_id))
    assert run.close() == []
    info = json.loads((run.path / "run.json").read_text())
    assert info["complete"] is True, "the other shard's cases counted as never ran"
    assert report.completeness([case(i) for i in IDS[:2]], info) == (None, [])
    unsharded = Run.start(RunSettings(results_root=tmp_path), expected_ids=IDS, environment={})
    unsharded.record(case(IDS[0]))
    unsharded.close()
    assert json.loads((unsharded.path / "run.json").read_text())["complete"] is False


def test_a_merge_with_gaps_says_so_in_the_job_summary(tmp_path: Path, capsys) -> None:
    a = run_dir(tmp_path / "a", IDS[:2], FINISHED | {"shard": "1/3", "selected_ids": IDS[:2]})
    b = run_dir(tmp_path / "b", IDS[2:4], FINISHED | {"shard": "2/3", "selected_ids": IDS[2:4]})
    summary = tmp_path / "summary.md"
    assert main(["merge", str(a), str(b), "--results", str(tmp_path / "merged"), "--summary", str(summary)]) == 1
    err = capsys.readouterr().err
    assert f"gap: {IDS[4]}" in err and "1 gaps" in err
    text = summary.read_text()
    assert "**INCOMPLETE: 4 of 5 cases ran; 1 never ran**" in text
    assert f"## Gaps: expected cases that no run produced\n\n- `{IDS[4]}`" in text
    assert "Invalid scenario files" not in text


def test_a_merge_of_damaged_inputs_names_each_and_fails(tmp_path: Path, capsys) -> None:
    good = run_dir(tmp_path / "good", IDS[:3], FINISHED)
    torn = run_dir(tmp_path / "torn", IDS[3:], FINISHED)
    with open(torn / "cases.jsonl", "ab") as handle:
        handle.write(b'"not an object"\n\xff\n')
    broken = run_dir(tmp_path / "broken", [], FINISHED)
    (broken / "run.json").write_bytes(b"\x00\x01")
    summary = tmp_path / "summary.md"
    args = ["merge", str(good), str(torn), str(broken), str(tmp_path / "missing"), "--results", str(tmp_path / "m"),
            "--summary", str(summary)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"damaged: {torn / 'cases.jsonl'}:3: a JSON string, not an object" in err
    assert f"damaged: {torn / 'cases.jsonl'}:4: not UTF-8 (byte 0xff at offset 0)" in err
    assert f"problem: {broken / 'run.json'}: not JSON (" in err
    assert f"problem: {tmp_path / 'missing'}: not a run directory (no run.json or cases.jsonl)" in err
    text = summary.read_text()
    assert "## Damaged result lines (not counted above)" in text and "## Problems with the merged runs" in text
    [merged] = list((tmp_path / "m").iterdir())
    assert len((merged / "cases.jsonl").read_text().splitlines()) == 5, "every readable case is merged"


def test_a_merge_of_a_shard_without_run_json_is_a_problem_naming_it(tmp_path: Path, capsys) -> None:
    a = run_dir(tmp_path / "a", IDS[:3], FINISHED | {"shard": "1/2", "selected_ids": IDS[:3]})
    b = run_dir(tmp_path / "b", IDS[3:], FINISHED | {"shard": "2/2", "selected_ids": IDS[3:]})
    (b / "run.json").unlink()
    assert main(["merge", str(a), str(b), "--results", str(tmp_path / "merged")]) == 1
    err = capsys.readouterr().err
    assert f"problem: {b}: no run.json (its expected cases are unknown" in err
    assert "1 problems" in err.splitlines()[-1]


@pytest.mark.parametrize(("damage", "expected"), [
    (("cases.jsonl", b"[1]\n"), "damaged result line: {head}/cases.jsonl:2: a JSON array, not an object"),
    (("cases.jsonl", b"\xc3\x28\n"), "damaged result line: {head}/cases.jsonl:2: not UTF-8 (byte 0xc3 at offset 0)"),
    (("run.json", b"[]"), "{head}/run.json: a JSON array, not an object"),
])
def test_compare_names_damaged_input_and_exits_2(tmp_path: Path, capsys, damage, expected: str) -> None:
    one = FINISHED | {"expected_ids": IDS[:1], "selected_ids": IDS[:1]}
    base = run_dir(tmp_path / "base", IDS[:1], one)
    head = run_dir(tmp_path / "head", IDS[:1], one)
    name, content = damage
    with open(head / name, "ab" if name == "cases.jsonl" else "wb") as handle:
        handle.write(content)
    assert main(["compare", str(base), str(head)]) == 2
    assert f"samedevice compare: error: {expected.format(head=head)}" in capsys.readouterr().err


def test_the_null_fields_a_run_writes_pass_the_run_json_checks(tmp_path: Path) -> None:
    path = run_dir(tmp_path / "run", IDS, FINISHED | {"interrupted": None, "shard": None, "write_error": None})
    assert RunDirectory(path).read_run_info()["selected_ids"] == IDS
    assert json.loads((path / "run.json").read_text())["complete"] is True


@pytest.mark.parametrize(("damage", "expected"), [
    ("truncate", "INCOMPLETE: 2 of 5 cases ran; 3 never ran"),
    ("no run.json", "INCOMPLETE: no run.json, so which cases were to run and whether the run ended are unknown"),
    ("killed", "INCOMPLETE: 3 of 5 cases ran; 2 never ran (the run never recorded its end"),
])
def test_compare_refuses_a_run_that_is_not_whole(tmp_path: Path, capsys, damage: str, expected: str) -> None:
    base = run_dir(tmp_path / "base", IDS, FINISHED)
    head = run_dir(tmp_path / "head", {"truncate": IDS[:2], "killed": IDS[:3]}.get(damage, IDS),
                   {k: v for k, v in FINISHED.items() if k != "finished"} if damage == "killed" else FINISHED)
    if damage == "no run.json":
        (head / "run.json").unlink()
    assert main(["compare", str(base), str(head), "--no-throughput"]) == 2
    err = capsys.readouterr().err
    assert f"samedevice compare: error: {head}: {expected}" in err and "not a whole run, so not judged" in err
    assert main(["compare", str(base), str(head), "--no-throughput", "--allow-incomplete"]) == 0
    assert "compared as it is (--allow-incomplete)" in capsys.readouterr().err


def test_report_of_a_run_without_run_json_says_so_and_fails(tmp_path: Path, capsys) -> None:
    path = run_dir(tmp_path / "run", IDS, FINISHED)
    (path / "run.json").unlink()
    assert main(["report", str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"samedevice report: {path} has no run.json" in err
    assert "**INCOMPLETE: no run.json" in out and "samedevice `unknown`" in out and "`None`" not in out
