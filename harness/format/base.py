"""The scenario format's building blocks, shared by the scenario models (`scenario`) and the
engines' option models (`harness.engines.options`): the strict base model, field errors,
JSON values, and the spec of a generated model (an assistant model is one too)."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from harness.models import model_dims

MAX_SEED = 2**64 - 1  # torch generators take unsigned 64-bit seeds


class FieldError(ValueError):
    """A rule broken at `loc`, a path below the model or field whose validator raises it,
    so the loader points at that field's line rather than at the whole model."""

    def __init__(self, loc: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = (loc,) if isinstance(loc, str) else tuple(loc)


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types a field's annotation admits (`int | None` -> {int, NoneType})."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in args))
    if typing.get_origin(annotation) is Literal:
        return {type(a) for a in args}
    return {annotation} if isinstance(annotation, type) else set()


def _lax_coercion(value: Any, kinds: set[type]) -> str | None:
    """What pydantic's lax mode would quietly convert for a scalar field, or None: a YAML
    `true` or `"4"` as a number, `4.0` as a whole number, `yes` or `"true"` as a boolean."""
    numeric = kinds & {int, float}
    if isinstance(value, bool) and numeric and bool not in kinds:
        return f"expected a number, got {str(value).lower()} (a boolean)"
    if isinstance(value, str) and (numeric or bool in kinds) and str not in kinds:
        return f"expected {'true or false' if bool in kinds else 'a number'}, got the string {value!r}"
    if isinstance(value, float) and int in kinds and float not in kinds:
        return f"expected a whole number, got {value!r}"
    if isinstance(value, int) and not isinstance(value, bool) and bool in kinds and not numeric:
        return f"expected true or false, got {value!r}"
    return None


class _Strict(BaseModel):
    # allow_inf_nan=False: every float field of the format is finite (NaN would pass any
    # bound check silently, and inf makes a bias, a scale or a budget meaningless).
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_lax_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        """Scalars as written: pydantic's strict mode would also refuse a list for a tuple."""
        field = cls.model_fields.get(info.field_name or "")
        problem = _lax_coercion(value, _scalar_kinds(field.annotation)) if field is not None else None
        if problem:
            raise ValueError(problem)
        return value


Dtype = Literal["float32", "bfloat16", "float16"]


class ModelSpec(_Strict):
    """A tiny model generated from a seed (nothing is downloaded). A preset names the
    dimensions; explicit fields override."""

    family: str = Field(
        "llama",
        description="llama and mixtral (the harness's own layouts), or any causal-LM model type of the "
        "installed transformers (qwen2, gemma2, phi3, mistral, ...), built tiny from its config class, or an "
        "image-text one with a tiny recipe (llava, gemma3, paligemma: give inputs.image). "
        "A list of families, or `all` (every causal LM the installed transformers ships; every image-text "
        "family in a scenario with inputs.image), makes one scenario per family, named NAME.FAMILY.",
    )
    size: Literal["tiny", "parity", "bench"] = Field(
        "tiny",
        description="tiny: hidden 64 (fast tests); parity: hidden 256; bench: hidden 512.",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the generated weights.")
    dtype: Dtype = "float32"
    hidden_size: int | None = Field(None, ge=8, le=8192)
    num_layers: int | None = Field(None, ge=1, le=64)
    num_heads: int | None = Field(None, ge=1, le=128)
    num_kv_heads: int | None = Field(None, ge=1, le=128)
    intermediate_size: int | None = Field(None, ge=8, le=32768)
    num_experts: int | None = Field(None, ge=2, le=64, description="mixture-of-experts families only")
    experts_per_token: int | None = Field(None, ge=1, le=8, description="mixture-of-experts families only")
    max_seq_len: int = Field(512, ge=16, le=8192)
    lm_head_scale: float = Field(
        50.0,
        gt=0,
        le=1000,
        description="Random weights give near-flat logits; scaling the head gives clear "
        "top-1 margins, so parity is not decided by rounding.",
    )

    @property
    def dims(self) -> model_dims.Dims:
        """The preset's dimensions with this spec's explicit fields laid over them."""
        return model_dims.resolve_dims(self)

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        from harness.models.families import ALL_FAMILIES, unknown_family_message

        if value == ALL_FAMILIES:
            raise ValueError("family: all is expanded by the scenario loader (one scenario per family); "
                             "in Python, build one ModelSpec per family")
        problem = unknown_family_message(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _dims_consistent(self) -> ModelSpec:
        if self.family == "llama" and (self.num_experts or self.experts_per_token):
            raise ValueError("num_experts and experts_per_token need a mixture-of-experts family "
                             "(mixtral, qwen2_moe, ...); llama has no experts")
        d = self.dims
        if d.hidden_size % d.num_heads:
            raise FieldError(self._given("num_heads", "hidden_size"),
                             f"{self._value('hidden_size')} is not divisible by {self._value('num_heads')}")
        if d.head_dim % 2:
            raise FieldError(self._given("num_heads", "hidden_size"),
                             f"head dimension {d.head_dim} (hidden_size / num_heads) must be even: rotary "
                             "embeddings rotate pairs of dimensions")
        if d.num_heads % d.num_kv_heads:
            raise FieldError(self._given("num_kv_heads", "num_heads"),
                             f"{self._value('num_heads')} is not divisible by {self._value('num_kv_heads')}")
        if d.experts_per_token > d.num_experts:
            raise FieldError(self._given("experts_per_token", "num_experts"),
                             f"{self._value('experts_per_token')} exceeds {self._value('num_experts')}")
        return self

    def _given(self, *names: str) -> str:
        """The first of `names` the scenario sets (where to point), else the first."""
        return next((n for n in names if n in self.model_fields_set), names[0])

    def _value(self, name: str) -> str:
        origin = "" if name in self.model_fields_set else (
            " (mixtral default)" if name in model_dims.MIXTRAL_EXPERTS else f" (size {self.size})")
        return f"{name} {getattr(self.dims, name)}{origin}"


JsonValue = Any  # checked as JSON (string keys, finite numbers) by `_check_json_value`


def _check_json_value(value: Any, loc: tuple[str | int, ...]) -> None:
    """A JSON document: string keys, finite numbers, no YAML-only types (dates, sets, bytes)."""
    stack = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise FieldError((*where, key, "[key]"), f"key {key!r} is not a string: JSON object keys are strings")
                stack.append((sub, (*where, key)))
        elif isinstance(item, list):
            stack.extend((sub, (*where, i)) for i, sub in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise FieldError(where, f"{item} is not a JSON number (JSON has no NaN or infinity)")
        elif item is not None and not isinstance(item, (str, int, float, bool)):
            raise FieldError(where, f"a YAML {type(item).__name__} is not a JSON value (quote it to make a string)")
