"""Expand scenarios into cases (scenario x engine x device) and decide what can run here.

Device labels: `cpu`, `cuda:N`, `auto` run on real devices; `sim:cuda:N`, `sim:auto` run
the same scenario device on simulated GPUs. Every GPU device a scenario names yields both,
so one scenario file serves GPU CI and CPU-only CI alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from harness.engines import UnknownEngine, get_engine
from harness.engines.base import Placement
from harness.format.labels import DeviceLabel
from harness.format.loader import LoadedScenario
from harness.format.scenario import DeviceSpec, HubModel, ModelSpec, PathModel, Scenario
from harness.models.families import BUNDLED_FAMILIES


@dataclass(frozen=True)
class DeviceTarget:
    spec: DeviceSpec
    simulated: bool

    @property
    def device_label(self) -> DeviceLabel:
        return self.spec.label.with_simulated(self.simulated)

    @property
    def label(self) -> str:
        return str(self.device_label)

    @property
    def kind(self) -> str:
        """cpu | cuda | auto: what an engine must support."""
        return self.spec.label.kind

    @property
    def marker(self) -> str:
        if self.simulated:
            return "sim"
        return {"cpu": "cpu", "cuda": "gpu", "auto": "multigpu"}[self.kind]

    def requested_placement(self) -> Placement:
        """The `Placement` this case asks its engine to load onto (whether the weights went there
        is the placement check, `harness.engines.weights`)."""
        return Placement(self.kind, self.spec.label.placement(self.spec.gpus_needed))


@dataclass(frozen=True)
class Case:
    loaded: LoadedScenario
    engine: str
    target: DeviceTarget

    @property
    def scenario(self) -> Scenario:
        return self.loaded.scenario

    @property
    def id(self) -> str:
        return f"{self.scenario.name}[{self.engine}-{self.target.label}]"


def expand(loaded: LoadedScenario) -> list[Case]:
    cases = []
    for engine in loaded.scenario.engines:
        for spec in loaded.scenario.devices:
            cases.append(Case(loaded, engine, DeviceTarget(spec, simulated=False)))
            if spec.device != "cpu":
                cases.append(Case(loaded, engine, DeviceTarget(spec, simulated=True)))
    return cases


def selected(case: Case, engines: list[str], devices: list[str]) -> bool:
    """The `--engine` / `--device` filters shared by the CLI and the pytest plugin (empty:
    everything)."""
    return (not engines or case.engine in engines) and matches_device_filter(case, devices)


def matches_device_filter(case: Case, wanted: list[str]) -> bool:
    """`--device` values: a label (`cpu`, `cuda:0`, `sim:auto`), `sim` (every simulated
    case), `gpu` (every real GPU case) or `all`."""
    return target_matches(case.target, wanted)


def target_matches(target: DeviceTarget, wanted: list[str]) -> bool:
    """`matches_device_filter` for a device target alone (check-engine has no cases yet)."""
    if not wanted or "all" in wanted:
        return True
    for want in wanted:
        if want == target.label or (want == "sim" and target.simulated):
            return True
        if want == "gpu" and not target.simulated and target.kind != "cpu":
            return True
    return False


@lru_cache(maxsize=1)
def real_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def skip_reason(case: Case) -> tuple[str, bool] | None:
    """(reason, is_missing_device) when the case cannot run here, else None."""
    try:
        engine = get_engine(case.engine)
    except UnknownEngine as exc:
        return str(exc), False
    unavailable = engine.unavailable_reason()
    if unavailable:
        return f"engine {case.engine} unavailable: {unavailable}", False
    declared = declared_skip_reason(case)
    if declared:
        return declared, False
    for feature in case.scenario.features.names():
        why = engine.feature_unavailable(feature)
        if why:
            return f"engine {case.engine} cannot run {feature} here: {why}", False
    needed = case.target.spec.gpus_needed
    if case.target.simulated:
        reason = simulation_unavailable_reason()
        if reason:
            return f"simulated GPUs unavailable: {reason}", False
        return None
    have = real_gpu_count()
    if needed > have:
        return f"needs {needed} CUDA device{'s' if needed > 1 else ''}, {have} visible", True
    return None


def declared_skip_reason(case: Case) -> str | None:
    """Why the case is skipped wherever it runs, from the engine's declared capabilities alone
    (not what is installed or which devices are here): the CI matrix starts no job for these."""
    try:
        engine = get_engine(case.engine)
    except UnknownEngine as exc:
        return str(exc)
    caps = engine.capabilities
    if case.scenario.sampling.mode == "sample" and not caps.sampling:
        return f"engine {case.engine} does not sample (greedy only)"
    missing = [f for f in case.scenario.features.names() if f not in caps.features]
    if missing:
        return f"engine {case.engine} lacks feature {', '.join(missing)}"
    if case.scenario.batch is not None and not caps.batching:
        return f"engine {case.engine} does not declare batching"
    unhonoured = [f for f in case.scenario.faults if f not in caps.faults]
    if unhonoured:
        return f"engine {case.engine} has no fault switch {', '.join(unhonoured)}"
    model_reason = model_skip_reason(case.scenario.model, case.engine, caps.families)
    if model_reason:
        return model_reason
    if case.target.kind not in caps.devices:
        return f"engine {case.engine} does not support device kind {case.target.kind}"
    if case.target.simulated and not caps.runs_on_torch:
        return f"engine {case.engine} does not run on torch here, so it cannot use simulated GPUs"
    return None


def model_skip_reason(model: ModelSpec | PathModel | HubModel, engine: str, families: frozenset[str] | None) -> str | None:
    """A generated family that has no tiny form, or an architecture the engine does not run."""
    from harness.models.sources import ModelSourceError, family_of

    if isinstance(model, ModelSpec) and model.family not in BUNDLED_FAMILIES:
        from harness.models.tiny_families import unbuildable_reason

        reason = unbuildable_reason(model.family)
        if reason:
            return f"model family {model.family} cannot be built tiny: {reason}"
    if families is None:
        return None
    try:
        family = family_of(model)
    except ModelSourceError:  # gone since the file loaded: the case's own run says so
        return None
    if family not in families:
        return f"engine {engine} does not run {family} models (it runs {', '.join(sorted(families))})"
    return None


@lru_cache(maxsize=1)
def simulation_unavailable_reason() -> str | None:
    from harness.devices import unavailable_reason

    return unavailable_reason()
