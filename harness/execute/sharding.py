"""Deterministic, cost-balanced shards of a case list.

Every shard job expands the same scenarios with the same filters, so each computes the same
assignment: longest-expected-cost first onto the least-loaded shard (LPT), ties broken by
case id. The cost model only needs to rank cases, not predict seconds.
"""

from __future__ import annotations

import re

from harness.execute.cases import Case
from harness.format.scenario import ModelSpec
from harness.models.model_dims import PRESETS, Dims, resolve_dims

_SHARD = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """'2/3' -> (2, 3); shards are 1-based."""
    match = _SHARD.match(text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"--shard must look like i/n with 1 <= i <= n, got {text!r}")
    return int(match[1]), int(match[2])


def expected_cost(case: Case) -> float:
    s = case.scenario
    dims = _cost_dims(s.model)
    per_token = dims.num_layers * (dims.hidden_size**2 + 2 * dims.hidden_size * dims.intermediate_size) / 1e6 + 1.0
    tokens = s.max_new_tokens * len(s.prompt_list)
    if s.features.beam_search:
        tokens *= s.features.beam_search.num_beams
    cost = 2.0 + tokens * per_token * 0.01  # model load + generation
    if case.target.simulated:
        cost *= 3.0
    if case.engine != "reference":
        cost *= 2.0
    if case.target.kind != "cpu":
        cost += 1.0  # the CPU oracle run for parity
    return cost


def _cost_dims(model) -> Dims:
    """A generated model's dimensions; a path or hub model's from its config.json (the
    loader has read it), else the bench preset's."""
    if isinstance(model, ModelSpec):
        return resolve_dims(model)
    import json

    from harness.models.sources import ModelSourceError, describe_model

    try:
        config = json.loads((describe_model(model).directory / "config.json").read_text())
        return Dims(hidden_size=int(config["hidden_size"]), num_layers=int(config["num_hidden_layers"]),
                    num_heads=1, num_kv_heads=1, intermediate_size=int(config.get("intermediate_size") or 4 * config["hidden_size"]))
    except (ModelSourceError, OSError, ValueError, KeyError, TypeError):
        return PRESETS["bench"]


def assign_shards(cases: list[Case], count: int) -> list[list[Case]]:
    loads = [0.0] * count
    shards: list[list[Case]] = [[] for _ in range(count)]
    for case in sorted(cases, key=lambda c: (-expected_cost(c), c.id)):
        target = min(range(count), key=lambda i: (loads[i], i))
        shards[target].append(case)
        loads[target] += expected_cost(case)
    order = {c.id: n for n, c in enumerate(cases)}
    return [sorted(shard, key=lambda c: order[c.id]) for shard in shards]


def select_shard(cases: list[Case], shard: str) -> list[Case]:
    index, count = parse_shard(shard)
    return assign_shards(cases, count)[index - 1]
