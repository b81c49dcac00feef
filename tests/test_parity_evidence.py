"""A token flip is a near tie only on the CPU run's own recorded logits. An engine whose decode
loop calls the model's layers itself leaves the harness nothing to record, and its teacher
forcing, written as a plain forward, agrees whatever generate() did: a device-only divergence
must fail there, saying how to give the harness the logits, never pass as a near tie."""

from __future__ import annotations

import pytest

import tests.plugins.layer_loop_engines  # noqa: F401  (registers the layer-loop engines)
from harness.execute.case import Companions, RunOptions, run_case
from harness.execute.cases import Case, DeviceTarget
from harness.format.loader import LoadedScenario
from harness.format.scenario import DeviceSpec, Scenario


def _case(engine: str, device: str) -> Case:
    scenario = Scenario.model_validate({"name": "loop", "description": "d", "prompt": "The quick brown fox",
                                        "max_new_tokens": 8, "engines": [engine]})
    target = DeviceTarget(DeviceSpec(device=device), simulated=device != "cpu")
    return Case(LoadedScenario(scenario, "inline.yaml", 1), engine, target)


@pytest.mark.parametrize("device", ["cuda:0", "auto"])
def test_a_divergence_with_no_recorded_cpu_logits_fails_with_the_remedy(device):
    result = run_case(_case("layer-loop-divergent", device), RunOptions(), Companions())
    assert result.status == "failed", (result.status, result.notes)
    [parity] = [f.message for f in result.failures if f.check == "parity"]
    assert "near tie" not in parity
    assert "the CPU run's own logits at that step were not recorded" in parity, parity
    assert "the engine's teacher-forced logits agree: the engine's word alone" in parity, parity
    assert "modules()" in parity and "Generation(step_logits=" in parity, parity


@pytest.mark.parametrize("device", ["cuda:0", "auto"])
def test_the_same_loop_without_the_bug_passes(device):
    result = run_case(_case("layer-loop", device), RunOptions(), Companions())
    assert result.status == "passed", result.summary_line()


def test_logits_handed_back_through_generation_judge_the_flip():
    result = run_case(_case("layer-loop-handing-logits", "cuda:0"), RunOptions(), Companions())
    assert result.status == "failed"
    [parity] = [f.message for f in result.failures if f.check == "parity"]
    assert "on the CPU run's own logits at that step" in parity, parity


def test_check_engine_fails_an_engine_whose_step_logits_cannot_be_recorded():
    from harness.frontends.check_engine import check_engine, device_targets

    def lines_for(engine):
        companions = Companions()
        lines = check_engine(engine, device_targets(engine, ["cpu", "sim:cuda:0"]),
                             lambda case, options: run_case(case, options, companions), lambda line: None)
        return {line.what: line for line in lines if line.what.startswith("step logits recorded")}

    unrecorded = lines_for("layer-loop")
    assert {line.verdict for line in unrecorded.values()} == {"FAIL"}, unrecorded
    assert "Generation(step_logits=...)" in unrecorded["step logits recorded on sim:cuda:0"].detail
    handed = lines_for("layer-loop-handing-logits")
    assert handed and {line.verdict for line in handed.values()} == {"PASS"}, handed
