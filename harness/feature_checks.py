"""Checks that a feature did what it promises, whatever the device: banned tokens never
appear, JSON output parses and validates, beams come back ordered by score."""

from __future__ import annotations

from collections.abc import Callable

from harness.engines.base import Generation
from harness.results import CaseResult
from harness.scenario import Scenario

BAN_THRESHOLD = -50.0  # a bias at or below this bans the token


def check_features(result: CaseResult, scenario: Scenario, generation: Generation,
                   encode: Callable[[str], list[int]]) -> None:
    check_logit_bias(result, scenario, generation, encode)


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
