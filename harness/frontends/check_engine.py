"""`samedevice check-engine NAME`: a conformance battery for any registered engine.

Every line runs real cases through the same runner as `samedevice run` (in a worker
process, so an engine that crashes fails its line, not the battery) and gives a verdict:

- loads on every declared device kind (cpu, and sim:cuda:0 / sim:auto for torch engines,
  the real GPUs where present), with its weights where the case asked (placement);
- phases visible: on a tracked device a decode phase is seen, and the per-token counts
  are the steady state: whole numbers, the same at 4 tokens and at 16;
- transfers within the profile: those counts within the engine's declared per-token profile
  (`Capabilities.transfers`; the default, the reference engine's, where it declares none; `--budget`
  replaces it), naming the count and its call sites (a stray round trip per step fails);
- deterministic: two runs give the same tokens and the same transfer ledger;
- teacher forcing consistent with generation: on the CPU, the argmax of its teacher-forced
  logits at each step is the token it generated;
- parity with its own CPU run on every other device;
- each declared feature works on every device, within the profile for that feature
  (`Capabilities.feature_transfers`); undeclared ones are skipped with a reason;
- max_new_tokens and EOS honoured.

Exit 0 only when no line failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from harness.devices.ledger import BUDGET_NAMES
from harness.engines import get_engine
from harness.execute.case import LOGITS_NOT_RECORDED, RunOptions
from harness.execute.cases import (
    Case,
    DeviceTarget,
    real_gpu_count,
    simulation_unavailable_reason,
    target_matches,
)
from harness.format.loader import LoadedScenario
from harness.format.scenario import FEATURES, Budget, DeviceSpec, Scenario, TransfersCheck
from harness.record.results import CaseResult

Verdict = Literal["PASS", "FAIL", "SKIP"]

PROMPT = "The quick brown fox"
# A prompt and seed on which the generated tiny llama chooses EOS at its 8th token (found by
# search; tests/test_conformance.py keeps it true for the reference).
EOS_PROMPT, EOS_SEED, EOS_STEP = "A grammar constrains the", 4, 8

FEATURE_SCENARIOS: dict[str, dict[str, Any]] = {
    "logit_bias": {"features": {"logit_bias": {"text": {" the": -100.0}, "ids": {42: 500.0}}}},
    "json_schema": {"prompt": "A person as JSON: ", "max_new_tokens": 48, "stop_at_eos": True, "features": {"json_schema": {"schema": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                         "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}}}},
    "beam_search": {"features": {"beam_search": {"num_beams": 2}}},
    "kv_cache": {"features": {"kv_cache": {"kind": "static"}}},
    "quantization": {"features": {"quantization": {"format": "q8_0"}}},
}


@dataclass
class Line:
    verdict: Verdict
    what: str
    detail: str = ""

    def __str__(self) -> str:
        return f"  {self.verdict:4}  {self.what}" + (f": {self.detail}" if self.detail else "")


def _scenario(name: str, **fields: Any) -> LoadedScenario:
    data = {"name": f"check-{name}", "description": f"check-engine: {name}", "prompt": PROMPT,
            "max_new_tokens": 8, "stop_at_eos": False, **fields}
    return LoadedScenario(Scenario.model_validate(data), "<check-engine>", 1)


def device_targets(engine: str, wanted: list[str]) -> list[DeviceTarget]:
    """The devices to check: cpu (the reference for parity and the cpu-only lines), then every
    declared kind, simulated where the engine runs on torch, real where present; `wanted`
    (labels and groups, as `run -d` takes them) narrows the others. A `wanted` that selects
    none of them raises ValueError naming what there is."""
    caps = get_engine(engine).capabilities
    targets = [DeviceTarget(DeviceSpec(device="cpu"), simulated=False)]
    for kind, device in (("cuda", "cuda:0"), ("auto", "auto")):
        if kind not in caps.devices:
            continue
        if caps.runs_on_torch and simulation_unavailable_reason() is None:
            targets.append(DeviceTarget(DeviceSpec(device=device), simulated=True))
        if real_gpu_count() >= DeviceSpec(device=device).gpus_needed:
            targets.append(DeviceTarget(DeviceSpec(device=device), simulated=False))
    if not wanted:
        return targets
    # A scenario device (cuda:0) also names its simulated twin.
    chosen = [t for t in targets[1:] if target_matches(t, wanted) or t.spec.device in wanted]
    if not chosen and wanted != ["cpu"]:
        raise ValueError(f"-d {' -d '.join(wanted)} selects no device {engine} runs on here "
                         f"(there are: {', '.join(t.label for t in targets)})")
    return [targets[0], *chosen]


def parse_budget(text: str) -> TransfersCheck:
    """`--budget h2d=0,d2h=1,syncs=0`: per decode token, on every device; a count not named is
    not judged. ValueError, one line, on anything else."""
    counts: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if name not in BUDGET_NAMES or not sep:
            raise ValueError(f"--budget {text!r}: expected NAME=COUNT[,NAME=COUNT...] with NAME one of "
                             f"{', '.join(BUDGET_NAMES)} (e.g. h2d=0,d2h=1,syncs=0), got {item.strip()!r}")
        try:
            count = float(value)
        except ValueError:
            count = -1.0
        if not count >= 0 or count == float("inf"):
            raise ValueError(f"--budget {text!r}: {name} must be a count >= 0, got {value!r}")
        if name in counts:
            raise ValueError(f"--budget {text!r}: {name} given twice")
        counts[name] = count
    return TransfersCheck(decode=Budget(**counts))


def describe_budget(budget: Budget | None) -> str:
    """The judged counts of a decode budget: `h2d 0, d2h 1, syncs 0`."""
    given = [(name, getattr(budget, name)) for name in BUDGET_NAMES] if budget is not None else []
    return ", ".join(f"{name} {value:g}" for name, value in given if value is not None) or "nothing judged"


def _broken(result: CaseResult) -> bool:
    """The generation itself failed (an error, a device mismatch, ...), not only a check of it."""
    return result.status == "error" or any(
        f.check not in ("placement", "parity", "phases", "transfers") for f in result.failures)


def _problems(result: CaseResult) -> str:
    if result.status in ("passed",):
        return ""
    return f"{result.status}: {result.summary_line()}"


class Battery:
    """Runs the lines for one engine; `execute(case, options)` runs a case (a worker)."""

    def __init__(self, engine: str, targets: list[DeviceTarget],
                 execute: Callable[[Case, RunOptions], CaseResult], budget: TransfersCheck | None = None) -> None:
        self.engine, self.targets, self.execute = engine, targets, execute
        self.caps = get_engine(engine).capabilities
        self.budget = budget  # --budget: replaces the declared profiles, features' too
        self.profile_source = ("--budget" if budget is not None else "declared" if self.caps.transfers is not None
                               else "the default, none declared")
        # The generated llama, or the first architecture the engine declares when llama is not one.
        families = self.caps.families
        self.family = "llama" if families is None or "llama" in families else sorted(families)[0]

    def _scenario(self, name: str, **fields: Any) -> LoadedScenario:
        return _scenario(name, **({"model": {"family": self.family}} | fields))

    def profile(self, features: dict[str, Any] | None = None) -> TransfersCheck:
        return self.budget if self.budget is not None else self.caps.transfer_profile(features)

    def _judged(self, features: dict[str, Any] | None = None) -> dict[str, Any]:
        """Scenario fields that judge the profile (the runner's transfers check) on torch engines."""
        if not self.caps.runs_on_torch:
            return {}
        return {"checks": {"transfers": self.profile(features).model_dump(exclude_none=True)}}

    def run(self, loaded: LoadedScenario, target: DeviceTarget, **options: Any) -> CaseResult:
        return self.execute(Case(loaded, self.engine, target), RunOptions(**options))

    def lines(self) -> Iterator[Line]:
        unavailable = get_engine(self.engine).unavailable_reason()
        if unavailable:
            yield Line("FAIL", "available here", unavailable)
            return
        plain = self._scenario("plain")
        tracked = [t for t in self.targets if t.kind != "cpu"]
        for target in self.targets:
            yield from self._load_lines(plain, target)
        yield from self._steady_state_lines(tracked)
        yield from self._determinism_lines(plain, tracked[0] if tracked else self.targets[0])
        yield self._teacher_forcing_line()
        yield from self._feature_lines()
        yield from self._limit_lines()

    def _load_lines(self, plain: LoadedScenario, target: DeviceTarget) -> Iterator[Line]:
        result = self.run(plain, target)
        label = target.label
        if result.status == "skipped":
            yield Line("SKIP", f"loads on {label}", result.reason)
            return
        if _broken(result):
            yield Line("FAIL", f"loads and generates on {label}", _problems(result))
            return
        produced = (f"{len(result.tokens[0])} tokens" if result.tokens and result.tokens[0]
                    else f"{len(result.texts[0]) if result.texts else 0} characters of text")
        yield Line("PASS", f"loads and generates on {label}", produced)
        placement = [f.message for f in result.failures if f.check == "placement"]
        if not self.caps.runs_on_torch:
            yield Line("SKIP", f"placement honoured on {label}", "not a torch engine: its weights are not visible")
        elif placement:
            yield Line("FAIL", f"placement honoured on {label}", placement[0])
        else:
            where = ", ".join(f"{d}: {v['tensors']} tensors" for d, v in (result.weights or {}).get("devices", {}).items())
            yield Line("PASS", f"placement honoured on {label}", where)
        if result.tokens and any(result.tokens):
            missing = LOGITS_NOT_RECORDED in result.notes
            yield Line("FAIL" if missing else "PASS", f"step logits recorded on {label}",
                       LOGITS_NOT_RECORDED.removeprefix("logits: ") if missing else "")
        if target.kind != "cpu":
            parity = [f.message for f in result.failures if f.check == "parity"]
            notes = [n for n in result.notes if "near tie" in n or "parity not" in n]
            yield Line("FAIL" if parity else "PASS", f"parity with the CPU run on {label}",
                       parity[0] if parity else "; ".join(notes) or "same tokens")

    def _steady_state_lines(self, tracked: list[DeviceTarget]) -> Iterator[Line]:
        if not self.caps.runs_on_torch:
            yield Line("SKIP", "phases visible", "not a torch engine: copies and phases are not visible to the harness")
            return
        if not tracked:
            yield Line("SKIP", "phases visible", "no simulated or real GPU here")
            return
        for target in tracked:
            short, long = (self.run(self._scenario(f"steady-{n}", max_new_tokens=n, **self._judged()), target)
                           for n in (4, 16))
            what = f"phases visible on {target.label} (per-token counts at 4 and 16 tokens)"
            bad = next((r for r in (short, long) if _broken(r) or any(f.check == "phases" for f in r.failures)), None)
            if bad is not None:  # a run that crashed or mismatched has no steady state to show
                yield Line("FAIL", what, _problems(bad))
                continue
            counts = [_per_token(r) for r in (short, long)]
            whole = all(float(v).is_integer() for v in counts[1].values())
            if counts[0] != counts[1] or not whole:
                yield Line("FAIL", what, f"not the steady state: {counts[0]} at 4 tokens, {counts[1]} at 16")
            else:
                yield Line("PASS", what, ", ".join(f"{k} {v:g}" for k, v in counts[1].items()))
            allowed = describe_budget(self.profile().for_kind(target.kind).decode)
            what = f"transfers within the profile on {target.label} ({self.profile_source}, per decode token: {allowed})"
            over = [f.message for f in (long if long.status == "failed" else short).failures if f.check == "transfers"]
            yield Line("FAIL", what, "; ".join(over)) if over else Line("PASS", what)

    def _determinism_lines(self, plain: LoadedScenario, target: DeviceTarget) -> Iterator[Line]:
        for name, loaded in (("greedy", plain), ("sampled", self._scenario("sampled", sampling={
                "mode": "sample", "temperature": 5.0, "top_k": 50, "seed": 7}))):
            what = f"deterministic on {target.label} ({name}: two runs, same tokens and ledger)"
            if name == "sampled" and not self.caps.deterministic:
                yield Line("SKIP", what, "the engine declares itself not deterministic under sampling")
                continue
            first, second = self.run(loaded, target), self.run(loaded, target)
            bad = next((r for r in (first, second) if _broken(r)), None)
            if bad is not None:  # failing the same way twice is not determinism
                yield Line("FAIL", what, _problems(bad))
                continue
            if "skipped" in (first.status, second.status):
                yield Line("SKIP", what, first.reason or second.reason)
                continue
            same_tokens = (first.tokens, first.texts) == (second.tokens, second.texts)
            same_ledger = _counts(first) == _counts(second)
            if same_tokens and same_ledger:
                yield Line("PASS", what)
            else:
                yield Line("FAIL", what, ("tokens differ" if not same_tokens else "") +
                           (f"; ledgers differ: {_counts(first)} vs {_counts(second)}" if not same_ledger else ""))

    def _teacher_forcing_line(self) -> Line:
        what = "teacher forcing consistent with generation (cpu, greedy)"
        if not self.caps.teacher_forcing:
            return Line("SKIP", what, "the engine declares no teacher forcing (parity then compares tokens only)")
        if not self.caps.token_ids:
            return Line("SKIP", what, "text-only engine")
        result = self.run(self._scenario("teacher-forcing"), self.targets[0], teacher_forcing_check=True)
        failures = [f.message for f in result.failures if f.check == "teacher_forcing"]
        if result.status == "error":
            return Line("FAIL", what, _problems(result))
        return Line("FAIL", what, failures[0]) if failures else Line("PASS", what)

    def _feature_lines(self) -> Iterator[Line]:
        for feature in FEATURES:
            fields = FEATURE_SCENARIOS[feature]
            loaded = self._scenario(feature.replace("_", "-"), **fields, **self._judged(fields.get("features")))
            if feature not in self.caps.features:
                result = self.run(loaded, self.targets[0])
                verdict: Verdict = "SKIP" if result.status == "skipped" else "FAIL"
                yield Line(verdict, f"feature {feature} (not declared)", result.reason or _problems(result))
                continue
            for target in self.targets:
                result = self.run(loaded, target)
                if result.status == "skipped":
                    yield Line("SKIP", f"feature {feature} on {target.label}", result.reason)
                else:
                    yield Line("PASS" if result.status == "passed" else "FAIL", f"feature {feature} on {target.label}",
                               _problems(result) or "; ".join(result.findings))

    def _limit_lines(self) -> Iterator[Line]:
        cpu = self.targets[0]
        if not self.caps.token_ids:
            yield Line("SKIP", "max_new_tokens and EOS honoured", "text-only engine: its token count is not visible")
            return
        result = self.run(self._scenario("max-new-tokens", max_new_tokens=5), cpu)
        count = len(result.tokens[0]) if result.tokens else 0
        ok = result.status == "passed" and count == 5
        yield Line("PASS" if ok else "FAIL", "max_new_tokens honoured (exactly 5 tokens, stop_at_eos: false)",
                   "" if ok else _problems(result) or f"{count} tokens")
        if self.family != "llama":
            yield Line("SKIP", "EOS honoured", f"the prompt where a generated model chooses EOS is known for llama, "
                                               f"and this engine runs {self.family}")
            return
        eos = _scenario("eos", prompt=EOS_PROMPT, max_new_tokens=16, stop_at_eos=True, model={"seed": EOS_SEED})
        result = self.run(eos, cpu)
        tokens = result.tokens[0] if result.tokens else []
        what = f"EOS honoured (the tiny model chooses EOS at step {EOS_STEP} here)"
        if result.status != "passed":
            yield Line("FAIL", what, _problems(result))
        elif len(tokens) >= 16:
            yield Line("FAIL", what, f"generation ran to max_new_tokens ({tokens}) without stopping at EOS")
        else:
            yield Line("PASS", what, f"stopped after {len(tokens)} tokens")


def _per_token(result: CaseResult) -> dict[str, float]:
    ledger = result.ledger
    return {k: ledger.per_token(k) if ledger is not None else 0.0 for k in ("h2d", "d2h", "d2d", "sync")}


def _counts(result: CaseResult) -> dict[str, int]:
    return dict(sorted(result.ledger.counts.items())) if result.ledger is not None else {}  # type: ignore[arg-type]


def check_engine(engine: str, targets: list[DeviceTarget], execute: Callable[[Case, RunOptions], CaseResult],
                 emit: Callable[[Line], None], budget: TransfersCheck | None = None) -> list[Line]:
    """Run the battery on `targets` (from `device_targets`, cpu first), emitting each line as
    it is decided; returns them all. `budget` (`parse_budget`) replaces the engine's profiles."""
    battery = Battery(engine, targets, execute, budget)
    lines = []
    for line in battery.lines():
        emit(line)
        lines.append(line)
    return lines
