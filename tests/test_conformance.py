"""`samedevice check-engine`: the built-in engines and the example plugin are conformant, and
the battery's fixed prompts still do what its lines rely on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import tinymodel
from harness.conformance import EOS_PROMPT, EOS_SEED, EOS_STEP, check_engine, device_targets
from harness.runner import Companions, run_case
from harness.scenario import ModelSpec
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
    lines = check_engine(engine, device_targets(engine, []), lambda case, options: run_case(case, options, companions), lambda line: None)
    failed = [str(line) for line in lines if line.verdict == "FAIL"]
    assert not failed, "\n".join(failed)
    assert sum(line.verdict == "PASS" for line in lines) >= 8


def test_the_command_prints_a_verdict_per_line_and_exits_by_conformance() -> None:
    done = subprocess.run([sys.executable, "-m", "harness.cli", "check-engine", "reference", "-d", "cpu", "-d", "sim:cuda:0"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  PASS  placement honoured on sim:cuda:0: cuda:0: " in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("reference: conformant (")
    unknown = subprocess.run([sys.executable, "-m", "harness.cli", "check-engine", "refrence"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "did you mean 'reference'?" in unknown.stderr


def test_an_engine_that_does_not_run_llama_is_checked_on_an_architecture_it_declares(monkeypatch) -> None:
    import dataclasses

    from harness import conformance
    from harness.engines import get_engine

    real = get_engine("transformers")
    qwen2_only = type("Qwen2Only", (real,), {"capabilities": dataclasses.replace(real.capabilities, families=frozenset({"qwen2"}))})
    monkeypatch.setattr(conformance, "get_engine", lambda name: qwen2_only)
    battery = conformance.Battery("qwen2-only", [], lambda case, options: None)
    assert battery.family == "qwen2"
    assert battery._scenario("plain").scenario.model.family == "qwen2"
    assert battery._scenario("x", model={"family": "mixtral"}).scenario.model.family == "mixtral", "a line's own model wins"
