"""`samedevice compare --sim-vs-real`: a real-GPU run's cases against their simulated twins.
With no GPU here, the "real" run is the simulated run relabelled (what a faithful simulator
gives); a changed ledger count or token in it must then be caught, naming the case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.frontends.cli import main

SCENARIO = "- {name: fid, description: d, devices: [cuda:0, auto], prompt: The quick brown fox, max_new_tokens: 6}\n"


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fidelity")
    (root / "s.yaml").write_text(SCENARIO)
    assert main(["run", str(root / "s.yaml"), "-d", "sim", "--results", str(root / "sim"), "--no-progress"]) == 0
    [run_dir] = (root / "sim").iterdir()
    return run_dir


def _as_real(sim_run: Path, target: Path, edit=None) -> Path:
    """The simulated run as if a real GPU had run it: devices and ids without `sim:`."""
    shutil.copytree(sim_run, target)
    cases = [json.loads(line) for line in (target / "cases.jsonl").read_text().splitlines()]
    for case in cases:
        real = case["device"].removeprefix("sim:")
        case["id"] = case["id"].replace(f"-{case['device']}]", f"-{real}]")
        case["device"] = real
        if edit:
            edit(case)
    (target / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    return target


def test_a_faithful_simulator_agrees_on_every_pair(sim_run, tmp_path, capsys):
    real = _as_real(sim_run, tmp_path / "real")
    assert main(["compare", "--sim-vs-real", str(real), str(sim_run)]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 case pair(s) agree on tokens and on every ledger count" in out
    assert "`fid[reference-cuda:0]` | `sim:cuda:0` | same | same |" in out


def test_a_ledger_count_or_a_token_that_differs_fails_naming_the_case(sim_run, tmp_path, capsys):
    def more_d2h(case):
        if case["device"] == "auto":
            case["ledger"]["counts"]["decode.d2h"] += 1
            case["tokens"][0][-1] += 1

    real = _as_real(sim_run, tmp_path / "real", more_d2h)
    assert main(["compare", "--sim-vs-real", str(real), str(sim_run)]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 case pair(s) agree" in captured.out
    [line] = [line for line in captured.err.splitlines() if line.startswith("SIMULATOR DIFFERS")]
    assert line.startswith("SIMULATOR DIFFERS fid[reference-auto] vs sim:auto: tokens differ; decode d2h: real "), line


def test_runs_with_no_pair_to_compare_are_refused(sim_run, capsys):
    assert main(["compare", "--sim-vs-real", str(sim_run), str(sim_run)]) == 2
    assert "no real-GPU case has a simulated twin that ran" in capsys.readouterr().err
