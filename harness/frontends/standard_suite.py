"""The standard suite: a first run without YAML.

`samedevice run --engine NAME --model PATH` runs these scenarios against the user's model on
cpu and simulated GPUs (and real ones where present); `samedevice init scenarios` writes
them out as an editable YAML file. Each scenario is one bug class of docs/bug-classes.md: greedy
and seeded sampling (any device mismatch in the forward or the loop), logit bias (class 1),
JSON schema and beams (class 2), static and offloaded caches (class 3), as far as the engine
declares the features: the others are left out, with the reason printed.

Each scenario judges the engine's per-token transfer profile (`Capabilities.transfers`, or
for a feature with copies of its own `feature_transfers`; the reference engine's where the
engine declares none): a stray copy or sync per decode step fails the case, naming its site.
"""

from __future__ import annotations

from typing import Any

import yaml

DEVICES = ["cpu", "cuda:0", "auto"]

SUITE: list[dict[str, Any]] = [
    {"name": "std-greedy", "description": "Greedy decode: a device mismatch anywhere in the forward or the "
     "generation loop fails here first; parity against the CPU run applies.",
     "prompt": "The quick brown fox", "max_new_tokens": 16},
    {"name": "std-sampled", "description": "Seeded sampling: generators on the logits' device, no host sync in "
     "sampling (vLLM #3384).", "prompt": "Once upon a time", "max_new_tokens": 16,
     "sampling": {"mode": "sample", "temperature": 1.0, "top_k": 50, "seed": 1234}},
    {"name": "std-logit-bias", "description": "Logit bias: the bias built on the device of the logits it is "
     "added to (mistral.rs #398).", "prompt": "The quick brown fox", "max_new_tokens": 16,
     "features": {"logit_bias": {"text": {" the": -100.0}}}},
    {"name": "std-json-schema", "description": "JSON-schema constrained decoding: the grammar mask on the "
     "scores' device (Outlines #651/#660, transformers PR #38558).", "prompt": "A person as JSON: ",
     "max_new_tokens": 48, "features": {"json_schema": {"schema": {
         "type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                          "age": {"type": "integer", "minimum": 0, "maximum": 120}},
         "required": ["name", "age"], "additionalProperties": False}}}},
    {"name": "std-beam-search", "description": "Beam search: the cache reordered with an index on each "
     "layer's device (transformers #9200, Outlines #660).", "prompt": "Once upon a time", "max_new_tokens": 12,
     "features": {"beam_search": {"num_beams": 3}}},
    {"name": "std-static-cache", "description": "A static KV cache, allocated beside each layer "
     "(transformers #32624, Petals #574).", "prompt": "The cat sat on the mat.", "max_new_tokens": 12,
     "features": {"kv_cache": {"kind": "static"}}},
    {"name": "std-offloaded-cache", "description": "An offloaded KV cache: layers fetched to their device "
     "each step, and only those copies.", "prompt": "The cat sat on the mat.", "max_new_tokens": 12,
     "features": {"kv_cache": {"kind": "offloaded"}}},
]


def suite_for(engine: str, model: dict[str, Any], devices: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The suite's scenarios this engine can run, for `model` (a scenario `model:` mapping),
    and a line per scenario left out."""
    from harness.engines import get_engine

    caps = get_engine(engine).capabilities
    kept, left_out = [], []
    for base in SUITE:
        needs = list(base.get("features", {}))
        missing = [f for f in needs if f not in caps.features]
        if base.get("sampling") and not caps.sampling:
            missing.append("sampling")
        if missing:
            left_out.append(f"{base['name']}: engine {engine} does not declare {', '.join(missing)}")
            continue
        kinds = [d for d in (devices or DEVICES) if d.split(":")[0] in caps.devices]
        scenario = {**base, "engines": [engine], "devices": kinds, "model": dict(model)}
        if caps.runs_on_torch:  # the copies of an engine off torch are not visible
            profile = caps.transfer_profile(base.get("features"))
            scenario["checks"] = {"transfers": _whole(profile.model_dump(exclude_none=True))}
        kept.append(scenario)
    return kept, left_out


def _whole(value: Any) -> Any:
    """Counts as the YAML a person writes: 1, not 1.0."""
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return int(value) if isinstance(value, float) and value.is_integer() else value


def to_yaml(scenarios: list[dict[str, Any]]) -> str:
    header = ("# yaml-language-server: $schema=https://samedevice.dev/schema/scenario-v1.json\n"
              "# The samedevice standard suite (samedevice init scenarios): edit freely.\n")
    return header + yaml.safe_dump(scenarios, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None)
