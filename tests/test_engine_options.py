"""`engine_options`: typed for the built-in engines and checked at load, passed through where
they cannot be typed, first-class for an assistant model and a peft adapter."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from harness.engines import Capabilities, Engine, Generation, register
from harness.execute.case import Companions, RunOptions, build_request, run_case
from harness.execute.cases import Case, DeviceTarget
from harness.format.loader import LoadedScenario, load_file
from harness.format.scenario import DeviceSpec, Scenario

BASE = {"name": "o", "description": "d", "prompt": "The quick brown fox", "max_new_tokens": 6}


def _case(engine: str, device: str, simulated: bool, **fields) -> Case:
    scenario = Scenario.model_validate(BASE | {"engines": [engine]} | fields)
    return Case(LoadedScenario(scenario, "o.yaml", 1), engine, DeviceTarget(DeviceSpec(device=device), simulated))


@pytest.mark.parametrize(("options", "engines", "line"), [
    ({"transformers": {"generate": {"x": 1}}}, ["reference"],
     "s.yaml:9:7: [0].engine_options.transformers: 'transformers' is not one of this scenario's engines (reference)"),
    ({"transformers": {"assistant": {"device": "gpu1"}}}, ["transformers"],
     ": [0].engine_options.transformers.assistant.device: must be `same` or cuda:N, but got 'gpu1'"),
    ({"reference": {"compile": "yes please"}}, ["reference"],
     ": [0].engine_options.reference.compile: expected true or false, got the string 'yes please'"),
    ({"transformers": {"peft": {"type": "qlora"}}}, ["transformers"],
     ": [0].engine_options.transformers.peft.type: Input should be 'prefix_tuning', 'prompt_tuning' or 'lora'"),
])
def test_bad_engine_options_are_one_line_at_load(tmp_path, options, engines, line) -> None:
    import yaml

    text = yaml.safe_dump([BASE | {"engines": engines, "engine_options": options}], sort_keys=False)
    (tmp_path / "s.yaml").write_text(text)
    [error] = load_file(tmp_path / "s.yaml").errors
    assert line in str(error), str(error)


@register
class OptionsEngine(Engine):
    """A plugin engine with options of its own, validated by the harness at case time."""

    name = "test-options"
    capabilities = Capabilities(runs_on_torch=True)

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        temperature_floor: float = 0.0

    options_model = Options

    def load(self, request, placement) -> None:
        self.options = request.options

    def generate(self, request) -> Generation:
        assert isinstance(self.options, OptionsEngine.Options)
        return Generation(tokens=[[5] * request.spec.max_new_tokens], texts=[""])


def test_a_plugins_options_are_validated_by_its_own_model() -> None:
    good = build_request(_case("test-options", "cpu", False, engine_options={"test-options": {"temperature_floor": 0.5}}),
                         lambda phase: None)
    assert good.options.temperature_floor == 0.5
    bad = run_case(_case("test-options", "cpu", False, engine_options={"test-options": {"floor": 1}}), RunOptions(), None)
    assert bad.status == "error" and bad.error is not None and bad.error.origin == "harness"
    assert "engine_options.test-options.floor: Extra inputs are not permitted" in bad.error.message


def test_the_assistant_model_sits_on_the_second_simulated_gpu() -> None:
    from harness.devices import simulated_gpus
    from harness.engines.hf_transformers import TransformersEngine

    case = _case("transformers", "cuda:0", True, engine_options={"transformers": {"assistant": {"device": "cuda:1"}}})
    request = build_request(case, lambda phase: None)
    engine = TransformersEngine()
    with torch.no_grad(), simulated_gpus(count=2):
        engine.load(request, case.target.requested_placement())
        assert str(engine.model.device) == "cuda:0" and str(engine.assistant.device) == "cuda:1"
    result = run_case(case, RunOptions(), Companions())
    assert result.status == "passed", result.summary_line()


def test_options_reach_generate_and_a_hub_only_mode_is_a_skip_with_its_reason() -> None:
    static = run_case(_case("transformers", "cuda:0", True, engine_options={"transformers": {"generate": {
        "cache_implementation": "static"}}}), RunOptions(), Companions())
    assert static.status == "passed", static.summary_line()
    bogus = run_case(_case("transformers", "cpu", False, engine_options={"transformers": {"generate": {
        "no_such_generate_argument": 3}}}), RunOptions(), Companions())
    assert bogus.status == "error" and "no_such_generate_argument" in bogus.summary_line(), "transformers' own word"
    from transformers.generation.utils import GENERATION_MODES_MAPPING

    dola = run_case(_case("transformers", "cpu", False, engine_options={"transformers": {"generate": {
        "dola_layers": "high"}}}), RunOptions(), Companions())
    if any("/" in str(v) for k, v in GENERATION_MODES_MAPPING.items() if "DOLA" in str(k)):
        assert dola.status == "skipped" and "transformers-community/dola" in dola.reason, dola.reason
    else:
        assert dola.status == "passed", dola.summary_line()


def test_a_prefix_tuning_adapter_runs_over_a_split_model() -> None:
    pytest.importorskip("peft")
    result = run_case(_case("transformers", "auto", True, engine_options={"transformers": {"peft": {
        "type": "prefix_tuning"}}}), RunOptions(), Companions())
    assert result.status == "passed", result.summary_line()
