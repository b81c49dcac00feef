"""The scenario format, version 1: pydantic models, defaults and cross-field rules.

Loading a file (YAML marks, one-line errors) lives in `harness.format.loader`; this module only
says what a valid scenario is. `scenario_json_schema()` is what `samedevice schema` prints.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness.engines.options import OutlinesOptions, ReferenceOptions, TransformersOptions
from harness.format.base import MAX_SEED, Dtype, FieldError, ModelSpec, _check_json_value, _Strict
from harness.format.faults import FAULTS
from harness.format.labels import DEVICE_RE, MAX_GPUS, DeviceLabel
from harness.models import model_dims
from harness.models.model_dims import VOCAB_SIZE

FORMAT_VERSION: Literal[1] = 1

FEATURES = ("logit_bias", "json_schema", "beam_search", "kv_cache", "quantization")

NonEmptyStr = Annotated[str, Field(min_length=1)]


class PathModel(_Strict):
    """A local transformers-format causal LM: config.json, *.safetensors and a tokenizer
    (tokenizer.json, or the files AutoTokenizer reads). Checked when the file loads."""

    path: NonEmptyStr = Field(description="The model directory; a relative path resolves against the "
                                          "scenario file's directory.")
    dtype: Dtype = "float32"

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str, info: ValidationInfo) -> str:
        """Against the scenario file's directory (the loader's validation context), else the
        working directory."""
        path = Path(value).expanduser()
        if not path.is_absolute():
            base = (info.context or {}).get("base_dir")
            path = Path(base) / path if base is not None else Path.cwd() / path
        return str(Path(os.path.normpath(path)))


class HubModel(_Strict):
    """A Hugging Face Hub model, taken from the local Hugging Face cache only (never
    downloaded): the cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""

    hub: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$",
                     description="ORG/NAME, as on the Hub.")
    revision: NonEmptyStr = Field("main", description="A branch, tag or commit hash present in the cache.")
    dtype: Dtype = "float32"


# The tags of the `model:` union: pydantic puts the tag in an error's location, and the loader
# follows it to the member class (`harness.format.loader`).
MODEL_SOURCES: dict[str, type[BaseModel]] = {"ModelSpec": ModelSpec, "PathModel": PathModel, "HubModel": HubModel}
SOURCE_KEYS = {"family": "ModelSpec", "path": "PathModel", "hub": "HubModel"}


def _model_source(value: Any) -> str:
    if isinstance(value, dict):
        return next((tag for key, tag in SOURCE_KEYS.items() if key in value), "ModelSpec")
    return type(value).__name__ if type(value).__name__ in MODEL_SOURCES else "ModelSpec"


ModelSource = Annotated[
    Annotated[ModelSpec, Tag("ModelSpec")] | Annotated[PathModel, Tag("PathModel")] | Annotated[HubModel, Tag("HubModel")],
    Discriminator(_model_source),
]


class GreedyOrSample(_Strict):
    mode: Literal["greedy", "sample"] = "greedy"
    temperature: float | None = Field(None, gt=0, le=100)
    top_k: int | None = Field(None, ge=1, le=2**24, description="at most the model's vocabulary")
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _sampling_knobs_need_sample(self) -> GreedyOrSample:
        if self.mode == "greedy":
            for knob in ("temperature", "top_k", "top_p"):
                if getattr(self, knob) is not None:
                    raise ValueError(f"{knob} only applies with mode: sample")
        return self


class LogitBias(_Strict):
    ids: dict[int, float] = Field(
        default_factory=dict, description=f"token id -> bias (ids 0 to {VOCAB_SIZE - 1} for generated models; "
        "for path and hub models, below their config's vocab_size)"
    )
    text: dict[NonEmptyStr, float] = Field(
        default_factory=dict,
        description="string -> bias, applied to every token of the string's encoding",
    )

    @field_validator("ids")
    @classmethod
    def _ids_not_negative(cls, value: dict[int, float]) -> dict[int, float]:
        for token in value:
            if token < 0:
                # Python indexing would bias token VOCAB_SIZE + id: refused, not reinterpreted.
                raise FieldError((token, "[key]"), f"token id {token} is negative; ids count from 0")
        return value


class JsonSchemaFeature(_Strict):
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema to obey.")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json_value(value, ())
        _check_schema(value)
        return value


class BeamSearch(_Strict):
    num_beams: int = Field(3, ge=2, le=16)
    length_penalty: float = 1.0
    num_return: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _return_at_most_the_beams(self) -> BeamSearch:
        if self.num_return > self.num_beams:
            raise FieldError("num_return", f"num_return {self.num_return} exceeds num_beams {self.num_beams}")
        return self


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


class Batch(_Strict):
    """The prompts run as padded batches of `size` rows: row i of a batch must generate what
    its prompt generates alone on the CPU (the parity oracle runs each prompt alone)."""

    size: int = Field(ge=2, le=64, description="Rows per batch (the last batch may be smaller).")
    padding: Literal["left", "right"] = Field(
        "left", description="Where shorter prompts are padded; the padding is masked out of attention.")


# What a batch of rows cannot run as its prompts run alone: refused when the file loads.
_NOT_WITH_BATCH = {
    "features.beam_search": "beams are rows of their own",
    "features.json_schema": "the grammar state is per prompt",
    "sampling.mode: sample": "the rows draw from one generator, so row i cannot sample what prompt i samples alone",
    "sampling.repetition_penalty": "the padding would count as context",
}


class DeviceSpec(_Strict):
    """`cpu`, `cuda:N` or `auto` (layers spread over `gpus` GPUs, like device_map='auto')."""

    device: str
    gpus: int | None = Field(None, ge=2, le=MAX_GPUS, description="auto only (default 2)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"device": value} if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        DeviceLabel.parse(value, simulated=False)
        return value

    @model_validator(mode="after")
    def _gpus_only_for_auto(self) -> DeviceSpec:
        if self.gpus is not None and self.device != "auto":
            raise FieldError("gpus", f"gpus only applies to device: auto, not {self.device}")
        return self

    @property
    def label(self) -> DeviceLabel:
        return DeviceLabel.parse(self.device, simulated=False)

    @property
    def gpus_needed(self) -> int:
        return self.label.gpus_needed(self.gpus or 2)


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
        scenario_device = DeviceLabel.parse(device_label).device
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


EXPECTABLE_CHECKS = ("transfers", "parity", "mismatch", "placement", "phases", "race")


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


class EngineOptions(_Strict):
    """Options per engine of the scenario: typed for the built-in engines, a mapping for a
    plugin engine (which validates it, when it declares `Engine.options_model`)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, allow_inf_nan=False)

    reference: ReferenceOptions | None = None
    transformers: TransformersOptions | None = None
    outlines: OutlinesOptions | None = None

    def for_engine(self, engine: str) -> Any:
        """This engine's options: its typed model, a plugin's mapping, or None."""
        return getattr(self, engine, None) if engine in type(self).model_fields else (self.model_extra or {}).get(engine)


class ImageInput(_Strict):
    """An image generated from a seed (smooth colour gradients plus noise): the same pixels for
    the same size and seed everywhere. The model's processor resizes it to its tower's size."""

    size: int = Field(32, ge=8, le=1024, description="Side of the square RGB image, in pixels.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the generated pixels.")


class Inputs(_Strict):
    """Inputs beside the prompt text, handed to the model's processor with each prompt."""

    image: ImageInput = Field(description="A generated image; needs an image-text model family (llava, gemma3, ...).")


class Metadata(_Strict):
    version: Literal[1] = FORMAT_VERSION


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=80)
    description: str = Field(min_length=1, description="What it guards; which bug class.")
    model: ModelSource = Field(
        default_factory=ModelSpec,
        description="Exactly one of: {family, ...} a generated tiny model; {path} a local transformers-format "
        "directory; {hub, revision} a model from the local Hugging Face cache (never downloaded).",
    )
    engines: list[str] = Field(default_factory=lambda: ["reference"], min_length=1)
    devices: list[DeviceSpec] = Field(
        default_factory=lambda: [DeviceSpec(device="cpu"), DeviceSpec(device="cuda:0")],
        min_length=1,
    )
    prompt: NonEmptyStr | None = None
    prompts: list[NonEmptyStr] | None = Field(None, min_length=1, max_length=64)
    max_new_tokens: int = Field(16, ge=1, le=4096)
    stop_at_eos: bool = True
    sampling: GreedyOrSample = Field(default_factory=GreedyOrSample)
    features: Features = Field(default_factory=Features)
    batch: Batch | None = Field(None, description="Run the prompts as padded batches {size, padding: left|right} "
                                "(engines that declare batching; the others skip).")
    inputs: Inputs | None = Field(None, description="{image: {size, seed}}: a generated image handed to the "
                                  "model's processor with each prompt (image-text families: llava, gemma3, ...).")
    checks: Checks = Field(default_factory=Checks)
    engine_options: EngineOptions = Field(default_factory=EngineOptions,
                                          description="Options per engine, e.g. {transformers: {generate: {...}}}.")
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
        return self

    @model_validator(mode="after")
    def _inputs_fit(self) -> Scenario:
        if self.inputs is None:
            return self
        from harness.models.families import image_text_families

        if not isinstance(self.model, ModelSpec):
            raise FieldError(("inputs", "image"), "inputs.image needs a generated image-text model (model: {family: ...})")
        families = image_text_families()
        if families is not None and self.model.family not in families:
            raise FieldError(("inputs", "image"), f"inputs.image needs an image-text model family; {self.model.family} "
                                                  "is a text model (see `samedevice architectures`)")
        if self.batch is not None:
            raise FieldError("batch", "batch does not combine with inputs.image (each prompt runs with its image)")
        return self

    @model_validator(mode="after")
    def _batch_fits(self) -> Scenario:
        if self.batch is None:
            return self
        prompts = len(self.prompt_list)
        if self.batch.size > prompts:
            raise FieldError(("batch", "size"), f"batch size {self.batch.size} exceeds the {prompts} prompt"
                                                f"{'s' * (prompts != 1)} (give prompts: [...] with at least {self.batch.size})")
        given = {
            "features.beam_search": self.features.beam_search is not None,
            "features.json_schema": self.features.json_schema is not None,
            "sampling.mode: sample": self.sampling.mode == "sample",
            "sampling.repetition_penalty": self.sampling.repetition_penalty is not None,
        }
        for what, present in given.items():
            if present:
                raise FieldError("batch", f"batch does not combine with {what}: {_NOT_WITH_BATCH[what]}")
        if self.features.kv_cache is not None and self.features.kv_cache.kind != "static":
            raise FieldError("batch", f"batch runs on the static KV cache only (features.kv_cache.kind is "
                                      f"{self.features.kv_cache.kind})")
        return self

    @field_validator("model", mode="before")
    @classmethod
    def _one_model_source(cls, value: Any) -> Any:
        if isinstance(value, dict):
            given = [key for key in SOURCE_KEYS if key in value]
            if len(given) > 1:
                raise FieldError(given[1], f"give exactly one of family, path or hub (this model has {' and '.join(given)})")
            if "revision" in value and "hub" not in value:
                raise FieldError("revision", "revision applies to hub models only")
        return value

    @model_validator(mode="after")
    def _fits_the_vocabulary(self) -> Scenario:
        # Generated models have the bundled tokenizer's vocabulary; path and hub models are
        # checked against their config.json when the file loads (`harness.format.loader`).
        if not isinstance(self.model, ModelSpec):
            return self
        problem = vocabulary_problem(self, VOCAB_SIZE)
        if problem is not None:
            raise FieldError(*problem)
        return self

    @model_validator(mode="after")
    def _fits_the_context(self) -> Scenario:
        # The tokenizer is byte-level BPE: a prompt has at most one token per UTF-8 byte.
        # That bound needs no tokenizer; only a prompt it cannot clear is counted exactly.
        # Path and hub models: checked against their own config and tokenizer at load.
        if not isinstance(self.model, ModelSpec):
            return self
        limit = self.model.max_seq_len - self.max_new_tokens
        for index, prompt in enumerate(self.prompt_list):
            if len(prompt.encode("utf-8", "surrogatepass")) <= limit:
                continue
            from harness.models.tokenizer import count_tokens

            tokens = count_tokens(prompt)
            if tokens > limit:
                where: tuple[str | int, ...] = ("prompt",) if self.prompt is not None else ("prompts", index)
                if "max_new_tokens" in self.model_fields_set:
                    where = ("max_new_tokens",)
                raise FieldError(where, f"the prompt ({tokens} token{'s' * (tokens != 1)}) plus max_new_tokens {self.max_new_tokens} "
                                        f"exceeds model.max_seq_len {self.model.max_seq_len}")
        return self

    @model_validator(mode="after")
    def _fits_in_memory(self) -> Scenario:
        if not isinstance(self.model, ModelSpec):
            return self  # path and hub models: their safetensors files are measured at load
        spec, dims = self.model, self.model.dims
        weights = model_dims.parameter_count(spec.family, dims) * model_dims.CHECKPOINT_BYTES_PER_PARAM
        batch = self.features.beam_search.num_beams if self.features.beam_search else self.batch.size if self.batch else 1
        cache = model_dims.kv_cache_bytes(dims, spec.max_seq_len, batch, spec.dtype)
        if weights + cache > model_dims.memory_limit_bytes():
            beams = f" for {batch} {'beams' if self.features.beam_search else 'rows'}" if batch > 1 else ""
            raise FieldError("model", f"needs about {_gb(weights + cache)} of memory (float32 weights {_gb(weights)} + "
                                      f"KV cache {_gb(cache)}{beams}), more than half of this machine's "
                                      f"{_gb(model_dims.host_memory_bytes())}")
        return self

    @model_validator(mode="after")
    def _options_name_this_scenarios_engines(self) -> Scenario:
        named = [k for k in EngineOptions.model_fields if getattr(self.engine_options, k) is not None]
        named += list(self.engine_options.model_extra or {})
        for name in named:
            if name not in self.engines:
                raise FieldError(("engine_options", name), f"{name!r} is not one of this scenario's engines "
                                 f"({', '.join(self.engines)})")
        for name, value in (self.engine_options.model_extra or {}).items():
            if not isinstance(value, dict):
                raise FieldError(("engine_options", name), f"options of engine {name!r} must be a mapping")
            _check_json_value(value, ("engine_options", name))
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
        twice = sorted({engine for engine in value if value.count(engine) > 1})
        if twice:
            raise ValueError(f"{', '.join(map(repr, twice))} listed twice")
        return value

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, value: list[DeviceSpec]) -> list[DeviceSpec]:
        seen: set[str] = set()
        for index, spec in enumerate(value):
            if spec.device in seen:  # two cases would get one id
                raise FieldError((index,), f"device {spec.device} is listed twice")
            seen.add(spec.device)
        return value

    @property
    def prompt_list(self) -> list[str]:
        return [self.prompt] if self.prompt is not None else list(self.prompts or [])


def vocabulary_problem(scenario: Scenario, vocab_size: int) -> tuple[tuple[str | int, ...], str] | None:
    """(where, what) when a token id of the scenario lies outside a vocabulary of `vocab_size`."""
    bias = scenario.features.logit_bias
    for token in bias.ids if bias is not None else {}:
        if token >= vocab_size:
            return (("features", "logit_bias", "ids", token, "[key]"),
                    f"token id {token} is outside the vocabulary (0 to {vocab_size - 1})")
    top_k = scenario.sampling.top_k
    if top_k is not None and top_k > vocab_size:
        return ("sampling", "top_k"), f"top_k {top_k} exceeds the vocabulary ({vocab_size} tokens)"
    return None


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def _check_schema(schema: dict[str, Any]) -> None:
    """Against its meta-schema (its `$schema`, default the latest draft). `pattern` and
    `patternProperties` are checked by the meta-schema's `format: regex`, which jsonschema
    tests with Python's `re`: the dialect the output check uses at run time."""
    try:
        import jsonschema
    except ImportError:  # an optional dependency: without it, compile the patterns at least
        _check_patterns(schema)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # jsonschema's word for an unknown $schema
        try:
            validator = jsonschema.validators.validator_for(schema)
        except (DeprecationWarning, TypeError):
            raise FieldError("$schema", f"unknown meta-schema {schema.get('$schema')!r}") from None
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = tuple(exc.absolute_path)
        message = exc.message
        if exc.validator == "format" and exc.validator_value == "regex":
            message = f"{_regex_problem(exc.instance)} (got {exc.instance!r})"
            if where and where[-1] == "patternProperties":
                where = (*where, exc.instance, "[key]")
        raise FieldError(where, f"not a valid JSON Schema: {message}") from None
    except RecursionError:
        raise FieldError((), "not a valid JSON Schema: nested too deeply to check") from None
    _check_grammar(schema)


def _check_grammar(schema: dict[str, Any]) -> None:
    """What llguidance, the constraint the reference (every scenario's CPU oracle) and the
    transformers engine decode with, refuses in a schema that the meta-schema allows: a
    remote `$ref`, bounds no value meets, a regex its Rust dialect lacks."""
    try:
        from llguidance import LLMatcher
    except ImportError:  # a core dependency; without it the engines say so at run time
        return
    grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    problem = LLMatcher.validate_grammar(grammar, None)
    if problem:
        from harness.execute.case_errors import one_line

        raise FieldError((), f"llguidance, which the reference and transformers engines constrain with, rejects it: "
                             f"{one_line(problem)}")


def _check_patterns(schema: Any) -> None:
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(schema, ())]
    while stack:
        item, where = stack.pop()
        if isinstance(item, list):
            stack.extend((sub, (*where, i)) for i, sub in enumerate(item))
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("pattern"), str) and _regex_problem(item["pattern"]):
            raise FieldError((*where, "pattern"), f"not a valid JSON Schema: {_regex_problem(item['pattern'])}")
        for key in item.get("patternProperties", {}) if isinstance(item.get("patternProperties"), dict) else ():
            if _regex_problem(key):
                raise FieldError((*where, "patternProperties", key, "[key]"), f"not a valid JSON Schema: {_regex_problem(key)}")
        stack.extend((sub, (*where, key)) for key, sub in item.items())


def _regex_problem(pattern: Any) -> str:
    if not isinstance(pattern, str):
        return "a regular expression must be a string"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"not a regular expression Python's re compiles: {exc}"
    return ""


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema of a scenario file: one scenario or a list of them."""
    schema = Scenario.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    defs["Scenario"] = schema
    # The shorthands the before-validators accept: `- cuda:0` and `parity: false`.
    defs["DeviceSpec"] = {
        "anyOf": [{"type": "string", "pattern": DEVICE_RE.pattern}, defs["DeviceSpec"]]
    }
    defs["DeviceSpec"]["anyOf"][1]["properties"]["device"]["pattern"] = DEVICE_RE.pattern
    defs["ParityCheck"] = {"anyOf": [{"type": "boolean"}, defs["ParityCheck"]]}
    defs["ExpectFailure"] = {"anyOf": [{"enum": list(EXPECTABLE_CHECKS)}, defs["ExpectFailure"]]}
    # The loader's sweep forms of a family: a list of names, or `all`.
    family = defs["ModelSpec"]["properties"]["family"]
    family["anyOf"] = [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}]
    family.pop("type", None)
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
