"""`samedevice check-engine`: the built-in engines and the example plugin are conformant, and
the battery's fixed prompts still do what its lines rely on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.execute.case import Companions, run_case
from harness.format.scenario import ModelSpec
from harness.frontends.check_engine import (
    EOS_PROMPT,
    EOS_SEED,
    EOS_STEP,
    check_engine,
    device_targets,
)
from harness.models import tinymodel
from reference_impl import GenerateConfig, generate, load_model


def test_the_eos_prompt_makes_the_tiny_model_choose_eos_where_the_battery_says() -> None:
    directory = tinymodel.model_dir(ModelSpec(seed=EOS_SEED))
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(directory / "tokenizer.json")).encode(EOS_PROMPT).ids
    tokens = generate(load_model(directory, ["cpu"]), ids, GenerateConfig(max_new_tokens=16, eos_id=tinymodel.EOS_ID))
    assert len(tokens) == EOS_STEP and tokens[-1] == tinymodel.EOS_ID, tokens


@pytest.mark.parametrize("engine", ["reference", "transformers", "outlines", "example-greedy"])
def test_built_in_engines_and_the_example_plugin_are_conformant(engine) -> None:
    if engine == "example-greedy":
        pytest.importorskip("samedevice_example_engine")  # nox installs it; a bare pip install -e . does not
    companions = Companions()
    targets = device_targets(engine, [])
    lines = check_engine(engine, targets, lambda case, options: run_case(case, options, companions), lambda line: None)
    failed = [str(line) for line in lines if line.verdict == "FAIL"]
    assert not failed, "\n".join(failed)
    assert sum(line.verdict == "PASS" for line in lines) >= 8
    transfers = [line for line in lines if line.what.startswith("transfers within the profile on sim:")]
    assert len(transfers) == sum(t.simulated for t in targets) >= 1, "each simulated device judges the profile"


def test_the_command_prints_a_verdict_per_line_and_exits_by_conformance() -> None:
    done = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "check-engine", "reference", "-d", "cpu", "-d", "sim:cuda:0"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  PASS  placement honoured on sim:cuda:0: cuda:0: " in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("reference: conformant (")
    unknown = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "check-engine", "refrence"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "did you mean 'reference'?" in unknown.stderr


def test_an_engine_that_does_not_run_llama_is_checked_on_an_architecture_it_declares(monkeypatch) -> None:
    import dataclasses

    from harness.engines import get_engine
    from harness.frontends import check_engine as conformance

    real = get_engine("transformers")
    qwen2_only = type("Qwen2Only", (real,), {"capabilities": dataclasses.replace(real.capabilities, families=frozenset({"qwen2"}))})
    monkeypatch.setattr(conformance, "get_engine", lambda name: qwen2_only)
    battery = conformance.Battery("qwen2-only", [], lambda case, options: None)
    assert battery.family == "qwen2"
    assert battery._scenario("plain").scenario.model.family == "qwen2"
    assert battery._scenario("x", model={"family": "mixtral"}).scenario.model.family == "mixtral", "a line's own model wins"


# --- per-token transfer profiles (Capabilities.transfers) -----------------------------------

def _battery(engine: str, devices: list[str], budget=None) -> list:
    import tests.plugins.transfer_engines  # noqa: F401  (registers stray-round-trip, no-stray-round-trip)

    companions = Companions()
    return check_engine(engine, device_targets(engine, devices), lambda case, options: run_case(case, options, companions),
                        lambda line: None, budget)


def _transfer_lines(lines) -> list:
    return [line for line in lines if line.what.startswith("transfers within the profile")]


def test_a_stray_round_trip_per_step_is_not_conformant_and_the_line_names_h2d_and_its_call_site() -> None:
    lines = _battery("stray-round-trip", ["cpu", "sim"])
    transfer = _transfer_lines(lines)
    assert [line.verdict for line in transfer] == ["FAIL", "FAIL"], transfer
    for line in transfer:  # no profile declared: the reference engine's applies
        assert "(the default, none declared, per decode token: h2d 0, d2h 1, " in line.what, line
        assert "h2d: 1 per decode token (budget 0;" in line.detail, line
        assert "d2h: 2 per decode token (budget 1;" in line.detail, line
        assert "from to at tests/plugins/transfer_engines.py:" in line.detail, "the stray copy's call site"
    fixed = _battery("no-stray-round-trip", ["cpu", "sim"])
    assert not [str(line) for line in fixed if line.verdict == "FAIL"]
    assert [line.verdict for line in _transfer_lines(fixed)] == ["PASS", "PASS"]


def test_budget_replaces_the_profile_for_the_steady_state_and_the_features() -> None:
    from harness.frontends.check_engine import parse_budget

    lenient = _battery("stray-round-trip", ["cpu", "sim:cuda:0"], parse_budget("h2d=1,d2h=2"))
    [line] = _transfer_lines(lenient)
    assert line.verdict == "PASS" and "(--budget, per decode token: h2d 1, d2h 2)" in line.what, line
    # The reference's JSON-schema mask upload (declared for that feature) is over a budget of no H2D.
    strict = _battery("reference", ["cpu", "sim:cuda:0"], parse_budget("h2d=0,d2h=1,syncs=0"))
    failed = {line.what: line.detail for line in strict if line.verdict == "FAIL"}
    assert list(failed) == ["feature json_schema on sim:cuda:0"], failed
    assert "h2d: 1 per decode token (budget 0;" in failed["feature json_schema on sim:cuda:0"]
    assert "reference_impl/constrained.py:" in failed["feature json_schema on sim:cuda:0"]


@pytest.mark.parametrize("text", ["h2d", "h2d=x", "h2d=-1", "syncs=nan", "sync=0", "h2d=0,h2d=1", "", "h2d=inf"])
def test_a_bad_budget_is_refused(text) -> None:
    from harness.frontends.check_engine import parse_budget

    with pytest.raises(ValueError, match=r"^--budget "):
        parse_budget(text)


def test_the_command_fails_a_stray_round_trip_and_budget_input_is_a_usage_line() -> None:
    import os
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, SAMEDEVICE_PLUGINS="tests.plugins.transfer_engines",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "harness.frontends.cli", "check-engine", "stray-round-trip", "-d", "sim:cuda:0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "  FAIL  transfers within the profile on sim:cuda:0 " in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("stray-round-trip: NOT conformant (")
    bad = subprocess.run([*command, "--budget", "h2d=0,d2h=one"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and not bad.stdout, bad.stdout + bad.stderr
    assert bad.stderr.splitlines() == ["samedevice: error: --budget 'h2d=0,d2h=one': d2h must be a count >= 0, got 'one'"]


def test_an_engine_gets_the_reference_profile_only_where_it_declares_none() -> None:
    from harness.engines import get_engine
    from harness.engines.base import DEFAULT_TRANSFERS, Capabilities
    from harness.format.scenario import Budget, TransfersCheck

    none = Capabilities()
    assert none.transfer_profile() == DEFAULT_TRANSFERS
    assert none.transfer_profile().for_kind("cuda").decode == Budget(h2d=0, d2h=1, d2d=0, syncs=0)
    assert none.transfer_profile().for_kind("auto").decode == Budget(h2d=0, d2h=1, syncs=0), "D2D on auto: declared"
    assert none.transfer_profile({"json_schema": {}}).decode == Budget(h2d=1, d2h=1, syncs=0)
    assert none.transfer_profile({"kv_cache": {"kind": "offloaded"}}).for_kind("cuda").decode == Budget(d2d=0, syncs=0)
    assert none.transfer_profile({"kv_cache": {"kind": "static"}}) == DEFAULT_TRANSFERS
    reference = get_engine("reference").capabilities
    assert reference.transfer_profile().for_kind("auto").decode == Budget(h2d=0, d2h=1, d2d=2, syncs=0)
    assert reference.transfer_profile({"beam_search": {}}).for_kind("auto").decode.d2d == 3
    own = Capabilities(transfers=TransfersCheck(decode=Budget(h2d=0, d2h=0, syncs=1)))
    assert own.transfer_profile({"json_schema": {}}) == own.transfers, "no feature profile declared: its own applies"
    transformers = get_engine("transformers").capabilities
    assert transformers.transfer_profile().for_kind("auto").decode == Budget(h2d=0, d2h=0, syncs=1)
    assert transformers.transfer_profile().for_kind("cuda").decode == Budget(h2d=0, d2h=0, d2d=0, syncs=1)
