"""`samedevice compare`: the benchmark gate on two run directories (fast, no model runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from harness.devices.ledger import Ledger
from harness.execute.case_errors import ErrorInfo
from harness.record.compare import add_parser, compare_dirs, main
from harness.record.results import CaseResult, RunDirectory

SIM = "greedy[reference-sim:cuda:0]"
CPU = "greedy[reference-cpu]"


def case(case_id: str = SIM, *, tps: float | None = 1000.0, tokens: int = 23, h2d: int = 0, d2h: int = 23,
         d2d: int = 0, sync: int = 0, prefill_h2d: int = 1, status: str = "passed",
         error: str | None = None, reason: str = "") -> CaseResult:
    scenario, rest = case_id.split("[")
    engine, device = rest.rstrip("]").split("-", 1)
    counts = {f"decode.{k}": n for k, n in (("h2d", h2d), ("d2h", d2h), ("d2d", d2d), ("sync", sync)) if n}
    if prefill_h2d:
        counts["prefill.h2d"] = prefill_h2d
    result = CaseResult(id=case_id, scenario=scenario, engine=engine, device=device, file="scenarios/basic.yaml",
                        line=3, status=status, reason=reason)
    if status == "skipped":
        return result
    if error:
        result.error = ErrorInfo("RuntimeError", error)
        return result
    result.ledger = Ledger.from_json({"decode_tokens": tokens, "counts": counts})
    result.timings = {"prefill_s": 0.001, "decode_s": 0.02}
    if tps is not None:
        result.timings["decode_tokens_per_s"] = tps
    return result


def run_dir(path: Path, *results: CaseResult, info: dict | None = None) -> Path:
    directory = RunDirectory(path)
    path.mkdir(parents=True)
    for result in results:
        directory.append(result)
    directory.write_run_info(info or {"run_id": path.name, "finished": 1.0, "complete": True})
    return path


def compare(tmp_path: Path, base: list[CaseResult], head: list[CaseResult], *args: str) -> int:
    return main([str(run_dir(tmp_path / "base", *base)), str(run_dir(tmp_path / "head", *head)), *args])


def test_an_unchanged_run_passes_and_prints_a_markdown_table(tmp_path, capsys):
    rc = compare(tmp_path, [case(), case(CPU, d2h=0)], [case(tps=990.0), case(CPU, d2h=0, tps=1010.0)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "## samedevice compare: no regression" in out
    assert "| case | h2d/tok | d2h/tok | d2d/tok | syncs/tok |" in out
    assert f"| `{SIM}` | 0 | 1 | 0 | 0 |" in out


@pytest.mark.parametrize(("kind", "label"), [("h2d", "h2d"), ("d2h", "d2h"), ("d2d", "d2d"), ("sync", "syncs")])
def test_one_extra_transfer_per_token_fails_naming_case_scenario_kind_and_counts(tmp_path, capsys, kind, label):
    before = {"h2d": 0, "d2h": 23, "d2d": 0, "sync": 0}
    after = dict(before, **{kind: before[kind] + 23})
    rc = compare(tmp_path, [case(**before)], [case(**after)])
    captured = capsys.readouterr()
    assert rc == 1
    expected = f"{SIM} (scenario greedy): {label} per token {before[kind] // 23} -> {after[kind] // 23}"
    assert f"REGRESSION {expected}" in captured.err
    assert "**REGRESSION**" in captured.out


def test_a_single_extra_copy_in_a_whole_run_is_caught_from_exact_counts(tmp_path, capsys):
    # 1 extra copy over 1000 tokens: 1 -> 1.001 per token (the ledger's per_token rounds to 4 places).
    rc = compare(tmp_path, [case(tokens=1000, d2h=1000)], [case(tokens=1000, d2h=1001)])
    assert rc == 1
    assert "d2h per token 1 -> 1.001" in capsys.readouterr().err


def test_an_extra_copy_in_prefill_fails(tmp_path, capsys):
    rc = compare(tmp_path, [case(prefill_h2d=1)], [case(prefill_h2d=2)])
    assert rc == 1
    assert "prefill h2d (total) 1 -> 2" in capsys.readouterr().err


def test_fewer_copies_is_an_improvement_not_a_failure(tmp_path, capsys):
    rc = compare(tmp_path, [case(d2h=46)], [case(d2h=23)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "### Improvements" in out
    assert "d2h per token 2 -> 1" in out


def test_decode_throughput_below_base_over_factor_fails(tmp_path, capsys):
    rc = compare(tmp_path, [case(tps=1000.0)], [case(tps=880.0)])  # 0.88x < 1/1.1
    assert rc == 1
    assert "decode tokens/s (best run) 1000 -> 880" in capsys.readouterr().err


def test_decode_throughput_within_the_factor_passes(tmp_path, capsys):
    assert compare(tmp_path, [case(tps=1000.0)], [case(tps=950.0)]) == 0, capsys.readouterr().out


def test_the_throughput_factor_is_configurable(tmp_path, capsys):
    assert compare(tmp_path, [case(tps=1000.0)], [case(tps=800.0)], "--throughput-factor", "1.3") == 0
    assert "head below base / 1.3 fails" in capsys.readouterr().out


def test_no_throughput_judges_transfer_counts_only(tmp_path, capsys):
    assert compare(tmp_path, [case(tps=1000.0)], [case(tps=100.0)], "--no-throughput") == 0
    assert "not judged" in capsys.readouterr().out


def test_the_best_of_repeated_runs_absorbs_a_noisy_run(tmp_path, capsys):
    base = [case(tps=1000.0), case(tps=700.0)]
    head = [case(tps=600.0), case(tps=990.0), case(tps=640.0)]  # one quiet run is enough
    assert compare(tmp_path, base, head) == 0, capsys.readouterr().out


def test_cases_on_one_side_only_and_skipped_cases_are_listed_not_judged(tmp_path, capsys):
    base = [case(), case("old-one[reference-cpu]"), case("greedy[reference-cuda:0]", status="skipped",
                                                        reason="needs 1 CUDA device, 0 visible")]
    head = [case(), case("new-one[reference-cpu]"), case("greedy[reference-cuda:0]", status="skipped",
                                                        reason="needs 1 CUDA device, 0 visible")]
    rc = compare(tmp_path, base, head)
    out = capsys.readouterr().out
    assert rc == 0
    assert "`old-one[reference-cpu]`: only in base" in out
    assert "`new-one[reference-cpu]`: only in head" in out
    assert "`greedy[reference-cuda:0]`: `skipped on base (needs 1 CUDA device, 0 visible)`" in out, "the reason is data: in a code span"


def test_a_case_that_errors_on_head_but_ran_on_base_fails(tmp_path, capsys):
    rc = compare(tmp_path, [case()], [case(status="error", error="Expected all tensors to be on the same device")])
    assert rc == 1
    assert "status ran -> errored in 1 of 1 runs" in capsys.readouterr().err


def test_counts_that_vary_between_runs_are_noted(tmp_path, capsys):
    assert compare(tmp_path, [case(), case(d2h=24)], [case(d2h=24)]) == 0
    assert "transfer counts varied between runs on base (d2h)" in capsys.readouterr().out


def test_a_directory_without_cases_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(run_dir(tmp_path / "head", case()))]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_nothing_in_common_is_a_usage_error_not_a_pass(tmp_path, capsys):
    assert compare(tmp_path, [case(CPU)], [case(SIM)]) == 2
    assert "nothing was compared" in capsys.readouterr().err


def test_markdown_goes_to_the_file_and_the_github_step_summary(tmp_path, capsys, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out_file = tmp_path / "out" / "compare.md"
    assert compare(tmp_path, [case()], [case()], "--markdown", str(out_file)) == 0
    printed = capsys.readouterr().out
    assert out_file.read_text() == printed
    assert summary.read_text() == printed


def test_the_side_labels_name_the_commit_and_rounds(tmp_path, capsys):
    base = run_dir(tmp_path / "base", case(), info={"git_commit": "0123456789abcdef", "rounds": 3, "finished": 1.0})
    head = run_dir(tmp_path / "head", case(), info={"label": "HEAD (commit 89abcdef01)", "rounds": 3, "finished": 1.0})
    assert main([str(base), str(head)]) == 0
    out = capsys.readouterr().out
    assert "commit `0123456789`, 3 round(s)" in out, "run.json's values are data: in code spans"
    assert "`HEAD (commit 89abcdef01)`, 3 round(s)" in out


def test_compare_dirs_is_usable_as_a_library(tmp_path):
    comparison = compare_dirs(run_dir(tmp_path / "a", case()), run_dir(tmp_path / "b", case(d2h=46)))
    assert not comparison.ok
    assert [str(f) for f in comparison.regressions] == [f"{SIM} (scenario greedy): d2h per token 1 -> 2"]


def test_add_parser_registers_compare_with_its_func_on_a_fresh_parser(tmp_path):
    parser = argparse.ArgumentParser(prog="samedevice")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", "a", "b", "--throughput-factor", "1.25", "--markdown", "out.md"])
    assert args.command == "compare"
    assert (args.run_a, args.run_b, args.throughput_factor, args.markdown) == (Path("a"), Path("b"), 1.25, Path("out.md"))
    assert callable(args.func)


@pytest.mark.parametrize("bad", ["0.9", "nan", "fast"])
def test_a_factor_below_one_is_refused(bad, capsys):
    parser = argparse.ArgumentParser(prog="samedevice")
    add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["compare", "a", "b", "--throughput-factor", bad])
    assert exc.value.code == 2
    assert "must be a number >= 1" in capsys.readouterr().err


def test_a_torn_last_line_is_ignored(tmp_path, capsys):
    head = run_dir(tmp_path / "head", case())
    with open(head / "cases.jsonl", "a") as handle:
        handle.write(json.dumps(case().to_json())[:40])  # killed mid-write
    assert main([str(run_dir(tmp_path / "base", case())), str(head)]) == 0
