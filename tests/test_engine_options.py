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


def _on_cpu_and_sim(engine_options: dict, **fields) -> list:
    return [run_case(_case("transformers", device, simulated, engine_options={"transformers": engine_options}, **fields),
                     RunOptions(), Companions()) for device, simulated in [("cpu", False), ("cuda:0", True), ("auto", True)]]


@pytest.fixture
def generate_calls(monkeypatch):
    """The keyword arguments of every transformers generate() call (the main model's)."""
    from transformers import GenerationMixin

    calls: list[dict] = []
    real = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        # not the assistant's, nor token healing's own one-token call (it passes a generation_config)
        if not getattr(self.generation_config, "is_assistant", False) and "generation_config" not in kwargs:
            calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    return calls


def test_stop_strings_get_the_tokenizer_and_stop_on_cpu_and_sim(generate_calls) -> None:
    plain = run_case(_case("transformers", "cpu", False, max_new_tokens=12), RunOptions(), Companions())
    from tokenizers import Tokenizer

    from harness.models.tokenizer import trained_tokenizer_json

    tokenizer = Tokenizer.from_str(trained_tokenizer_json())
    pieces = [tokenizer.decode([token]) for token in plain.tokens[0]]
    # a word piece the plain run generates after its second token: generation stops there
    stop = next(p for p in pieces[2:] if p.isascii() and p.isalpha() and len(p) >= 2 and p not in "".join(pieces[:2]))
    generate_calls.clear()
    results = _on_cpu_and_sim({"generate": {"stop_strings": [stop]}}, max_new_tokens=12)
    assert [r.status for r in results] == ["passed"] * 3, [r.summary_line() for r in results]
    assert all(call["tokenizer"].name_or_path for call in generate_calls)
    assert results[0].texts[0].endswith(stop) and len(results[0].tokens[0]) < len(plain.tokens[0]), results[0].texts


def test_token_healing_gets_the_tokenizer_and_runs_on_cpu_and_sim(generate_calls) -> None:
    results = _on_cpu_and_sim({"generate": {"token_healing": True}})
    assert [r.status for r in results] == ["passed"] * 3, [r.summary_line() for r in results]
    assert generate_calls and all("tokenizer" in call for call in generate_calls)
    generate_calls.clear()
    plain = run_case(_case("transformers", "cpu", False), RunOptions(), Companions())
    assert "tokenizer" not in generate_calls[0], "passed only where an option needs it"
    assert results[0].tokens != plain.tokens, "the healed prompt's last token differs, so does what follows"


def test_an_assistant_with_its_own_tokenizer_runs_universal_assisted_decoding(monkeypatch, generate_calls) -> None:
    from transformers.generation import candidate_generator

    used: list[str] = []
    real = candidate_generator.AssistedCandidateGeneratorDifferentTokenizers.__init__

    def spy(self, *args, **kwargs):
        used.append(str(kwargs["assistant_model"].device))
        real(self, *args, **kwargs)

    monkeypatch.setattr(candidate_generator.AssistedCandidateGeneratorDifferentTokenizers, "__init__", spy)
    results = _on_cpu_and_sim({"assistant": {"model": {"seed": 1}, "device": "cuda:1", "vocab_size": 384}})
    assert [r.status for r in results] == ["passed"] * 3, [r.summary_line() for r in results]
    assert all(call["assistant_tokenizer"].vocab_size == 384 != len(call["tokenizer"]) for call in generate_calls)
    assert used[0] == "cpu" and "cuda:1" in used, used  # on sim the assistant sits on the second GPU


def test_a_watermark_mapping_becomes_the_config_its_kind_names(monkeypatch) -> None:
    from transformers import SynthIDTextWatermarkingConfig, WatermarkingConfig
    from transformers.generation import logits_process

    from harness.engines.hf_transformers import generate_arguments

    synthid = {"keys": [3, 7, 11, 13], "ngram_len": 3}
    assert isinstance(generate_arguments({"watermarking_config": {"kind": "synthid"} | synthid})["watermarking_config"],
                      SynthIDTextWatermarkingConfig)
    assert isinstance(generate_arguments({"watermarking_config": synthid})["watermarking_config"], SynthIDTextWatermarkingConfig)
    assert isinstance(generate_arguments({"watermarking_config": {"bias": 3.0}})["watermarking_config"], WatermarkingConfig)
    called: list[str] = []

    def counting(name: str):
        real = getattr(logits_process, name).__call__

        def spy(self, input_ids, scores):  # generate() checks a processor's parameters by name
            called.append(name)
            return real(self, input_ids, scores)

        return spy

    for name in ("SynthIDTextWatermarkLogitsProcessor", "WatermarkLogitsProcessor"):
        monkeypatch.setattr(getattr(logits_process, name), "__call__", counting(name))
    sampled = {"sampling": {"mode": "sample", "temperature": 1.0, "top_k": 8, "seed": 3}}
    for options, processor in [({"kind": "synthid"} | synthid, "SynthIDTextWatermarkLogitsProcessor"),
                               ({"kind": "kirchenbauer", "bias": 3.0}, "WatermarkLogitsProcessor")]:
        called.clear()
        results = _on_cpu_and_sim({"generate": {"watermarking_config": options}}, **sampled)
        assert [r.status for r in results] == ["passed"] * 3, [r.summary_line() for r in results]
        assert set(called) == {processor}, called


@pytest.mark.parametrize(("generate", "fields", "mode"), [
    ({"num_beam_groups": 2, "diversity_penalty": 0.5}, {"features": {"beam_search": {"num_beams": 2}}}, "group_beam_search"),
    ({"force_words_ids": [[5]]}, {"features": {"beam_search": {"num_beams": 2}}}, "constrained_beam_search"),
    ({"penalty_alpha": 0.6, "top_k": 4}, {}, "contrastive_search"),
    ({"dola_layers": "high"}, {}, "dola_generation"),
])
def test_every_mode_moved_to_the_hub_is_a_skip_naming_its_repo(generate, fields, mode) -> None:
    """Its mode from every generate() argument (num_beams from features.beam_search too): the
    group beam search case was an error (`trust_remote_code`) when only the options were looked at."""
    from transformers.generation.utils import GENERATION_MODES_MAPPING

    repos = {m.value: r for m, r in GENERATION_MODES_MAPPING.items()}
    result = run_case(_case("transformers", "cuda:0", True, engine_options={"transformers": {"generate": generate}}, **fields),
                      RunOptions(), Companions())
    if "/" not in repos[mode]:
        pytest.skip(f"transformers here runs {mode} itself")
    assert result.status == "skipped", result.summary_line()
    assert f"moved {mode} to the Hub repo {repos[mode]}" in result.reason, result.reason


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_min_new_tokens_is_passed_only_when_not_stopping_at_eos(generate_calls, stop_at_eos) -> None:
    result = run_case(_case("transformers", "cpu", False, stop_at_eos=stop_at_eos,
                            engine_options={"transformers": {"assistant": {}}}), RunOptions(), Companions())
    assert result.status == "passed", result.summary_line()
    assert [call.get("min_new_tokens") for call in generate_calls] == [None if stop_at_eos else 6]
