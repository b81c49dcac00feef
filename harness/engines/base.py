"""The engine adapter interface: what an engine declares, receives and returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.scenario import Scenario

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Capabilities:
    features: frozenset[str] = frozenset()
    # Device kinds: "cpu", "cuda" (one GPU), "auto" (split over several).
    devices: frozenset[str] = frozenset({"cpu"})
    simulated: bool = False  # runs on torch, so simulated GPUs apply
    token_ids: bool = True  # returns token ids (else only text: parity is text-level)
    deterministic: bool = True  # same seed, same tokens
    teacher_forcing: bool = True  # can score given tokens (logit parity)
    faults: frozenset[str] = frozenset()  # fault switches it honours
    # Checks whose failures are known properties of the engine, reported as findings
    # (a section of their own in the report) rather than failing the case.
    findings: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Placement:
    """Where a case puts the model: ["cpu"], ["cuda:0"], or ["cuda:0", "cuda:1"] for auto."""

    kind: str  # cpu | cuda | auto
    devices: tuple[str, ...]


@dataclass
class Request:
    scenario: Scenario
    model_dir: Path
    prompt_ids: list[list[int]]
    eos_id: int
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    # Called with "prefill" before the prompt is processed and "decode" before the first
    # decode step, so the transfer ledger splits its counts.
    on_phase: Callable[[str], None]


@dataclass
class Generation:
    tokens: list[list[int]]  # one list per prompt ([] where the engine returns only text)
    texts: list[str]
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Forward passes after the prefill; None: one per generated token after the first.
    decode_steps: int | None = None


class Engine(ABC):
    """One inference engine. A new instance per case: `load`, then `generate`."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the engine cannot run here (missing package), or None."""
        return None

    @abstractmethod
    def load(self, request: Request, placement: Placement) -> None: ...

    @abstractmethod
    def generate(self, request: Request) -> Generation: ...

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        """Logits [len(ids), V] (float32, CPU) at every position of `ids`."""
        raise NotImplementedError(f"engine {self.name} cannot score given tokens")

    def close(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Release the model (called even after a failure)."""
