"""A scenario against its model, beyond what the format checks: the scenario loader's model
checker (`harness.format.loader.ModelChecker`), which its callers pass in (the loader
imports no model-source code)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.models import model_dims
from harness.models import sources as model_source

if TYPE_CHECKING:
    from harness.format.loader import ModelProblem
    from harness.format.scenario import Scenario


def model_problems(scenario: Scenario) -> list[ModelProblem]:
    """Every way the scenario exceeds its model, found now. Path and hub models: the directory
    and its files, then the rules the format checks for generated models at validation (token
    ids within the vocabulary, each prompt plus max_new_tokens within the model's positions,
    memory), with the model's own numbers. Every model: `auto` over no more GPUs than it has
    layers (placement puts whole layers on each GPU). Config fields the transformers engine's
    `from_pretrained` options set (max_position_embeddings, num_hidden_layers, vocab_size)
    change the model it runs: checked with those numbers, the error naming the option."""
    from harness.format.scenario import ModelSpec, vocabulary_problem

    problems: list[ModelProblem] = []

    def error(loc: tuple[str | int, ...], message: str) -> None:
        problems.append((loc, message))

    overrides = config_overrides(scenario)
    if isinstance(scenario.model, ModelSpec):
        layers: int | None = model_dims.resolve_dims(scenario.model).num_layers
        # The format checked the generated model's own context and vocabulary already.
        if "max_position_embeddings" in overrides:
            problems += _context_problems(scenario, overrides["max_position_embeddings"], None)
        if "vocab_size" in overrides:
            problem = vocabulary_problem(scenario, overrides["vocab_size"])
            if problem is not None:
                error((*_OVERRIDE, "vocab_size"), f"{problem[1]} set here")
    else:
        try:
            info = model_source.describe_model(scenario.model)
        except model_source.ModelSourceError as exc:
            error(("model", exc.field), str(exc))
            return problems
        layers = info.num_layers
        vocab = overrides.get("vocab_size", info.vocab_size)
        problem = vocabulary_problem(scenario, vocab)
        if problem is not None:
            error(*(((*_OVERRIDE, "vocab_size"), f"{problem[1]} set here") if "vocab_size" in overrides else problem))
        positions = overrides.get("max_position_embeddings", info.max_positions)
        if positions is not None and info.tokenizer_json is not None:  # without one, the engine finds out at case time
            problems += _context_problems(scenario, positions, info.tokenizer_json,
                                          override="max_position_embeddings" in overrides)
        if info.weight_bytes > model_dims.memory_limit_bytes():
            error(("model",), f"its weights are {info.weight_bytes / 1e9:.1f} GB, more than half of this machine's "
                              f"{model_dims.host_memory_bytes() / 1e9:.1f} GB")
    if "num_hidden_layers" in overrides:
        layers = overrides["num_hidden_layers"]
    for index, device in enumerate(scenario.devices):
        if layers is not None and device.device == "auto" and device.gpus_needed > layers:
            given = device.gpus is not None
            error(("devices", index, "gpus") if given else ("devices", index),
                  f"auto over {device.gpus_needed} GPUs{'' if given else ' (the default)'} needs at least one layer "
                  f"per GPU, but the model has {layers} layer{'s' * (layers != 1)}: at most gpus: {layers}")
    return problems


_OVERRIDE = ("engine_options", "transformers", "from_pretrained")


def config_overrides(scenario: Scenario) -> dict[str, int]:
    """The model-config fields the checks use that the transformers engine's `from_pretrained`
    options set (from_pretrained passes keyword arguments named like config fields to the
    config): whole numbers only; anything else is from_pretrained's to refuse at case time."""
    options = scenario.engine_options.transformers
    given: dict[str, Any] = options.from_pretrained if options is not None else {}
    return {key: value for key in ("max_position_embeddings", "num_hidden_layers", "vocab_size")
            if isinstance(value := given.get(key), int) and not isinstance(value, bool) and value > 0}


def _context_problems(scenario: Scenario, positions: int, tokenizer_json: Path | None,
                      override: bool = True) -> list[ModelProblem]:
    """Each prompt plus max_new_tokens within `positions`. One token per UTF-8 byte at most
    (byte-level BPE): only a prompt that bound cannot clear is counted, with `tokenizer_json`
    (None: the bundled tokenizer of generated models). With `override`, one error at the
    from_pretrained option that set `positions`."""
    from harness.models.tokenizer import count_tokens

    limit = positions - scenario.max_new_tokens
    problems: list[ModelProblem] = []
    for index, prompt in enumerate(scenario.prompt_list):
        if len(prompt.encode("utf-8", "surrogatepass")) <= limit:
            continue
        tokens = count_tokens(prompt) if tokenizer_json is None else _count_tokens(str(tokenizer_json), prompt)
        if tokens <= limit:
            continue
        if override:
            which = "the prompt" if scenario.prompt is not None else f"prompts[{index}]"
            return [((*_OVERRIDE, "max_position_embeddings"),
                     f"{which} ({tokens} tokens) plus max_new_tokens {scenario.max_new_tokens} exceeds "
                     f"max_position_embeddings {positions} set here (the model the transformers engine loads)")]
        where: tuple[str | int, ...] = ("prompt",) if scenario.prompt is not None else ("prompts", index)
        problems.append((where, f"the prompt ({tokens} tokens) plus max_new_tokens {scenario.max_new_tokens} exceeds "
                                f"the model's max_position_embeddings {positions}"))
    return problems


def _count_tokens(tokenizer_json: str, text: str) -> int:
    from tokenizers import Tokenizer

    return len(Tokenizer.from_file(tokenizer_json).encode(text, add_special_tokens=False).ids)
