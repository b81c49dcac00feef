"""Run one case: load the engine on the case's devices, generate inside the transfer
tracker, then run the checks. The CLI, the pytest plugin and asv all call `run_case`."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from harness import checks, feature_checks, tinymodel
from harness.cases import Case, DeviceTarget, skip_reason
from harness.engines import get_engine
from harness.engines.base import Engine, Generation, Request
from harness.errors import ErrorInfo, describe
from harness.ledger import Ledger
from harness.results import CaseResult
from harness.scenario import DeviceSpec


@dataclass
class RunOptions:
    strict_devices: bool = False


@dataclass
class Execution:
    """What one engine run produced, before any check."""

    generation: Generation | None = None
    error: ErrorInfo | None = None
    ledger: Ledger = field(default_factory=Ledger)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    prompt_ids: list[list[int]] = field(default_factory=list)
    encode: Callable[[str], list[int]] = lambda text: []
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _PhaseClock:
    """Splits wall time and the ledger into load / prefill / decode as the engine reports.
    On a real GPU, work is asynchronous: the device is synchronised at each boundary so a
    phase's time is the time its kernels took, not the time to queue them."""

    def __init__(self, ledger: Ledger, real_gpu: bool = False) -> None:
        self.ledger = ledger
        self.synchronize = torch.cuda.synchronize if real_gpu else None
        self.totals = {"load": 0.0, "prefill": 0.0, "decode": 0.0}
        self.phase = "load"
        self.since = time.perf_counter()

    def __call__(self, phase: str) -> None:
        if self.synchronize is not None:
            self.synchronize()
        now = time.perf_counter()
        self.totals[self.phase] += now - self.since
        self.phase, self.since = phase, now
        self.ledger.set_phase(phase)  # type: ignore[arg-type]

    def stop(self) -> None:
        self("load")


@lru_cache(maxsize=8)
def _tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def build_request(case: Case, on_phase: Callable[[str], None]) -> Request:
    directory = tinymodel.model_dir(case.scenario.model)
    tokenizer = _tokenizer(str(directory / "tokenizer.json"))
    return Request(
        scenario=case.scenario,
        model_dir=directory,
        prompt_ids=[tokenizer.encode(p).ids for p in case.scenario.prompt_list],
        eos_id=tinymodel.EOS_ID,
        encode=lambda text: tokenizer.encode(text).ids,
        decode=lambda ids: tokenizer.decode(ids),
        on_phase=on_phase,
    )


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
        elif target.kind != "cpu":
            with devices.track_transfers(ledger):  # real CUDA: profiler memcpy events + sync hooks
                yield
        else:
            yield


def execute(case: Case) -> Execution:
    """Load and generate; any exception becomes `Execution.error`, never the run's."""
    run = Execution()
    clock = _PhaseClock(run.ledger, real_gpu=case.target.kind != "cpu" and not case.target.simulated)
    # An engine's warnings are the engine's business: recorded as notes, never raised
    # (pytest's filterwarnings=error must not turn a deprecation inside outlines into a failure).
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        _generate(case, run, clock)
    run.warnings = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in recorded))[:5]
    if run.generation is not None:
        steps = run.generation.decode_steps
        run.ledger.decode_tokens = steps if steps is not None else sum(max(len(t) - 1, 0) for t in run.generation.tokens)
    run.timings["prefill_s"] = round(clock.totals["prefill"], 6)
    run.timings["decode_s"] = round(clock.totals["decode"], 6)
    if run.ledger.decode_tokens and clock.totals["decode"] > 0:
        run.timings["decode_tokens_per_s"] = round(run.ledger.decode_tokens / clock.totals["decode"], 2)
    return run


def _generate(case: Case, run: Execution, clock: _PhaseClock) -> None:
    engine: Engine | None = None
    try:
        request = build_request(case, clock)
        run.prompt_ids, run.encode = request.prompt_ids, request.encode
        with device_context(case.target, run.ledger, run.notes):
            engine = get_engine(case.engine)()
            if torch.cuda.is_available() and not case.target.simulated:
                torch.cuda.reset_peak_memory_stats()
            engine.load(request, case.target.placement())
            clock("load")
            run.timings["load_s"] = clock.totals["load"]
            clock.totals["load"] = 0.0
            run.generation = engine.generate(request)
            clock.stop()
            if torch.cuda.is_available() and not case.target.simulated:
                run.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
    except Exception as exc:  # the case's error, never the run's
        clock.stop()
        run.error = describe(exc)
        run.error.message += "\n" + "".join(traceback.format_exception(exc)[-6:])[-3000:]
    finally:
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.close()


class OracleCache:
    """The CPU run of each (scenario, engine), computed once per process and shared by
    every device case of that scenario, so parity works under xdist and sharding too."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, int, str], CaseResult] = {}

    @staticmethod
    def _key(case: Case) -> tuple[str, int, str]:
        return (case.loaded.path, case.loaded.line, case.engine)

    def remember(self, case: Case, result: CaseResult) -> None:
        """A CPU case just run is the oracle of its scenario: no second CPU run for parity."""
        self._results.setdefault(self._key(case), result)

    def get(self, case: Case) -> CaseResult:
        key = self._key(case)
        if key not in self._results:
            cpu_case = Case(case.loaded, case.engine, _CPU)
            self._results[key] = run_case(cpu_case, RunOptions(), oracles=None)
        return self._results[key]


_CPU = DeviceTarget(DeviceSpec(device="cpu"), simulated=False)


def scorer(case: Case, target: DeviceTarget) -> Callable[[list[int]], torch.Tensor]:
    """Teacher-forced logits (float32, CPU) from a fresh load of the case's engine on
    `target`. A rare path: only when device tokens differ from the CPU's."""

    def score(ids: list[int]) -> torch.Tensor:
        engine = get_engine(case.engine)()
        request = build_request(Case(case.loaded, case.engine, target), lambda phase: None)
        with device_context(target, Ledger()):
            engine.load(request, target.placement())
            try:
                return engine.teacher_forced_logits(ids).float().cpu()
            finally:
                engine.close()

    return score


def run_case(case: Case, options: RunOptions, oracles: OracleCache | None) -> CaseResult:
    result = CaseResult(
        id=case.id, scenario=case.scenario.name, engine=case.engine, device=case.target.label,
        file=case.loaded.path, line=case.loaded.line, started=time.time(),
        features=list(case.scenario.features.names()),
        worker=os.environ.get("PYTEST_XDIST_WORKER", f"{socket.gethostname()}:{os.getpid()}"),
    )
    skip = skip_reason(case)
    if skip is not None:
        reason, missing_device = skip
        if missing_device and options.strict_devices:
            result.fail("device", f"{reason} (--strict-devices: a missing device fails the case)")
        else:
            result.status, result.reason = "skipped", reason
        return result

    wants_parity = (
        oracles is not None and case.target.kind != "cpu" and case.scenario.checks.parity.enabled
        and case.scenario.checks.expect_error is None
    )

    run = execute(case)
    result.timings = run.timings
    result.peak_memory_bytes = run.peak_memory_bytes
    result.ledger = None if run.ledger.is_empty() and not run.ledger.decode_tokens else run.ledger.to_json()
    result.notes += run.notes + [f"warning: {w}" for w in run.warnings]
    if run.generation is not None:
        result.tokens, result.texts = run.generation.tokens, run.generation.texts
        result.notes += run.generation.notes
    if run.error is not None:
        result.error = run.error.to_json()
        if run.error.kernel_gap and case.target.simulated:
            result.status = "skipped"
            result.reason = f"kernel gap: a GPU-only code path hit a kernel the CPU lacks ({run.error.one_line()})"
            result.notes.append("kernel_gaps: " + run.error.one_line())
            return _finish(result)
    checks.check_error(result, run.error)
    if run.generation is not None:
        checks.check_output(result, case.scenario, tinymodel.EOS_ID)
        checks.check_transfers(result, case.scenario, run.ledger)
        feature_checks.check_features(result, case.scenario, run.generation, run.encode)
        if wants_parity:
            assert oracles is not None
            _parity(case, result, oracles, run)
    checks.apply_expectations(result, case.scenario, run.error)
    _demote_findings(result, get_engine(case.engine).capabilities.findings)
    if oracles is not None and case.target.kind == "cpu":
        oracles.remember(case, result)
    return _finish(result)


def _demote_findings(result: CaseResult, findings: frozenset[str]) -> None:
    """Failures of checks the engine declares as known findings move to `findings`."""
    known = [f for f in result.failures if f.check in findings]
    if not known:
        return
    result.findings += [f"{f.check}: {f.message}" for f in known]
    result.failures = [f for f in result.failures if f.check not in findings]
    if result.status == "failed" and not result.failures:
        result.status = "passed"


def _parity(case: Case, result: CaseResult, oracles: OracleCache, run: Execution) -> None:
    oracle = oracles.get(case)
    if result.tokens == oracle.tokens or not get_engine(case.engine).capabilities.teacher_forcing:
        checks.check_parity(result, oracle, case.scenario.checks.parity, None, None, run.prompt_ids)
        return
    checks.check_parity(result, oracle, case.scenario.checks.parity, scorer(case, case.target),
                        scorer(case, _CPU), run.prompt_ids)


def _finish(result: CaseResult) -> CaseResult:
    result.duration_s = round(time.time() - result.started, 4)
    return result


def results_root_default() -> Path:
    return Path(os.environ.get("SAMEDEVICE_RESULTS", "results"))
