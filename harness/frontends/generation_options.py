"""The generation-options sweep (`sweeps/options.yaml`, `nox -s options_sweep`): every field of the
installed transformers' `GenerationConfig` that turns on a logits processor, a stopping
criterion, a cache implementation or a decoding strategy, each alone and with an assistant
model on another device, on cpu, sim:cuda:0 and sim:auto.

Which fields count is read from transformers itself (`option_fields`): the fields
`_get_logits_processor`, `_get_stopping_criteria`, `_prepare_cache_for_generation`,
`_get_candidate_generator` and `GenerationConfig.get_generation_mode` read, plus every cache
implementation `GenerationConfig` accepts. `OPTIONS` gives each a value a tiny text model can
run; `NOT_APPLICABLE` names the rest with the reason. `python -m harness.frontends.generation_options`
writes the sweep file from them; tests/test_sweep.py checks that the file is what this writes
and that every field transformers reads is covered. The table of a run is
`samedevice architectures --results RUN` (rows are the options).
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

SWEEP_FILE = Path(__file__).resolve().parents[2] / "sweeps" / "options.yaml"

# Where generate() decides what runs: the function (or method) and what its fields turn on.
_DECIDERS = (
    ("transformers.generation.utils", "GenerationMixin._get_logits_processor", "logits processor"),
    ("transformers.generation.utils", "GenerationMixin._get_stopping_criteria", "stopping criterion"),
    ("transformers.generation.utils", "GenerationMixin._prepare_cache_for_generation", "cache"),
    ("transformers.generation.utils", "GenerationMixin._get_candidate_generator", "decoding strategy"),
    ("transformers.generation.configuration_utils", "GenerationConfig.get_generation_mode", "decoding strategy"),
)

SAMPLE = {"mode": "sample", "seed": 7}

# name -> {generate: generate() arguments, sampling: the scenario's sampling block,
#          beams: features.beam_search, assistant_only: a no-op without an assistant,
#          alone_only: why transformers refuses it with an assistant (no assisted run)}.
# A name is FIELD, or FIELD-VALUE where one field has several values worth a run each.
OPTIONS: dict[str, dict[str, Any]] = {
    # logits processors
    "bad_words_ids": {"generate": {"bad_words_ids": [[5], [7, 8]]}},
    "begin_suppress_tokens": {"generate": {"begin_suppress_tokens": [5, 6]}},
    "encoder_no_repeat_ngram_size": {"generate": {"encoder_no_repeat_ngram_size": 2}},  # the prompt, decoder-only
    "encoder_repetition_penalty": {"generate": {"encoder_repetition_penalty": 1.5}},
    "epsilon_cutoff": {"generate": {"epsilon_cutoff": 0.0003}, "sampling": SAMPLE},
    "eta_cutoff": {"generate": {"eta_cutoff": 0.001}, "sampling": SAMPLE},
    "exponential_decay_length_penalty": {"generate": {"exponential_decay_length_penalty": [4, 1.5]}},
    "forced_bos_token_id": {"generate": {"forced_bos_token_id": 5}},
    "forced_eos_token_id": {"generate": {"forced_eos_token_id": 9}},
    "guidance_scale": {"generate": {"guidance_scale": 1.5}},
    "min_length": {"generate": {"min_length": 10}},
    "min_new_tokens": {"generate": {"min_new_tokens": 8}},
    "min_p": {"generate": {"min_p": 0.1}, "sampling": SAMPLE},
    "no_repeat_ngram_size": {"generate": {"no_repeat_ngram_size": 2}},
    "remove_invalid_values": {"generate": {"remove_invalid_values": True}},
    "renormalize_logits": {"generate": {"renormalize_logits": True, "repetition_penalty": 1.2}},
    "repetition_penalty": {"generate": {"repetition_penalty": 1.3}},
    "sequence_bias": {"generate": {"sequence_bias": [[[5], 4.0], [[7, 8], -2.0]]}},
    "suppress_tokens": {"generate": {"suppress_tokens": [5, 6]}},
    "do_sample": {"generate": {"do_sample": True}, "sampling": SAMPLE},
    "temperature": {"generate": {"temperature": 0.7}, "sampling": SAMPLE},
    "top_h": {"generate": {"top_h": 0.5}, "sampling": SAMPLE},
    "top_k": {"generate": {"top_k": 5}, "sampling": SAMPLE},
    "top_p": {"generate": {"top_p": 0.8}, "sampling": SAMPLE},
    "typical_p": {"generate": {"typical_p": 0.9}, "sampling": SAMPLE},
    "watermarking_config-kirchenbauer": {"generate": {"watermarking_config": {"kind": "kirchenbauer", "bias": 2.0}},
                                         "sampling": SAMPLE},
    "watermarking_config-synthid": {"generate": {"watermarking_config": {"kind": "synthid", "keys": [3, 7, 11, 13],
                                                                         "ngram_len": 3}}, "sampling": SAMPLE},
    "num_beams": {"beams": {"num_beams": 2}},
    "num_return_sequences": {"beams": {"num_beams": 2, "num_return": 2}},
    # stopping criteria
    "max_time": {"generate": {"max_time": 60.0}},
    "stop_strings": {"generate": {"stop_strings": [" the", "."]}},
    "assistant_confidence_threshold": {"generate": {"assistant_confidence_threshold": 0.2}, "assistant_only": True},
    # caches
    "use_cache": {"generate": {"use_cache": False},
                  "alone_only": "transformers refuses it: 'Assisted decoding requires a cache'"},
    "max_cache_len": {"generate": {"cache_implementation": "static", "max_cache_len": 64}},
    "prefill_chunk_size": {"generate": {"prefill_chunk_size": 2}},
    "num_assistant_tokens": {"generate": {"num_assistant_tokens": 3}, "assistant_only": True},
    # decoding strategies
    "prompt_lookup_num_tokens": {"generate": {"prompt_lookup_num_tokens": 3}},
    "max_matching_ngram_size": {"generate": {"prompt_lookup_num_tokens": 3, "max_matching_ngram_size": 1}},
    "assistant_early_exit": {"generate": {"assistant_early_exit": 1}},
    "assistant_ensemble_weight": {"generate": {"assistant_ensemble_weight": 0.5}, "assistant_only": True},
    "penalty_alpha": {"generate": {"penalty_alpha": 0.6, "top_k": 4}},
    "num_beam_groups": {"generate": {"num_beam_groups": 2, "diversity_penalty": 0.5}, "beams": {"num_beams": 2}},
    "force_words_ids": {"generate": {"force_words_ids": [[5]]}, "beams": {"num_beams": 2}},
    "dola_layers": {"generate": {"dola_layers": "high"}},
}

# field -> why it has no run of its own on a tiny text model.
NOT_APPLICABLE: dict[str, str] = {
    "max_length": "the harness always passes max_new_tokens (the scenario's), which replaces max_length; "
                  "MaxLengthCriteria runs in every case",
    "is_assistant": "set by transformers on the assistant's own config, not a user option",
    "cache_config": "the parameters of a cache_implementation (quantized: backend, nbits); its run is "
                    "cache_implementation-quantized with the defaults",
    "constraints": "Constraint objects (PhrasalConstraint, ...), not expressible in YAML; force_words_ids runs "
                   "the same constrained beam search",
    "use_mtp": "needs a model with multi-token-prediction heads (DeepSeek-V3 style); the tiny models have none",
    "speculation_type": "'dflash' needs a DFlash draft model from the Hub, never downloaded here",
}

SWEEP_DEVICES = ["cpu", "cuda:0", "auto"]
ASSISTANT = {"model": {"seed": 1}, "device": "cuda:1"}


def option_fields() -> dict[str, set[str]]:
    """GenerationConfig field -> what it turns on, read from the installed transformers' source;
    cache_implementation appears as cache_implementation-VALUE, one per implementation."""
    import importlib

    from transformers import GenerationConfig
    from transformers.generation import configuration_utils

    public = {name for name in vars(GenerationConfig()) if not name.startswith("_")}
    found: dict[str, set[str]] = {}
    for module, qualname, kind in _DECIDERS:
        owner, method = qualname.split(".")
        source = inspect.getsource(getattr(getattr(importlib.import_module(module), owner), method))
        for field in set(re.findall(r"(?:generation_config|self)\.(\w+)", source)) & public:
            found.setdefault(field, set()).add(kind)
    found.pop("cache_implementation", None)
    for implementation in cache_implementations(configuration_utils):
        found[f"cache_implementation-{implementation}"] = {"cache"}
    # generate()'s own bookkeeping, read there but turning nothing on by itself
    for field in ("max_new_tokens", "eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id",
                  "output_scores", "output_logits", "return_dict_in_generate", "output_attentions",
                  "output_hidden_states", "early_stopping", "length_penalty", "low_memory",
                  "compile_config", "disable_compile", "continuous_batching_config"):
        found.pop(field, None)
    return found


def cache_implementations(configuration_utils: Any) -> list[str]:
    names = list(getattr(configuration_utils, "ALL_CACHE_IMPLEMENTATIONS", ()))
    return [*names, "paged"] if "paged" not in names else names  # generate() takes it too (continuous batching)


def uncovered(fields: dict[str, set[str]]) -> list[str]:
    """Fields transformers reads that neither OPTIONS runs nor NOT_APPLICABLE explains."""
    covered = set(NOT_APPLICABLE)
    for name, item in options_with_caches().items():
        covered |= {name, name.split("-")[0]} | set(item.get("generate", {}))
        if "beams" in item:
            covered |= {"num_beams"} | ({"num_return_sequences"} if item["beams"].get("num_return", 1) > 1 else set())
        if item.get("sampling"):
            covered.add("do_sample")
    return sorted(field for field in fields if field not in covered)


def options_with_caches() -> dict[str, dict[str, Any]]:
    """OPTIONS plus one run per cache implementation of the installed transformers."""
    from transformers.generation import configuration_utils

    caches: dict[str, dict[str, Any]] = {f"cache_implementation-{name}": {"generate": {"cache_implementation": name}}
                                         for name in cache_implementations(configuration_utils)}
    if "cache_implementation-paged" in caches:  # continuous batching
        caches["cache_implementation-paged"]["alone_only"] = \
            "transformers refuses it: 'assistant_model is not supported for continuous batching'"
    return OPTIONS | caches


def _yaml_value(value: Any) -> str:
    import json

    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, str) and (value.strip() != value or not value.replace("_", "").isalnum()):
        return json.dumps(value)
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def sweep_yaml() -> str:
    import transformers

    lines = [
        "# yaml-language-server: $schema=../harness/data/scenario.schema.json",
        "#",
        "# The generation-options sweep, written by `python -m harness.frontends.generation_options`",
        f"# from transformers {transformers.__version__}'s GenerationConfig (do not edit by hand): every",
        "# option that turns on a logits processor, a stopping criterion, a cache implementation or a",
        "# decoding strategy, alone (opt.NAME) and with an assistant model on the second GPU",
        "# (opt-assisted.NAME: state carried between the assistant's and the main model's calls), on",
        "# cpu, sim:cuda:0 and sim:auto. `nox -s options_sweep` runs it; not part of the bundled suite.",
        "# Options that cannot apply to a tiny text model (harness/frontends/generation_options.py):",
    ]
    lines += [f"#   {field}: {reason}" for field, reason in NOT_APPLICABLE.items()]
    options = options_with_caches()
    lines += ["# Run alone only (no opt-assisted run):"]
    lines += [f"#   {name}: {item['alone_only']}" for name, item in options.items() if item.get("alone_only")]
    fields = option_fields()
    for name, item in options.items():
        kinds = " and ".join(sorted(fields.get(name) or fields.get(name.split("-")[0], set()))) or "generate() option"
        for assisted in (False, True):
            if (item.get("assistant_only") and not assisted) or (item.get("alone_only") and assisted):
                continue
            transformers_options = {}
            if item.get("generate"):
                transformers_options["generate"] = item["generate"]
            if assisted:
                transformers_options["assistant"] = ASSISTANT
            lines += ["", f"- name: opt{'-assisted' if assisted else ''}.{name}",
                      f"  description: {name} ({kinds}), {'with an assistant on cuda:1' if assisted else 'alone'}",
                      "  engines: [transformers]",
                      f"  devices: {_yaml_value(SWEEP_DEVICES)}",
                      '  prompt: "The quick brown fox"',
                      "  max_new_tokens: 12"]
            if item.get("sampling"):
                lines.append(f"  sampling: {_yaml_value(item['sampling'])}")
            if item.get("beams"):
                lines.append(f"  features: {{beam_search: {_yaml_value(item['beams'])}}}")
            if transformers_options:
                lines.append(f"  engine_options: {{transformers: {_yaml_value(transformers_options)}}}")
            lines.append("  tags: [sweep, options]")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    missing = uncovered(option_fields())
    if missing:
        print(f"GenerationConfig fields neither in OPTIONS nor NOT_APPLICABLE: {', '.join(missing)}", file=sys.stderr)
        return 1
    text = sweep_yaml()
    if "--check" in argv:
        if SWEEP_FILE.read_text() != text:
            print(f"{SWEEP_FILE} is stale: run python -m harness.frontends.generation_options", file=sys.stderr)
            return 1
        return 0
    SWEEP_FILE.write_text(text)
    print(f"wrote {SWEEP_FILE} ({text.count('- name:')} scenarios)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
