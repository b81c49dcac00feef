"""The scenario format, version 1: pydantic models, defaults and cross-field rules.

Loading a file (YAML marks, one-line errors) lives in `harness.loader`; this module only
says what a valid scenario is. `scenario_json_schema()` is what `samedevice schema` prints.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FORMAT_VERSION: Literal[1] = 1

FEATURES = ("logit_bias", "json_schema", "beam_search", "kv_cache", "quantization")

# Fault switches of the reference implementation, one per bug class in BUG-CLASSES.md.
FAULTS = (
    "logit_bias_on_cpu",  # mistral.rs #398: bias built on one device, logits on another
    "ancestors_on_cpu",  # Outlines #651: beam index left on the CPU
    "ancestors_on_first_device",  # Outlines #660 / transformers #9200: index not per layer
    "kv_cache_on_cpu",  # Petals #574: past cache converted with .to(dtype) only
    "dequantize_to_cpu",  # Candle #1823: quantized weights dequantized to the CPU
    "router_on_cpu",  # mistral.rs #1447: MoE router state on the wrong device
    "stray_roundtrip_per_step",  # vLLM #3384: a .cpu() and back on every decode step
    "mask_on_cpu",  # transformers #38558: constraint mask not on the scores' device
    "input_on_first_device",  # lm-eval-harness #1575: inputs to self.device, not the embedding's
)

_DEVICE_RE = re.compile(r"^(cpu|auto|cuda:(\d+))$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelSpec(_Strict):
    """Which tiny model to generate. A preset names the dimensions; explicit fields override."""

    family: Literal["llama", "mixtral"] = "llama"
    size: Literal["tiny", "parity", "bench"] = Field(
        "tiny",
        description="tiny: hidden 64 (fast tests); parity: hidden 256; bench: hidden 512.",
    )
    seed: int = Field(0, ge=0, description="Seed of the generated weights.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    hidden_size: int | None = Field(None, ge=8, le=8192)
    num_layers: int | None = Field(None, ge=1, le=64)
    num_heads: int | None = Field(None, ge=1, le=128)
    num_kv_heads: int | None = Field(None, ge=1, le=128)
    intermediate_size: int | None = Field(None, ge=8, le=32768)
    num_experts: int | None = Field(None, ge=2, le=64, description="mixtral only")
    experts_per_token: int | None = Field(None, ge=1, le=8, description="mixtral only")
    max_seq_len: int = Field(512, ge=16, le=8192)
    lm_head_scale: float = Field(
        50.0,
        gt=0,
        description="Random weights give near-flat logits; scaling the head gives clear "
        "top-1 margins, so parity is not decided by rounding.",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSpec:
        if self.family == "llama" and (self.num_experts or self.experts_per_token):
            raise ValueError("num_experts and experts_per_token need family: mixtral")
        return self


class GreedyOrSample(_Strict):
    mode: Literal["greedy", "sample"] = "greedy"
    temperature: float | None = Field(None, gt=0, le=100)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _sampling_knobs_need_sample(self) -> GreedyOrSample:
        if self.mode == "greedy":
            for knob in ("temperature", "top_k", "top_p"):
                if getattr(self, knob) is not None:
                    raise ValueError(f"{knob} only applies with mode: sample")
        return self


class LogitBias(_Strict):
    ids: dict[int, float] = Field(default_factory=dict, description="token id -> bias")
    text: dict[str, float] = Field(
        default_factory=dict,
        description="string -> bias, applied to every token of the string's encoding",
    )


class JsonSchemaFeature(_Strict):
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema to obey.")


class BeamSearch(_Strict):
    num_beams: int = Field(3, ge=2, le=16)
    length_penalty: float = 1.0
    num_return: int = Field(1, ge=1, le=16)


class KvCache(_Strict):
    kind: Literal["static", "offloaded", "external"] = "static"


class Quantization(_Strict):
    format: Literal["int8", "q8_0", "q4_0"] = "int8"
    router: bool = Field(True, description="Quantize the MoE router too (mixtral).")


class Features(_Strict):
    logit_bias: LogitBias | None = None
    json_schema: JsonSchemaFeature | None = None
    beam_search: BeamSearch | None = None
    kv_cache: KvCache | None = None
    quantization: Quantization | None = None

    def names(self) -> tuple[str, ...]:
        return tuple(f for f in FEATURES if getattr(self, f) is not None)


class DeviceSpec(_Strict):
    """`cpu`, `cuda:N` or `auto` (layers spread over `gpus` GPUs, like device_map='auto')."""

    device: str
    gpus: int | None = Field(None, ge=1, le=64)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"device": value} if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"must be one of cpu, cuda:N, auto, but got {value!r}")
        return value

    @property
    def gpus_needed(self) -> int:
        if self.device == "cpu":
            return 0
        if self.device == "auto":
            return self.gpus or 2
        return int(self.device.split(":")[1]) + 1


class ParityCheck(_Strict):
    enabled: bool = True
    atol: float = Field(1e-3, ge=0, description="Teacher-forced logits: |a-b| <= atol + rtol*|b|")
    rtol: float = Field(1e-3, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class Budget(_Strict):
    h2d: float | None = Field(None, ge=0, description="host-to-device copies")
    d2h: float | None = Field(None, ge=0, description="device-to-host copies")
    d2d: float | None = Field(None, ge=0, description="device-to-device copies")
    syncs: float | None = Field(None, ge=0, description="host syncs other than copies")

    def over(self, other: Budget | None) -> Budget:
        """These limits with `other`'s given fields laid over them."""
        if other is None:
            return self
        return self.model_copy(update={k: v for k, v in other.model_dump().items() if v is not None})


class PhaseBudgets(_Strict):
    """Budgets per phase: `decode` per generated token (the steady state), the others for
    the whole phase of a case (setup: generate() before the prompt's first forward; finish:
    after the last decode step began)."""

    setup: Budget | None = Field(None, description="For the whole setup phase.")
    prefill: Budget | None = Field(None, description="For the whole prefill.")
    decode: Budget | None = Field(None, description="Per generated token.")
    finish: Budget | None = Field(None, description="For the whole finish phase.")


DEVICE_KINDS = ("cpu", "cuda", "auto")


class TransfersCheck(PhaseBudgets):
    """Budgets for every device, with per-device-kind overrides (`auto:` for a split model,
    whose boundary copies a single GPU does not have), and an optional baseline engine."""

    cpu: PhaseBudgets | None = Field(None, description="Overrides on cpu.")
    cuda: PhaseBudgets | None = Field(None, description="Overrides on one GPU (cuda:N, sim:cuda:N).")
    auto: PhaseBudgets | None = Field(None, description="Overrides on a split model (auto, sim:auto).")
    baseline: str | None = Field(
        None, description="An engine of this scenario: no more copies and syncs per decode token, in "
        "any direction, than it makes on the same device, judged in the same run.")

    def for_kind(self, kind: str) -> PhaseBudgets:
        """The budgets that apply on a device kind (cpu, cuda, auto)."""
        override: PhaseBudgets | None = getattr(self, kind, None)
        merged = {}
        for phase in PhaseBudgets.model_fields:
            base: Budget | None = getattr(self, phase)
            extra = getattr(override, phase) if override is not None else None
            merged[phase] = extra if base is None else base.over(extra)
        return PhaseBudgets(**merged)


class Scope(_Strict):
    """Which cases of the scenario an expectation covers (empty: all of them). A device
    entry is a scenario device (`cuda:0`, `auto`: the real and the simulated case) or a
    case label (`sim:auto`: the simulated one only)."""

    engines: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)

    def covers(self, engine: str, device_label: str) -> bool:
        if self.engines and engine not in self.engines:
            return False
        scenario_device = device_label.removeprefix("sim:")
        return not self.devices or device_label in self.devices or scenario_device in self.devices


class ExpectError(Scope):
    match: str = Field(description="Regular expression the error message must match.")
    op: str | None = Field(None, description="The op the error must name, e.g. cat.")

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


EXPECTABLE_CHECKS = ("transfers", "parity", "mismatch", "placement", "phases")


class ExpectFailure(Scope):
    check: Literal[EXPECTABLE_CHECKS]  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"check": value} if isinstance(value, str) else value


class Checks(_Strict):
    parity: ParityCheck = Field(default_factory=ParityCheck)
    output: bool = Field(True, description="max_new_tokens respected, nothing after EOS.")
    transfers: TransfersCheck | None = None
    expect_error: ExpectError | None = Field(
        None, description="The covered cases pass only if generation fails with this error."
    )
    expect_failure: list[ExpectFailure] = Field(
        default_factory=list,
        description="The covered cases pass only if these checks fail (fault scenarios): a check "
        "name, or {check, engines, devices}.",
    )


class Metadata(_Strict):
    version: Literal[1] = FORMAT_VERSION


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=80)
    description: str = Field(min_length=1, description="What it guards; which bug class.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    engines: list[str] = Field(default_factory=lambda: ["reference"], min_length=1)
    devices: list[DeviceSpec] = Field(
        default_factory=lambda: [DeviceSpec(device="cpu"), DeviceSpec(device="cuda:0")],
        min_length=1,
    )
    prompt: str | None = None
    prompts: list[str] | None = Field(None, min_length=1, max_length=64)
    max_new_tokens: int = Field(16, ge=1, le=4096)
    stop_at_eos: bool = True
    sampling: GreedyOrSample = Field(default_factory=GreedyOrSample)
    features: Features = Field(default_factory=Features)
    checks: Checks = Field(default_factory=Checks)
    faults: list[Literal[FAULTS]] = Field(default_factory=list)  # type: ignore[valid-type]
    timeout: float | None = Field(
        None, gt=0, le=86400, description="Seconds for one case (default: the runner's --timeout, 600)."
    )
    benchmark: bool = False
    tags: list[str] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=Metadata)

    @model_validator(mode="after")
    def _one_prompt_field(self) -> Scenario:
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give exactly one of prompt or prompts")
        if self.prompt is not None and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    @model_validator(mode="after")
    def _checks_name_this_scenarios_engines(self) -> Scenario:
        checks = self.checks
        baseline = checks.transfers.baseline if checks.transfers is not None else None
        if baseline is not None and baseline not in self.engines:
            raise ValueError(f"checks.transfers.baseline: {baseline!r} is not one of this scenario's engines "
                             f"({', '.join(self.engines)})")
        scopes = [("checks.expect_error", checks.expect_error)] + [
            (f"checks.expect_failure[{i}]", e) for i, e in enumerate(checks.expect_failure)]
        for where, scope in scopes:
            unknown = [e for e in (scope.engines if scope is not None else []) if e not in self.engines]
            if unknown:
                raise ValueError(f"{where}.engines: {', '.join(map(repr, unknown))} not among this scenario's "
                                 f"engines ({', '.join(self.engines)})")
        return self

    @field_validator("engines")
    @classmethod
    def _unique_engines(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("engines are listed twice")
        return value

    @property
    def prompt_list(self) -> list[str]:
        return [self.prompt] if self.prompt is not None else list(self.prompts or [])


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema of a scenario file: one scenario or a list of them."""
    schema = Scenario.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    defs["Scenario"] = schema
    # The shorthands the before-validators accept: `- cuda:0` and `parity: false`.
    defs["DeviceSpec"] = {
        "anyOf": [{"type": "string", "pattern": _DEVICE_RE.pattern}, defs["DeviceSpec"]]
    }
    defs["DeviceSpec"]["anyOf"][1]["properties"]["device"]["pattern"] = _DEVICE_RE.pattern
    defs["ParityCheck"] = {"anyOf": [{"type": "boolean"}, defs["ParityCheck"]]}
    defs["ExpectFailure"] = {"anyOf": [{"enum": list(EXPECTABLE_CHECKS)}, defs["ExpectFailure"]]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://samedevice.dev/schema/scenario-v1.json",
        "title": "samedevice scenario file (format version 1)",
        "anyOf": [
            {"$ref": "#/$defs/Scenario"},
            {"type": "array", "items": {"$ref": "#/$defs/Scenario"}, "minItems": 1},
        ],
        "$defs": defs,
    }
