"""Features do what they promise: JSON output parses and validates (greedy, sampled, beams),
the logit bias bans and boosts, beams come back best first, and a decode step reads back
one thing. The harness's feature checks catch the opposite."""

from __future__ import annotations

import json

import pytest
import torch
from torch.overrides import TorchFunctionMode

from harness.checks.features import check_features
from harness.engines.base import Generation
from harness.engines.spec import resolve
from harness.format.scenario import ModelSpec, Scenario
from harness.models import tinymodel
from reference_impl import GenerateConfig, JsonSpec, beam_search, generate, load_model

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tinymodel.model_dir(ModelSpec()) / "tokenizer.json"))


@pytest.fixture(scope="module")
def model():
    return load_model(tinymodel.model_dir(ModelSpec()), ["cpu"])


@pytest.fixture(scope="module")
def json_spec():
    text = (tinymodel.model_dir(ModelSpec()) / "tokenizer.json").read_text()
    return JsonSpec(SCHEMA, text, tinymodel.EOS_ID)


def valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


@pytest.mark.parametrize("temperature", [0.0, 40.0])
def test_json_schema_output_parses_and_validates(model, json_spec, tokenizer, temperature):
    prompt = tokenizer.encode("A person as JSON: ").ids
    for seed in range(3):
        config = GenerateConfig(max_new_tokens=40, eos_id=tinymodel.EOS_ID, temperature=temperature, seed=seed, json=json_spec)
        tokens = generate(model, prompt, config)
        text = tokenizer.decode(tokens)
        assert tokens[-1] == tinymodel.EOS_ID, f"the grammar should end the output with EOS within 40 tokens: {text!r}"
        assert valid(text), f"constrained output does not validate against the schema: {text!r}"


def test_json_schema_beams_all_validate_and_come_best_first(model, json_spec, tokenizer):
    prompt = tokenizer.encode("A person as JSON: ").ids
    config = GenerateConfig(max_new_tokens=40, eos_id=tinymodel.EOS_ID, json=json_spec, num_beams=3, num_return=3)
    beams = beam_search(model, prompt, config).beams
    assert len(beams) == 3, "num_return 3 gives 3 beams"
    for beam in beams:
        assert valid(tokenizer.decode(beam.tokens)), f"a beam does not validate: {tokenizer.decode(beam.tokens)!r}"
    scores = [b.score for b in beams]
    assert scores == sorted(scores, reverse=True), f"beams are not ordered by score: {scores}"
    assert len({tuple(b.tokens) for b in beams}) == 3, "beams must be distinct hypotheses"


def test_logit_bias_bans_a_token_and_a_big_boost_wins(model):
    prompt = [5, 17, 42, 99]
    plain = generate(model, prompt, GenerateConfig(max_new_tokens=12))
    banned = plain[0]
    tokens = generate(model, prompt, GenerateConfig(max_new_tokens=12, logit_bias={banned: -1e9}))
    assert banned not in tokens, f"banned token {banned} was generated: {tokens}"
    boosted = generate(model, prompt, GenerateConfig(max_new_tokens=6, logit_bias={42: 1e6}))
    assert boosted == [42] * 6, f"a boost of 1e6 on token 42 must make greedy pick it every step: {boosted}"


class CountMoves(TorchFunctionMode):
    """Counts calls that move tensors between devices (`.cpu()`, `.to(<device>)`)."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "cpu" or (name == "to" and (kwargs.get("device") is not None or any(
                isinstance(a, (str, torch.device)) for a in args[1:]))):
            self.moves.append(name)
        return func(*args, **kwargs)


def test_a_decode_step_reads_back_only_the_chosen_token(model):
    n = 12
    model.setup_caches(1)  # allocation outside the counted region
    with CountMoves() as counter:
        generate(model, [5, 17, 42], GenerateConfig(max_new_tokens=n, logit_bias={7: -100.0}, repetition_penalty=1.2,
                                                    temperature=3.0, top_k=20, top_p=0.9))
    # n read-backs of the token; the bias row and the prompt's seen-mask go once (prefill)
    assert counter.moves.count("cpu") == n, f"expected {n} read-backs, saw moves {counter.moves}"
    assert counter.moves.count("to") <= 2, f"only the bias row and the prompt may move in prefill: {counter.moves}"


def scenario(**fields) -> Scenario:
    return Scenario.model_validate({"name": "x", "description": "x", "prompt": "p", **fields})


def features(s: Scenario, generation: Generation):
    """The feature checks' failures for `generation` under scenario `s`."""
    return check_features(resolve(s, lambda text: [], eos_id=1), generation).failures


def test_feature_check_fails_output_that_does_not_parse_or_validate():
    s = scenario(features={"json_schema": {"schema": SCHEMA}})
    for text, why in (('{"name": "a"', "not JSON"), ('{"name": "a", "age": 200}', "does not match")):
        failures = features(s, Generation(tokens=[[1]], texts=[text]))
        assert [f.check for f in failures] == ["json_schema"], f"{text!r} must fail the json_schema check"
        assert why in failures[0].message, f"the failure should say the output is {why!r}: {failures[0].message}"
    failures = features(s, Generation(tokens=[[1]], texts=['{"name":"a","age":3}']))
    assert not failures, f"valid JSON must pass: {failures}"


def test_feature_check_fails_beams_out_of_score_order_or_output_not_the_best():
    s = scenario(features={"beam_search": {"num_beams": 2, "num_return": 2}})
    beams = [{"tokens": [3], "score": -2.0}, {"tokens": [4], "score": -1.0}]
    failures = features(s, Generation(tokens=[[3]], texts=["a"], extra={"beams": [beams]}))
    assert any("not ordered by score" in f.message for f in failures), f"unordered beams must fail: {failures}"
    failures = features(s, Generation(tokens=[[4]], texts=["a"], extra={"beams": [beams[::-1][:1] + beams[:1]]}))
    assert failures == [], f"ordered beams whose best is the output pass: {failures}"
    failures = features(s, Generation(tokens=[[3]], texts=["a"], extra={"beams": [beams[::-1]]}))
    assert any("not the best beam" in f.message for f in failures), "an output that is not the best beam must fail"
