"""The engine-neutral generation spec: a scenario resolved once per case.

Adapters map these fields one by one to their engine's arguments; no adapter re-derives a
default or re-encodes a string. Defaults live here and nowhere else:

- sampling: greedy has temperature 0; sampling without a temperature samples at 1.0;
  top_k / top_p / repetition_penalty are None when not asked for (no filtering);
- the logit bias is token id -> value: `ids` as given, then every token of each `text`
  entry's encoding (a text entry wins over an id given twice);
- `stop_id` is the EOS id when the scenario stops at EOS, else None (run to max_new_tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.format.scenario import Scenario

CacheKind = Literal["static", "offloaded", "external"]


@dataclass(frozen=True)
class Sampling:
    mode: Literal["greedy", "sample"]
    temperature: float  # 0.0 for greedy
    top_k: int | None
    top_p: float | None
    repetition_penalty: float | None
    seed: int

    @property
    def greedy(self) -> bool:
        return self.mode == "greedy"


@dataclass(frozen=True)
class Beams:
    num_beams: int
    length_penalty: float
    num_return: int


@dataclass(frozen=True)
class Quantization:
    format: Literal["int8", "q8_0", "q4_0"]
    router: bool  # quantize the MoE router too


@dataclass(frozen=True)
class Batch:
    size: int  # rows per batch; the prompts go in order, the last batch may be smaller
    padding: Literal["left", "right"]

    def groups(self, count: int) -> list[range]:
        """The prompt indexes of each batch, for `count` prompts."""
        return [range(i, min(i + self.size, count)) for i in range(0, count, self.size)]


@dataclass(frozen=True)
class GenerationSpec:
    prompts: tuple[str, ...]
    prompt_ids: tuple[tuple[int, ...], ...]  # one per prompt, in order
    max_new_tokens: int
    eos_id: int
    stop_id: int | None  # eos_id when generation stops at EOS, else None
    sampling: Sampling
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> bias
    json_schema: dict[str, Any] | None = None
    beams: Beams | None = None
    kv_cache: CacheKind | None = None  # None: the engine's default cache
    quantization: Quantization | None = None
    dtype: str = "float32"
    faults: tuple[str, ...] = ()
    batch: Batch | None = None  # None: each prompt alone


def resolve(scenario: Scenario, encode: Callable[[str], list[int]], eos_id: int) -> GenerationSpec:
    """The scenario as the engines must run it."""
    s, f = scenario, scenario.features
    sampled = s.sampling.mode == "sample"
    sampling = Sampling(
        mode=s.sampling.mode,
        temperature=(s.sampling.temperature or 1.0) if sampled else 0.0,
        top_k=s.sampling.top_k if sampled else None,
        top_p=s.sampling.top_p if sampled else None,
        repetition_penalty=s.sampling.repetition_penalty,
        seed=s.sampling.seed,
    )
    beams = None
    if f.beam_search is not None:
        beams = Beams(f.beam_search.num_beams, f.beam_search.length_penalty, f.beam_search.num_return)
    quantization = None
    if f.quantization is not None:
        quantization = Quantization(f.quantization.format, f.quantization.router)
    return GenerationSpec(
        prompts=tuple(s.prompt_list),
        prompt_ids=tuple(tuple(encode(p)) for p in s.prompt_list),
        max_new_tokens=s.max_new_tokens,
        eos_id=eos_id,
        stop_id=eos_id if s.stop_at_eos else None,
        sampling=sampling,
        logit_bias=resolve_logit_bias(scenario, encode),
        json_schema=f.json_schema.schema_ if f.json_schema is not None else None,
        beams=beams,
        kv_cache=f.kv_cache.kind if f.kv_cache is not None else None,
        quantization=quantization,
        dtype=s.model.dtype,
        faults=tuple(s.faults),
        batch=Batch(s.batch.size, s.batch.padding) if s.batch is not None else None,
    )


def resolve_logit_bias(scenario: Scenario, encode: Callable[[str], list[int]]) -> dict[int, float]:
    feature = scenario.features.logit_bias
    if feature is None:
        return {}
    bias = dict(feature.ids)
    for text, value in feature.text.items():
        for token_id in encode(text):
            bias[token_id] = value
    return bias
