"""Checks that a feature did what it promises, whatever the device: banned tokens never
appear, JSON output parses and validates, beams come back ordered by score."""

from __future__ import annotations

import json

from harness.checks.judge import Outcome
from harness.engines.base import Generation
from harness.engines.spec import GenerationSpec

BAN_THRESHOLD = -50.0  # a bias at or below this bans the token


def check_features(spec: GenerationSpec, generation: Generation) -> Outcome:
    out = Outcome()
    check_logit_bias(out, spec, generation)
    check_json_schema(out, spec, generation)
    check_beams(out, spec, generation)
    return out


def check_logit_bias(result: Outcome, spec: GenerationSpec, generation: Generation) -> None:
    if not spec.logit_bias or not generation.tokens or not any(generation.tokens):
        return
    banned = {token for token, value in spec.logit_bias.items() if value <= BAN_THRESHOLD}
    for index, tokens in enumerate(generation.tokens):
        hits = sorted(banned.intersection(tokens))
        if hits:
            result.fail("logit_bias", f"prompt {index}: banned token(s) {hits} were generated")


def check_json_schema(result: Outcome, spec: GenerationSpec, generation: Generation) -> None:
    """Every output text parses as JSON and validates against the scenario's schema."""
    schema = spec.json_schema
    if schema is None:
        return
    try:
        import jsonschema
    except ImportError:
        result.notes.append("json_schema not validated: the jsonschema package is not installed (pip install jsonschema)")
        return
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
    except Exception as exc:  # a schema the validator cannot build is the scenario's problem, said once
        result.fail("json_schema", f"the scenario's schema cannot be checked: {type(exc).__name__}: {exc}")
        return
    for index, text in enumerate(generation.texts):
        where = f"prompt {index}: " if len(generation.texts) > 1 else ""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            result.fail("json_schema", f"{where}output is not JSON ({exc.msg} at char {exc.pos}): {text[:120]!r}")
            continue
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        except Exception as exc:  # e.g. a `pattern` Python's re cannot compile
            result.fail("json_schema", f"{where}the output could not be validated: {type(exc).__name__}: {exc}")
            continue
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            result.fail("json_schema", f"{where}output does not match the schema at {path}: {error.message}: {text[:120]!r}")


def check_beams(result: Outcome, spec: GenerationSpec, generation: Generation) -> None:
    """Beams are returned best first, and the output of each prompt is its best beam."""
    if spec.beams is None:
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
