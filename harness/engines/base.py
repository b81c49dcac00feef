"""The engine adapter interface: what an engine declares, receives and returns.

What the harness calls, per case, in a fresh instance (README "Writing an engine"):

1. `unavailable_reason()` (class method): None, or why the engine cannot run here; the
   case is then skipped with that reason. An engine may also raise `Unsupported(reason)`
   from load or generate for one case it cannot run here (the case is skipped).
2. `load(request, placement)`: load the model of `request.model_dir` onto
   `placement.devices` (one device, or several for `auto`). The directory is a generated
   tiny model, or a path or hub model of the user's; `request.model` says its architecture,
   vocabulary, EOS id and longest sequence, and `Capabilities.families` which
   architectures the engine is given at all. Afterwards the harness looks
   at where the weights of `modules()` live and fails the case if that is not the
   placement asked for.
3. `generate(request) -> Generation`: run every prompt of `request.spec`. The harness owns
   the phases: it hooks the forward of `modules()[0]`, the main model. Before generate()
   it is `setup`; a prompt's first forward is `prefill`; from its second forward on each
   forward is one decode step; whatever follows the last step is `finish`. Refine with
   `request.on_phase("prefill")` at the start of each prompt (and before each forward of
   a chunked prefill) and `request.on_phase("decode")` when decoding starts; an engine
   whose model is no torch module the harness can hook must call both.
4. `teacher_forced_logits(ids)` (when `capabilities.teacher_forcing`): only when a device
   run's tokens differ from the CPU's, on a fresh load.
5. `close()`, always, even after a failure.

The teacher-forcing contract: `ids` is one prompt's token ids followed by the CPU run's
generated tokens (batch 1; called once per prompt). Return float32 logits [len(ids), V]
on the CPU, where row j scores the token at position j + 1 given ids[: j + 1]. The harness
compares rows len(prompt) - 1 .. len(ids) - 2, the ones that chose each generated token,
against the CPU engine's. Score through the code path generation uses (prefill, then the
decode step with its cache, feeding the given tokens), not a separate full forward: a
device bug that lives in the cached decode path must show here too. Independently of what
an engine returns here, the harness records the logits the main model produced at every
step of the real generation and judges a token flip on the CPU run's own logits.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.engines.spec import GenerationSpec
from harness.format.scenario import Budget, PhaseBudgets, Scenario, TransfersCheck
from harness.models.sources import ModelInfo

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The profile of an engine that declares none (README "Transfer profiles"): the reference
# engine's steady state per decode token, measured on sim:cuda:0 and sim:auto: the chosen token
# read back (one D2H), nothing uploaded, no other sync, no D2D on one GPU. D2D on a split model
# (auto) is left to the engine to declare: it follows how the engine splits the model (the
# reference's hidden state crosses and returns: 2; accelerate's hooks: 5 on the 2-layer tiny
# llama, growing with the depth), and no host round trip hides in it.
DEFAULT_TRANSFERS = TransfersCheck(decode=Budget(h2d=0, d2h=1, syncs=0), cuda=PhaseBudgets(decode=Budget(d2d=0)))
DEFAULT_FEATURE_TRANSFERS: Mapping[str, TransfersCheck] = {
    # The grammar mask, computed on the host, uploaded once per token.
    "json_schema": DEFAULT_TRANSFERS.model_copy(update={"decode": Budget(h2d=1, d2h=1, syncs=0)}),
    # Every layer's cache fetched to its device and written back each token: one H2D and one
    # D2H per layer, so only what does not scale with the depth is judged.
    "kv_cache:offloaded": DEFAULT_TRANSFERS.model_copy(update={"decode": Budget(syncs=0)}),
}


@dataclass(frozen=True)
class Capabilities:
    features: frozenset[str] = frozenset()
    # Device kinds: "cpu", "cuda" (one GPU), "auto" (split over several).
    devices: frozenset[str] = frozenset({"cpu"})
    # Runs on torch: simulated GPUs apply, weights are found through `modules()` for the
    # placement check, and copies and syncs are counted. False: the placement and transfer
    # checks cannot see inside the engine, and the report says so.
    runs_on_torch: bool = False
    token_ids: bool = True  # returns token ids; else only text, and parity compares text
    sampling: bool = True  # can sample (mode: sample); else sampled scenarios are skipped
    deterministic: bool = True  # same seed, same tokens; else sampled parity is not judged
    teacher_forcing: bool = True  # implements teacher_forced_logits
    # Runs a scenario's `batch:` (the prompts as padded batches, `request.spec.batch`, each
    # row ending at its own EOS); else batched scenarios are skipped.
    batching: bool = False
    faults: frozenset[str] = frozenset()  # fault switches it honours
    # Checks whose failures are known properties of the engine, reported as findings
    # (a section of their own in the report) rather than failing the case.
    findings: frozenset[str] = frozenset()
    # Model architectures it runs (config.json's model_type: "llama", "qwen2", ...); None: any
    # architecture transformers loads. Cases of other families are skipped, naming them.
    families: frozenset[str] | None = None
    # The steady-state transfers per decode token it is allowed (a `checks.transfers` of a
    # scenario: a decode budget, with cuda/auto overrides): check-engine and the standard suite
    # fail a case that exceeds it. None: DEFAULT_TRANSFERS (the reference engine's).
    transfers: TransfersCheck | None = None
    # Per feature (a scenario `features:` name; kv_cache as kv_cache:KIND), the whole profile
    # of a case using it, where the feature has per-token copies of its own. None:
    # DEFAULT_FEATURE_TRANSFERS when `transfers` is None too, else none (`transfers` applies).
    feature_transfers: Mapping[str, TransfersCheck] | None = None

    @property
    def simulated(self) -> bool:
        """The old name of `runs_on_torch` (deprecated; a simulated device is the case's target)."""
        warnings.warn(_SIMULATED_DEPRECATED, DeprecationWarning, stacklevel=2)
        return self.runs_on_torch

    def transfer_profile(self, features: Mapping[str, object] | None = None) -> TransfersCheck:
        """The per-token profile a case with these scenario `features` is judged by."""
        declared = self.transfers is not None
        base = self.transfers if self.transfers is not None else DEFAULT_TRANSFERS
        by_feature = (self.feature_transfers if self.feature_transfers is not None
                      else {} if declared else DEFAULT_FEATURE_TRANSFERS)
        for name, value in (features or {}).items():  # the suite's and check-engine's cases use one each
            kind = value.get("kind") if isinstance(value, Mapping) else None
            for key in (f"{name}:{kind}", name):
                if key in by_feature:
                    return by_feature[key]
        return base


_SIMULATED_DEPRECATED = ("Capabilities: `simulated` is deprecated, use `runs_on_torch` (the engine runs on torch; "
                         "whether a device is simulated is the case's target)")
_capabilities_init = Capabilities.__init__


def _init_accepting_simulated(self: Capabilities, *args: Any, simulated: bool | None = None, **kwargs: Any) -> None:
    """Capabilities' own __init__, plus the old keyword `simulated=` of plugins written before the rename."""
    if simulated is not None:
        if "runs_on_torch" in kwargs:
            raise TypeError("Capabilities: give runs_on_torch only (simulated is its deprecated name)")
        warnings.warn(_SIMULATED_DEPRECATED, DeprecationWarning, stacklevel=2)
        kwargs["runs_on_torch"] = simulated
    _capabilities_init(self, *args, **kwargs)


Capabilities.__init__ = _init_accepting_simulated  # type: ignore[method-assign]


@dataclass(frozen=True)
class Placement:
    """What a case asks an engine for at `load`: where to put the model: ["cpu"], ["cuda:0"], or
    ["cuda:0", "cuda:1"] for auto (`harness.engines.weights` then checks where the weights went)."""

    kind: str  # cpu | cuda | auto
    devices: tuple[str, ...]


class Unsupported(Exception):
    """Raised by an engine for a case it cannot run here (an option its installed library
    lacks, a second GPU it needs): the case is skipped with this reason, never failed. For
    what the engine lacks everywhere, declare capabilities instead."""


@dataclass
class Request:
    scenario: Scenario
    model_dir: Path
    # The scenario resolved for engines (`harness.engines.spec`): map its fields, re-derive nothing.
    spec: GenerationSpec
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    # "prefill" before each prompt, "decode" before the first decode step: refines the
    # harness's own phases (see the module docstring).
    on_phase: Callable[[str], None]
    # `engine_options.<this engine>` of the scenario: the typed options of a built-in engine,
    # the engine's `options_model` instance for a plugin that declares one, else a mapping.
    options: Any = None
    # The model's architecture, vocabulary, EOS and positions (a generated model's, or a path or
    # hub model's own config); None only in requests built by hand.
    model: ModelInfo | None = None

    @property
    def prompt_ids(self) -> list[list[int]]:
        return [list(ids) for ids in self.spec.prompt_ids]

    @property
    def eos_id(self) -> int:
        return self.spec.eos_id


@dataclass
class Generation:
    tokens: list[list[int]]  # one list per prompt ([] where the engine returns only text)
    texts: list[str]
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # "beams": [[{"tokens", "score"}]] per prompt
    # Forward passes after the prefill, for engines whose forwards the harness cannot see;
    # None: one per generated token after the first.
    decode_steps: int | None = None
    # Per prompt, the logits [steps, V] that chose each generated token (float32, CPU), for an
    # engine whose decode loop never calls the forward of `modules()[0]` (it calls the layers
    # itself), so the harness records none: parity judges a token flip on them. The harness's
    # own recording wins where it has one.
    step_logits: list[torch.Tensor] | None = None


class Engine(ABC):
    """One inference engine. A new instance per case: `load`, then `generate`."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    # A pydantic model for this engine's `engine_options` (plugins; the built-in engines'
    # live in harness.format.scenario so scenarios are checked at load). None: a plain mapping.
    options_model: ClassVar[Any] = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the engine cannot run here (missing package), or None."""
        return None

    @classmethod
    def feature_unavailable(cls, feature: str) -> str | None:
        """Why a declared feature cannot run here (its optional package is missing), or
        None; its cases are then skipped with this reason."""
        return None

    @abstractmethod
    def load(self, request: Request, placement: Placement) -> None: ...

    @abstractmethod
    def generate(self, request: Request) -> Generation: ...

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules this engine loaded, the main model first (its forward marks
        the steps). Default: the `nn.Module`s among the engine's attributes, searched a few
        levels into plain objects, lists and dicts, in attribute order."""
        from harness.engines.weights import find_modules

        return find_modules(self)

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        """Logits [len(ids), V] (float32, CPU) at every position of `ids` (see the module
        docstring for the contract)."""
        raise NotImplementedError(f"engine {self.name} cannot score given tokens")

    def close(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Release the model (called even after a failure)."""
