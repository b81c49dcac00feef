"""Run one case: load the engine on the case's devices, generate inside the transfer
tracker with the harness's phases, then judge it (`harness.checks.judge`). The CLI, the pytest
plugin, check-engine and the benchmarks all call `run_case` or `execute`.

Where an exception comes from decides what it is: raised by the engine (its load, its
generate) it is the engine's error (a device mismatch, a crash); raised by the harness's
own code it is a harness error, reported as such and never blamed on the engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from harness.checks import features as feature_checks
from harness.checks import judge as checks
from harness.devices.cuda_patch import HUB_KERNELS_NOTE
from harness.devices.ledger import Ledger
from harness.engines import UnknownEngine, get_engine
from harness.engines.base import Engine, Generation, Request, Unsupported
from harness.engines.spec import GenerationSpec, resolve
from harness.engines.weights import WeightMap, placement_problem, weight_map
from harness.execute.capture import captured_output, quiet_libraries
from harness.execute.case_errors import ErrorInfo, describe_error
from harness.execute.cases import Case, DeviceTarget, skip_reason
from harness.execute.phases import PhaseTracker
from harness.format.loader import LoadedScenario
from harness.format.scenario import DeviceSpec
from harness.models import sources as model_source
from harness.record.results import CaseResult


@dataclass
class RunOptions:
    strict_devices: bool = False
    # Greedy cases on the CPU also check that the engine's teacher forcing picks the tokens
    # its generation chose (check-engine turns it on).
    teacher_forcing_check: bool = False


@dataclass
class Execution:
    """What one engine run produced, before any check."""

    spec: GenerationSpec | None = None
    generation: Generation | None = None
    error: ErrorInfo | None = None
    ledger: Ledger = field(default_factory=Ledger)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    weights: WeightMap | None = None  # where the engine's weights were after load
    decode_seen: bool = False  # a decode phase, hooked or marked by the engine
    step_logits: list[torch.Tensor] | None = None  # per prompt [steps, V]: see harness.execute.phases
    unsupported: str | None = None  # the engine raised Unsupported: the case is skipped
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@lru_cache(maxsize=8)
def _tokenizer(directory: str, tokenizer_json: str | None) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """encode (no special tokens added: a prompt is the text it says, as for the bundled
    tokenizer) and decode, from tokenizer.json, else from the files AutoTokenizer reads."""
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(tokenizer_json)
        return (lambda text: fast.encode(text, add_special_tokens=False).ids), (lambda ids: fast.decode(ids))
    from transformers import AutoTokenizer

    slow: Any = AutoTokenizer.from_pretrained(directory)
    return (lambda text: list(slow.encode(text, add_special_tokens=False))), (lambda ids: str(slow.decode(ids, skip_special_tokens=True)))


def build_request(case: Case, on_phase: Callable[[str], None]) -> Request:
    """The engine's request: the model's directory, tokenizer and EOS (a generated model's
    bundled tokenizer, or a path or hub model's own), and the scenario resolved with them."""
    model = model_source.describe_model(case.scenario.model)
    encode, decode = _tokenizer(str(model.directory), str(model.tokenizer_json) if model.tokenizer_json else None)
    return Request(
        scenario=case.scenario,
        model_dir=model.directory,
        spec=resolve(case.scenario, encode, model.eos_id),
        encode=encode,
        decode=decode,
        on_phase=on_phase,
        model=model,
        options=engine_options(case),
    )


def engine_options(case: Case):
    """The scenario's options for this case's engine; a plugin's `options_model` checks its
    mapping here (the built-in engines' were checked when the file loaded)."""
    options = case.scenario.engine_options.for_engine(case.engine)
    model = get_engine(case.engine).options_model
    if model is not None and isinstance(options, dict):
        from pydantic import ValidationError

        try:
            return model.model_validate(options)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in ("engine_options", case.engine, *first["loc"]))
            raise ValueError(f"{where}: {first['msg']}") from None
    return options


# What parity needs to judge a token flip, and the remedy (README "Writing an engine"); check-engine
# fails an engine whose cases carry this note.
LOGITS_NOT_RECORDED = ("logits: not recorded: the forward of modules()[0] did not produce them and the engine "
                       "handed none back, so a token flip on another device cannot be judged (return the module whose "
                       "forward produces the logits first from modules(), or Generation(step_logits=...))")


def _single_sequence(spec: GenerationSpec) -> bool:
    """One sequence per prompt, decoded step by step: where per-step logits are well defined
    (a batch's forwards hold several prompts: parity judges its flips on the CPU run of each
    prompt alone)."""
    return spec.beams is None and spec.batch is None


def handed_back_logits(generation: Generation | None, prompts: int) -> list[torch.Tensor] | None:
    """The engine's own `Generation.step_logits`, where it handed back one [steps, V] tensor per
    prompt with a row per generated token (else None: nothing to judge a flip by)."""
    if generation is None or generation.step_logits is None:
        return None
    logits = generation.step_logits
    if len(logits) != prompts or len(generation.tokens) != prompts:
        return None
    if any(t.dim() != 2 or t.shape[0] < len(tokens) for t, tokens in zip(logits, generation.tokens, strict=True)):
        return None
    return [t.detach().float().cpu() for t in logits]


def _vocab_size(model_dir: Path) -> int | None:
    try:
        return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def device_context(target: DeviceTarget, ledger: Ledger, notes: list[str] | None = None) -> Iterator[None]:
    """Simulated GPUs for sim targets; the transfer tracker for real GPUs. On a plain CPU
    device nothing is a transfer or a sync, so nothing is tracked and budgets hold."""
    from harness import devices

    with torch.no_grad():
        if target.simulated:
            count = max(target.spec.gpus_needed, int(os.environ.get("SAMEDEVICE_SIM_GPUS", "2")))
            with devices.simulated_gpus(count=count, ledger=ledger) as simulation:
                try:
                    yield
                finally:
                    # GPU-only code paths that hit a kernel the CPU lacks: reported, not hidden.
                    if notes is not None:
                        notes += [f"kernel_gaps: {gap}" for gap in simulation.kernel_gaps]
                        notes += [f"stand_ins: {use}" for use in simulation.stand_ins]
        elif target.kind != "cpu":
            with devices.track_transfers(ledger):  # real CUDA: profiler memcpy events + sync hooks
                yield
        else:
            yield


def _has_transformers_model(modules: list[Any]) -> bool:
    """Whether a transformers model is among an engine's modules (without importing transformers)."""
    modeling = sys.modules.get("transformers.modeling_utils")
    return modeling is not None and any(isinstance(m, modeling.PreTrainedModel) for m in modules)


def _real_gpu(target: DeviceTarget) -> bool:
    return target.kind != "cpu" and not target.simulated


def execute(case: Case) -> Execution:
    """Load and generate; any exception becomes `Execution.error`, never the run's."""
    execution = Execution()
    tracker = PhaseTracker(execution.ledger, torch.cuda.synchronize if _real_gpu(case.target) else None)
    # An engine's warnings and output are the engine's business: recorded as notes, never
    # raised (pytest's filterwarnings=error must not turn a deprecation inside outlines into
    # a failure) and never printed between the run's progress lines.
    with engine_output(execution):
        _generate(case, execution, tracker)
    execution.decode_seen = tracker.decode_forwards > 0 or tracker.engine_marks["decode"] > 0
    if execution.generation is not None and tracker.decode_forwards == 0:
        # No decode forward was seen: the engine's own count is the steps (see harness.execute.phases).
        steps = execution.generation.decode_steps
        execution.ledger.decode_tokens = steps if steps is not None else sum(max(len(t) - 1, 0) for t in execution.generation.tokens)
    seconds = tracker.seconds
    execution.timings = {f"{phase}_s": round(seconds[phase], 6) for phase in ("load", "setup", "prefill", "decode", "finish")}
    if execution.ledger.decode_tokens and seconds["decode"] > 0:
        execution.timings["decode_tokens_per_s"] = round(execution.ledger.decode_tokens / seconds["decode"], 2)
    return execution


@contextlib.contextmanager
def engine_output(execution: Execution) -> Iterator[None]:
    """The engine's warnings and printed output (native code's too) into `run`'s notes."""
    quiet_libraries()
    with warnings.catch_warnings(record=True) as recorded, captured_output() as output:
        warnings.simplefilter("always")
        yield
    execution.warnings = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in recorded))[:5]
    execution.notes += [f"output: {line}" for line in output.lines()]


def _generate(case: Case, execution: Execution, tracker: PhaseTracker) -> None:
    engine: Engine | None = None
    origin = "harness"
    try:
        request = build_request(case, tracker.on_phase)
        execution.spec = request.spec
        with device_context(case.target, execution.ledger, execution.notes):
            origin = "engine"
            engine = get_engine(case.engine)()
            if torch.cuda.is_available() and _real_gpu(case.target):
                torch.cuda.reset_peak_memory_stats()
            engine.load(request, case.target.requested_placement())
            modules = engine.modules()
            origin = "harness"
            execution.weights = weight_map(engine, modules)
            if case.target.simulated and _has_transformers_model(modules):
                execution.notes.append(f"simulation: {HUB_KERNELS_NOTE}")
            if modules:
                tracker.hook(modules[0])
            tracker.begin_generate()
            origin = "engine"
            execution.generation = engine.generate(request)
            origin = "harness"
            tracker.end_generate()
            tracker.unhook()
            if torch.cuda.is_available() and _real_gpu(case.target):
                execution.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
        execution.step_logits = tracker.step_logits(len(request.spec.prompt_ids), _vocab_size(request.model_dir)) \
            or handed_back_logits(execution.generation, len(request.spec.prompt_ids))
        if (execution.step_logits is None and execution.generation is not None and _single_sequence(request.spec)
                and any(execution.generation.tokens)):
            execution.notes.append(LOGITS_NOT_RECORDED)
    except Unsupported as exc:  # the engine cannot run this case here: a skip, with its reason
        tracker.unhook()
        execution.unsupported = str(exc) or type(exc).__name__
    except Exception as exc:  # the case's error, never the run's
        tracker.unhook()
        execution.error = describe_error(exc, origin="engine" if origin == "engine" else "harness")
    finally:
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.close()


# --- companion runs: the CPU oracle and baseline engines ---------------------------------------

_CPU = DeviceTarget(DeviceSpec(device="cpu"), simulated=False)
_KEEP = 16  # companion runs kept per worker (cases of one scenario run one after another)


class Companions:
    """Runs a case's verdict depends on: the CPU run of the same scenario and engine (the
    parity oracle, with its logits at every step) and the baseline engine on the same
    device. Kept in this process only (logits are never written), computed when missing, so
    parity and baselines work under xdist and sharding too."""

    def __init__(self) -> None:
        self._runs: OrderedDict[tuple[str, int, str, str, str, bool], Execution] = OrderedDict()

    @staticmethod
    def _key(case: Case) -> tuple[str, int, str, str, str, bool]:
        # The name too: a family sweep makes several scenarios of one file line.
        return (case.loaded.path, case.loaded.line, case.scenario.name, case.engine, case.target.label,
                case.scenario.batch is not None)

    def remember(self, case: Case, execution: Execution) -> None:
        self._runs[self._key(case)] = execution
        self._runs.move_to_end(self._key(case))
        while len(self._runs) > _KEEP:
            self._runs.popitem(last=False)

    def get(self, case: Case) -> Execution:
        key = self._key(case)
        if key not in self._runs:
            self.remember(case, execute(case))
        return self._runs[key]

    def oracle(self, case: Case) -> Execution:
        """The CPU run, each prompt alone: a batch's row i must generate what prompt i does."""
        loaded = case.loaded
        if case.scenario.batch is not None:
            loaded = LoadedScenario(case.scenario.model_copy(update={"batch": None}), loaded.path, loaded.line)
        return self.get(Case(loaded, case.engine, _CPU))

    def baseline(self, case: Case, engine: str) -> Execution:
        return self.get(Case(case.loaded, engine, case.target))


OracleCache = Companions  # the former name, still used by execute/worker.py and some tests


def scorer(case: Case, target: DeviceTarget) -> Callable[[list[int]], torch.Tensor]:
    """Teacher-forced logits (float32, CPU) from a fresh load of the case's engine on
    `target`. A rare path: only when device tokens differ from the CPU's."""

    def score(ids: list[int]) -> torch.Tensor:
        engine = get_engine(case.engine)()
        request = build_request(Case(case.loaded, case.engine, target), lambda phase: None)
        with engine_output(Execution()), device_context(target, Ledger()):
            engine.load(request, target.requested_placement())
            try:
                return engine.teacher_forced_logits(ids).float().cpu()
            finally:
                engine.close()

    return score


# --- one case, judged -------------------------------------------------------------------------

def run_case(case: Case, options: RunOptions, companions: Companions | None) -> CaseResult:
    result = CaseResult(
        id=case.id, scenario=case.scenario.name, engine=case.engine, device=case.target.label,
        file=case.loaded.path, line=case.loaded.line, started=time.time(),
        features=list(case.scenario.features.names()),
        worker=os.environ.get("PYTEST_XDIST_WORKER", f"{socket.gethostname()}:{os.getpid()}"),
    )
    try:
        get_engine(case.engine)
    except UnknownEngine as exc:  # e.g. its plugin failed to import: the case fails, naming it
        result.status, result.error = "error", ErrorInfo("UnknownEngine", str(exc), origin="engine")
        return _finish(result)
    skip = skip_reason(case)
    if skip is not None:
        reason, missing_device = skip
        if missing_device and options.strict_devices:
            result.status = "failed"
            result.failures.append(checks.Failure("device", f"{reason} (--strict-devices: a missing device fails the case)"))
        else:
            result.status, result.reason = "skipped", reason
        return _finish(result)
    unbuilt = _unbuildable(case)
    if unbuilt is not None:
        result.status, result.reason = "skipped", unbuilt
        return _finish(result)
    try:
        _judge(case, result, companions, options)
    except Exception as exc:  # a bug in our own checks: the case's error, never the engine's
        result.error = describe_error(exc, origin="harness")
        result.status, result.failures = "error", []
    return _finish(result)


def _unbuildable(case: Case) -> str | None:
    """A generated family whose tiny model cannot be built (its config class refuses the tiny
    dimensions, or transformers cannot build the model from it): the case is skipped with the
    reason. Anything else that goes wrong building it is the case's error, at its run."""
    from harness.format.scenario import ModelSpec
    from harness.models.tiny_families import CannotBuildTiny

    model = case.scenario.model
    if not isinstance(model, ModelSpec):
        return None
    try:
        model_source.describe_model(model)
    except CannotBuildTiny as exc:
        return f"model family {model.family} cannot be built tiny: {exc}"
    except Exception:  # reported by the run itself, with its traceback
        return None
    return None


def _judge(case: Case, result: CaseResult, companions: Companions | None, options: RunOptions) -> None:
    execution = execute(case)
    if companions is not None and case.target.kind == "cpu":
        companions.remember(case, execution)
    if execution.unsupported is not None:
        result.status, result.reason = "skipped", f"engine {case.engine}: {execution.unsupported}"
        result.notes = execution.notes
        return
    scenario, target = case.scenario, case.target
    engine_cls = get_engine(case.engine)
    caps = engine_cls.capabilities
    result.timings = execution.timings
    result.peak_memory_bytes = execution.peak_memory_bytes
    result.ledger = None if execution.ledger.is_empty() and not execution.ledger.decode_tokens else execution.ledger
    result.weights = execution.weights.to_json() if execution.weights is not None else None
    result.error = execution.error
    outcome = checks.Outcome(notes=execution.notes + [f"warning: {w}" for w in execution.warnings])
    outcome.add(checks.check_error(execution.error))
    if execution.weights is not None:
        problem = placement_problem(execution.weights, target.kind, target.requested_placement().devices)
        outcome.add(checks.check_placement(case.engine, problem, bool(execution.weights.tensors), caps.runs_on_torch))
    tracked = target.simulated or target.kind != "cpu"
    expect_error = scenario.checks.expect_error
    if expect_error is not None and not expect_error.covers(case.engine, target.label):
        expect_error = None
    if execution.generation is not None and execution.spec is not None:
        generation = execution.generation
        result.tokens, result.texts = generation.tokens, generation.texts
        outcome.notes += generation.notes
        if caps.token_ids:
            outcome.add(checks.check_output(generation.tokens, scenario, execution.spec.eos_id))
        if tracked and caps.runs_on_torch:
            outcome.add(checks.check_phases(case.engine, generation.tokens, execution.decode_seen))
        if tracked:
            outcome.add(_transfers(case, execution, companions, caps.runs_on_torch))
        outcome.add(feature_checks.check_features(execution.spec, generation))
        if (options.teacher_forcing_check and target.kind == "cpu" and caps.teacher_forcing and caps.token_ids
                and execution.spec.sampling.greedy and execution.spec.beams is None and not execution.spec.logit_bias):
            prompts = [list(ids) for ids in execution.spec.prompt_ids]
            outcome.add(checks.check_teacher_forcing(generation.tokens, prompts, scorer(case, target)))
        # A batch is judged on the CPU too: its rows against each prompt's run alone.
        wants_parity = (companions is not None and (target.kind != "cpu" or scenario.batch is not None)
                        and scenario.checks.parity.enabled and expect_error is None)
        if wants_parity:
            assert companions is not None
            outcome.add(_parity(case, execution, companions.oracle(case), caps))
    covering = [e for e in scenario.checks.expect_failure if e.covers(case.engine, target.label)]
    verdict = checks.decide(outcome, execution.error, expect_error, covering, caps.findings, target.simulated)
    result.status, result.reason = verdict.status, verdict.reason
    result.failures, result.notes, result.findings = verdict.failures, verdict.notes, verdict.findings


def _transfers(case: Case, execution: Execution, companions: Companions | None, torch_engine: bool) -> checks.Outcome:
    config = case.scenario.checks.transfers
    if config is None:
        return checks.Outcome()
    if not torch_engine:
        return checks.Outcome(notes=[f"transfers not checked: engine {case.engine} does not run on torch, "
                                     "so its copies and syncs are not visible to the harness"])
    baseline = None
    if config.baseline is not None and config.baseline != case.engine and companions is not None:
        other = companions.baseline(case, config.baseline)
        if other.error is not None or other.generation is None:
            why = other.error.one_line() if other.error is not None else "no output"
            out = checks.Outcome()
            out.fail("transfers", f"baseline {config.baseline} could not run on {case.target.label}: {why}")
            return out
        baseline = other.ledger
    return checks.check_transfers(config.for_kind(case.target.kind), execution.ledger, baseline, config.baseline)


def _parity(case: Case, execution: Execution, oracle: Execution, caps) -> checks.Outcome:
    if oracle.error is not None or oracle.generation is None:
        why = oracle.error.one_line() if oracle.error is not None else "no output"
        return checks.Outcome(notes=[f"parity not checked: the CPU run did not complete ({why})"])
    assert execution.generation is not None and execution.spec is not None
    spec = execution.spec
    if not spec.sampling.greedy and not caps.deterministic:
        return checks.Outcome(notes=[f"parity not judged: engine {case.engine} is not deterministic under sampling "
                                     "(Capabilities.deterministic is False)"])
    generation, cpu = execution.generation, oracle.generation
    differ = generation.tokens != cpu.tokens
    teacher = caps.teacher_forcing and differ
    evidence = checks.ParityEvidence(
        tokens=generation.tokens, texts=generation.texts, cpu_tokens=cpu.tokens, cpu_texts=cpu.texts,
        prompt_ids=[list(ids) for ids in spec.prompt_ids],
        cpu_steps=oracle.step_logits, device_steps=execution.step_logits,
        score_device=scorer(case, case.target) if teacher else None,
        score_cpu=scorer(case, _CPU) if teacher else None,
        token_ids=caps.token_ids and any(generation.tokens),
        greedy=spec.sampling.greedy and spec.beams is None,
        bias=spec.logit_bias, repetition_penalty=spec.sampling.repetition_penalty, stop_id=spec.stop_id,
    )
    return checks.check_parity(evidence, case.scenario.checks.parity)


def _finish(result: CaseResult) -> CaseResult:
    result.duration_s = round(time.time() - result.started, 4)
    return result
