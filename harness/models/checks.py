"""A scenario against its model, beyond what the format checks: the scenario loader's model
checker (`harness.format.loader.ModelChecker`), which its callers pass in (the loader
imports no model-source code)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    layers (placement puts whole layers on each GPU)."""
    from harness.format.scenario import ModelSpec, vocabulary_problem

    problems: list[ModelProblem] = []

    def error(loc: tuple[str | int, ...], message: str) -> None:
        problems.append((loc, message))

    if isinstance(scenario.model, ModelSpec):
        layers: int | None = model_dims.resolve_dims(scenario.model).num_layers
    else:
        try:
            info = model_source.describe_model(scenario.model)
        except model_source.ModelSourceError as exc:
            error(("model", exc.field), str(exc))
            return problems
        layers = info.num_layers
        problem = vocabulary_problem(scenario, info.vocab_size)
        if problem is not None:
            error(*problem)
        if info.max_positions is not None:
            limit = info.max_positions - scenario.max_new_tokens
            for index, prompt in enumerate(scenario.prompt_list):
                # One token per UTF-8 byte at most (byte-level BPE); only a prompt that bound cannot clear
                # is counted, with the model's tokenizer.json (without one, the engine finds out at case time).
                if len(prompt.encode("utf-8", "surrogatepass")) <= limit or info.tokenizer_json is None:
                    continue
                tokens = _count_tokens(str(info.tokenizer_json), prompt)
                if tokens > limit:
                    where: tuple[str | int, ...] = ("prompt",) if scenario.prompt is not None else ("prompts", index)
                    error(where, f"the prompt ({tokens} tokens) plus max_new_tokens {scenario.max_new_tokens} exceeds "
                                 f"the model's max_position_embeddings {info.max_positions}")
        if info.weight_bytes > model_dims.memory_limit_bytes():
            error(("model",), f"its weights are {info.weight_bytes / 1e9:.1f} GB, more than half of this machine's "
                              f"{model_dims.host_memory_bytes() / 1e9:.1f} GB")
    for index, device in enumerate(scenario.devices):
        if layers is not None and device.device == "auto" and device.gpus_needed > layers:
            given = device.gpus is not None
            error(("devices", index, "gpus") if given else ("devices", index),
                  f"auto over {device.gpus_needed} GPUs{'' if given else ' (the default)'} needs at least one layer "
                  f"per GPU, but the model has {layers} layer{'s' * (layers != 1)}: at most gpus: {layers}")
    return problems


def _count_tokens(tokenizer_json: str, text: str) -> int:
    from tokenizers import Tokenizer

    return len(Tokenizer.from_file(tokenizer_json).encode(text, add_special_tokens=False).ids)
