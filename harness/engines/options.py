"""The built-in engines' typed options (`engine_options.<engine>` in a scenario): pydantic
models only, beside the engines they configure. The scenario format imports them, so this
module imports no adapter, registry code or torch (tests/test_loader.py checks)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from harness.format.base import (
    MAX_SEED,
    FieldError,
    JsonValue,
    ModelSpec,
    _check_json_value,
    _Strict,
)
from harness.format.labels import DeviceLabel
from harness.models.model_dims import VOCAB_SIZE


class Assistant(_Strict):
    """Assisted decoding: a second, smaller model proposes tokens the main model verifies."""

    model: ModelSpec = Field(default_factory=lambda: ModelSpec(seed=1), description="The assistant's model.")
    device: str = Field("same", description="`same` (the main model's first device) or `cuda:N`: on a GPU case "
                        "the assistant sits on that GPU (simulated or real); on cpu it stays on the cpu.")
    vocab_size: int | None = Field(None, ge=260, lt=VOCAB_SIZE, description="A tokenizer of its own for the "
                                   "assistant: a byte-level BPE of this vocabulary, trained on every other line of the "
                                   "corpus (other ids for the same text); generate() gets tokenizer= and "
                                   "assistant_tokenizer= (universal assisted decoding).")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "same" and not _is_one_gpu(value):
            raise ValueError(f"must be `same` or cuda:N, but got {value!r}")
        return value


def _is_one_gpu(value: str) -> bool:
    try:
        return DeviceLabel.parse(value, simulated=False).kind == "cuda"
    except ValueError:
        return False


class PeftAdapter(_Strict):
    """A peft adapter built on the fly from a seed (no trained weights needed)."""

    type: Literal["prefix_tuning", "prompt_tuning", "lora"] = "prefix_tuning"
    num_virtual_tokens: int = Field(4, ge=1, le=64, description="prefix_tuning and prompt_tuning")
    r: int = Field(4, ge=1, le=64, description="lora rank")
    seed: int = Field(0, ge=0, le=MAX_SEED)


class TransformersOptions(_Strict):
    generate: dict[str, JsonValue] = Field(
        default_factory=dict, description="Passed to generate() as keyword arguments, e.g. {dola_layers: high} "
        "or {cache_implementation: static}; what transformers rejects is the case's error.")
    from_pretrained: dict[str, JsonValue] = Field(
        default_factory=dict, description="Passed to from_pretrained(), e.g. {attn_implementation: eager}.")
    assistant: Assistant | None = None
    peft: PeftAdapter | None = None

    @field_validator("generate", "from_pretrained")
    @classmethod
    def _json(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json_value(value, ())
        return value

    @field_validator("generate")
    @classmethod
    def _watermark_kind(cls, value: dict[str, Any]) -> dict[str, Any]:
        watermark = value.get("watermarking_config")
        if isinstance(watermark, dict) and watermark.get("kind", "kirchenbauer") not in WATERMARK_KINDS:
            raise FieldError(("watermarking_config", "kind"), f"must be one of {', '.join(WATERMARK_KINDS)}, "
                                                               f"but got {watermark['kind']!r}")
        return value


# `engine_options.transformers.generate.watermarking_config.kind`: which watermark the mapping
# configures (without `kind`, SynthID's fields `keys`/`ngram_len` say synthid).
WATERMARK_KINDS = ("kirchenbauer", "synthid")


class ReferenceOptions(_Strict):
    compile: bool = Field(False, description="Run the decode step under torch.compile on cpu and cuda (CUDA "
                          "graphs on CUDA); ignored on simulated GPUs, which cannot be traced (a note says so).")


class OutlinesOptions(_Strict):
    generate: dict[str, JsonValue] = Field(default_factory=dict, description="Passed to the outlines generator call.")

    @field_validator("generate")
    @classmethod
    def _json(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json_value(value, ())
        return value
