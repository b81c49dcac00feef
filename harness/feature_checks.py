"""Checks that a feature did what it promises, whatever the device: banned tokens never
appear, JSON output parses and validates, beams come back ordered by score."""

from __future__ import annotations

import json
from collections.abc import Callable

from harness.engines.base import Generation
from harness.results import CaseResult
from harness.scenario import Scenario

BAN_THRESHOLD = -50.0  # a bias at or below this bans the token


def check_features(result: CaseResult, scenario: Scenario, generation: Generation,
                   encode: Callable[[str], list[int]]) -> None:
    check_logit_bias(result, scenario, generation, encode)
    check_json_schema(result, scenario, generation)
    check_beams(result, scenario, generation)


def check_logit_bias(result: CaseResult, scenario: Scenario, generation: Generation,
                     encode: Callable[[str], list[int]]) -> None:
    feature = scenario.features.logit_bias
    if feature is None or not generation.tokens or not any(generation.tokens):
        return
    banned = {i for i, v in feature.ids.items() if v <= BAN_THRESHOLD}
    for text, value in feature.text.items():
        if value <= BAN_THRESHOLD:
            banned.update(encode(text))
    for index, tokens in enumerate(generation.tokens):
        hits = sorted(banned.intersection(tokens))
        if hits:
            result.fail("logit_bias", f"prompt {index}: banned token(s) {hits} were generated")


def check_json_schema(result: CaseResult, scenario: Scenario, generation: Generation) -> None:
    """Every output text parses as JSON and validates against the scenario's schema."""
    feature = scenario.features.json_schema
    if feature is None:
        return
    try:
        import jsonschema
    except ImportError:
        result.notes.append("json_schema not validated: the jsonschema package is not installed (pip install jsonschema)")
        return
    validator_cls = jsonschema.validators.validator_for(feature.schema_)
    validator = validator_cls(feature.schema_)
    for index, text in enumerate(generation.texts):
        where = f"prompt {index}: " if len(generation.texts) > 1 else ""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            result.fail("json_schema", f"{where}output is not JSON ({exc.msg} at char {exc.pos}): {text[:120]!r}")
            continue
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            result.fail("json_schema", f"{where}output does not match the schema at {path}: {error.message}: {text[:120]!r}")


def check_beams(result: CaseResult, scenario: Scenario, generation: Generation) -> None:
    """Beams are returned best first, and the output of each prompt is its best beam."""
    if scenario.features.beam_search is None:
        return
    beams = generation.extra.get("beams")
    if beams is None:
        result.notes.append("beams not checked: the engine returned no extra['beams']")
        return
    for index, found in enumerate(beams):
        where = f"prompt {index}: " if len(beams) > 1 else ""
        scores = [beam["score"] for beam in found]
        if not found:
            result.fail("beams", f"{where}no beam was returned")
            continue
        drops = [i for i in range(1, len(scores)) if scores[i] > scores[i - 1]]
        if drops:
            i = drops[0]
            result.fail("beams", f"{where}beams are not ordered by score: beam {i} scores {scores[i]:.6g} > beam {i - 1}'s {scores[i - 1]:.6g} (all: {[round(s, 4) for s in scores]})")
        if index < len(generation.tokens) and generation.tokens[index] and generation.tokens[index] != found[0]["tokens"]:
            result.fail("beams", f"{where}the output is not the best beam")
