"""The asv benchmark suite of samedevice, for this repository and any other.

A repository's asv benchmark module is a few lines (`samedevice init asv` writes them):

    import pathlib

    from harness.frontends.asv_suite import scenario_benchmarks

    Scenarios = scenario_benchmarks(
        root=pathlib.Path(__file__).resolve().parents[1],  # the paths below are relative to it
        scenarios=["scenarios"],  # where the `benchmark: true` scenarios are
        plugins=["my_engine"],  # modules that register engines (as $SAMEDEVICE_PLUGINS does)
    )

`scenario_benchmarks` returns one asv class parameterised over (scenario, engine, device)
as found in the scenarios marked `benchmark: true` (no list to keep in sync). Its
`setup_cache` measures every case once (`measure_all`) and every `track_` reads those
figures, so asv never reruns generation per metric. A combination that is no case of any
scenario (the scenario does not list that engine or device) is in asv's `skip_params`;
one that cannot run here (no GPU, the engine is not installed or lacks a feature) raises
NotImplementedError in `setup`. asv shows both as skipped (n/a); `benchmarks/refs.py`
sums the skips up in one line instead of asv's line per skipped benchmark.

Settings, each overridden for one run by its environment variable:
- scenarios: ``$SAMEDEVICE_BENCH_SCENARIOS`` (paths separated by ``os.pathsep``); default
  the `scenarios/` beside the imported `harness` package (this repository's own suite);
- plugins: added to ``$SAMEDEVICE_PLUGINS`` (the engine registry imports them), with `root`
  on sys.path so a plugin module kept in the repository imports;
- repeats: ``$SAMEDEVICE_BENCH_REPEATS`` (default 10) runs of each case in each of
  ``$SAMEDEVICE_BENCH_ROUNDS`` passes (default 3) over all cases;
- threads: ``$SAMEDEVICE_BENCH_THREADS`` (default 1) torch intra-op threads.

Measuring (the same for asv and for `samedevice compare` runs, `harness.record.figures.CaseFigures`):
throughput is the best run (most tokens/s), prefill latency the fastest: the best of
several runs is what survives a noisy shared machine. Transfer counts are deterministic and
must agree across runs (a disagreement is reported, and the largest count kept). torch runs
with one intra-op thread by default: on two shared cores, OpenMP workers spin-waiting on a
busy neighbour turned a 10 ms decode into 370 ms, which is noise, not the engine. Timings
are the harness's `perf_counter` phase clock (`harness.execute.phases.PhaseTracker`); on a real GPU
`measure_runs` synchronises before and after each run.

Direction: asv's regression detection takes a larger value as worse. That holds for every
figure here except `track_decode_tokens_per_s`, which is for reading; its reciprocal
`track_decode_ms_per_token` is the one asv's regression list judges correctly. The CI gate
(`samedevice compare`, nox -s bench_compare) knows the direction of each. Transfer counts
per token are deterministic: any increase is a real extra copy or sync per generated
token. They are counted on simulated GPUs (`sim:*` devices) and real ones; a plain CPU case
has nothing to count and tracks 0.

Self-contained on purpose: `benchmarks/refs.py` runs a copy of this file against other
checkouts put first on sys.path (`python samedevice_suite.py run-cases`, or as asv's
suite). It imports `harness` only inside functions, through `_harness_module`: each module by
its path in the wings (`harness.execute.case`, ...), else by its path before them
(`harness.runner`, ...), so commits from either layout are measured. It
defines nothing asv would take for a benchmark at module level (the metrics class is
private; `scenario_benchmarks` makes the public one).

    python -m harness.frontends.asv_suite run-cases --results-dir DIR [--repeats N] [--scenarios PATH]
    python -m harness.frontends.asv_suite asv-machine [--machine NAME]   # torch/CUDA/GPU into asv's machine entry
    python -m harness.frontends.asv_suite env
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_REPEATS = 10
DEFAULT_THREADS = 1
DEFAULT_ROUNDS = 3


def prefer_path_checkout() -> str | None:
    """Make a checkout put first on PYTHONPATH the only source of `harness`/`reference_impl`.

    setuptools' editable install (`pip install -e .`) resolves a missing *submodule* of the
    PYTHONPATH checkout (say `harness.devices`, absent in an older commit) from the
    installed checkout instead, so an old commit would silently run new code. Where the
    first `harness` on sys.path is not the installed one, drop that finder. Returns the
    checkout directory in use.
    """
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("harness")
    if spec is None or spec.origin is None:
        return None
    checkout = str(Path(spec.origin).resolve().parent.parent)
    for finder in list(sys.meta_path):
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", "")), "MAPPING", None)
        if isinstance(mapping, dict) and "harness" in mapping:
            installed = str(Path(mapping["harness"]).resolve().parent)
            if installed != checkout:
                sys.meta_path.remove(finder)
                # Import both packages now: a module imported later (asv imports every file
                # in its benchmark directory) may put another checkout first on sys.path.
                for name in ("harness", "reference_impl"):
                    try:
                        __import__(name)
                    except Exception as exc:  # a broken commit: its cases report the error
                        print(f"samedevice benchmarks: cannot import {name} from {checkout}: {exc}", file=sys.stderr)
    return checkout


prefer_path_checkout()


def code_under_test() -> dict[str, str]:
    """Where `harness` and `reference_impl` were imported from; RuntimeError if they come
    from different checkouts (the numbers would belong to neither)."""
    import harness

    sources = {"harness": str(Path(harness.__file__).resolve().parent.parent)}
    origin = getattr(sys.modules.get("reference_impl"), "__file__", None)
    if origin:
        sources["reference_impl"] = str(Path(origin).resolve().parent.parent)
        if sources["reference_impl"] != sources["harness"]:
            raise RuntimeError(f"harness comes from {sources['harness']} but reference_impl from "
                               f"{sources['reference_impl']}: something put another checkout on sys.path")
    return sources


# --- settings -------------------------------------------------------------------------------


def _positive_int(name: str, given: int | None, default: int) -> int:
    raw = os.environ.get(name)
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise ValueError(f"${name} must be a whole number, but got {raw!r}") from None
    return max(1, given if given is not None else default)


@dataclass(frozen=True)
class Settings:
    """What the suite measures and how often (see the module docstring)."""

    scenarios: tuple[Path, ...] = ()  # empty: the scenarios beside the imported harness
    plugins: tuple[str, ...] = ()
    root: Path | None = None  # a repository's root: relative paths resolve against it
    repeats: int = DEFAULT_REPEATS
    rounds: int = DEFAULT_ROUNDS
    threads: int = DEFAULT_THREADS

    @classmethod
    def resolve(cls, scenarios: Iterable[str | os.PathLike[str]] = (), plugins: Iterable[str] = (),
                root: str | os.PathLike[str] | None = None, repeats: int | None = None,
                rounds: int | None = None, threads: int | None = None) -> Settings:
        """The given settings with the environment's overrides applied."""
        base = Path(root).resolve() if root is not None else None
        explicit = os.environ.get("SAMEDEVICE_BENCH_SCENARIOS")
        chosen = [Path(p) for p in explicit.split(os.pathsep) if p] if explicit else [Path(p) for p in scenarios]
        if base is not None:
            chosen = [p if p.is_absolute() else base / p for p in chosen]
        return cls(
            scenarios=tuple(chosen), plugins=tuple(plugins), root=base,
            repeats=_positive_int("SAMEDEVICE_BENCH_REPEATS", repeats, DEFAULT_REPEATS),
            rounds=_positive_int("SAMEDEVICE_BENCH_ROUNDS", rounds, DEFAULT_ROUNDS),
            threads=_positive_int("SAMEDEVICE_BENCH_THREADS", threads, DEFAULT_THREADS),
        )

    def scenario_paths(self) -> list[Path]:
        """The scenario paths to load: the configured ones, else the `scenarios/` beside
        the imported `harness` package (the suite of the code under test)."""
        if self.scenarios:
            return list(self.scenarios)
        import harness

        return [Path(harness.__file__).resolve().parent.parent / "scenarios"]

    def activate_plugins(self) -> None:
        """Make the configured plugin modules known to the engine registry: appended to
        $SAMEDEVICE_PLUGINS (the registry imports them, and a broken one fails its cases
        naming it), importable from the repository root."""
        if not self.plugins:
            return
        if self.root is not None and str(self.root) not in sys.path:
            sys.path.append(str(self.root))  # appended: an installed package of that name wins
        present = [m.strip() for m in os.environ.get("SAMEDEVICE_PLUGINS", "").split(",") if m.strip()]
        os.environ["SAMEDEVICE_PLUGINS"] = ",".join(dict.fromkeys([*present, *self.plugins]))


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else Settings.resolve()


# Module-level readers of the environment's settings (the defaults of the functions below).
def repeats() -> int:
    return Settings.resolve().repeats


def threads() -> int:
    return Settings.resolve().threads


def rounds() -> int:
    return Settings.resolve().rounds


# --- the cases ------------------------------------------------------------------------------


def benchmark_cases(settings: Settings | None = None, root: Path | None = None) -> list:
    """Every case of every scenario marked `benchmark: true` (invalid files are reported
    on stderr and left out: a broken scenario must not hide the others' numbers). `root`:
    one scenario path instead of the settings' ones."""
    expand = _harness_module("execute.cases", "cases").expand
    # the front ends' loading (the format plus the registry's engine names and model checks);
    # older checkouts' loaders asked the registry themselves
    load_paths = _harness_module("frontends.scenarios", "format.loader", "loader").load_paths

    settings = _settings(settings)
    settings.activate_plugins()  # `engines:` is checked against the registry
    loaded = load_paths([root] if root is not None else settings.scenario_paths())
    for error in loaded.errors:
        print(f"samedevice benchmarks: invalid scenario left out: {error}", file=sys.stderr)
    return [case for one in loaded.scenarios if one.scenario.benchmark for case in expand(one)]


def _harness_module(*paths: str) -> Any:
    """The first of `harness.<path>` that the checkout measured has: module paths moved into
    wings (harness/__init__.py MOVED), and this file also measures commits from before."""
    for path in paths:
        try:
            return importlib.import_module(f"harness.{path}")
        except ModuleNotFoundError as exc:
            if exc.name is None or not f"harness.{path}".startswith(exc.name):
                raise  # a module missing inside it, not the module itself
    raise ModuleNotFoundError(f"none of harness.{', harness.'.join(paths)} in the checkout measured")


def _device_order(text: str) -> tuple[int, str]:
    simulated = text.startswith("sim:")  # labels parsed by hand: older checkouts have no harness.format
    kind = text.removeprefix("sim:").split(":")[0]
    return (simulated * 3 + {"cpu": 0, "cuda": 1, "auto": 2}.get(kind, 2), text)


NO_CASES = "(no benchmark scenarios)"


def benchmark_params(cases: Iterable | None = None) -> tuple[list[str], list[str], list[str]]:
    """asv `params`: (scenarios, engines, devices) seen in the benchmark cases."""
    cases = list(benchmark_cases() if cases is None else cases)
    if not cases:  # asv needs at least one value per parameter; setup skips it
        return [NO_CASES], ["reference"], ["cpu"]
    scenarios = sorted({c.scenario.name for c in cases})
    engines = sorted({c.engine for c in cases})
    devices = sorted({c.target.label for c in cases}, key=_device_order)
    return scenarios, engines, devices


def case_key(scenario: str, engine: str, device: str) -> str:
    return f"{scenario}[{engine}-{device}]"  # the same as Case.id


def absent_combinations(cases: Iterable, params: Sequence[Sequence[str]]) -> list[tuple[str, str, str]]:
    """The (scenario, engine, device) of the params' cross product that no scenario asks
    for (a scenario of one engine, devices a scenario does not list): asv's `skip_params`,
    skipped without a setup and without a line in asv's log. (`setup` still reports them
    as NotImplementedError where an older asv_runner ignores the list.)"""
    present = {(c.scenario.name, c.engine, c.target.label) for c in cases}
    scenarios, engines, devices = params
    return [(s, e, d) for s in scenarios for e in engines for d in devices if (s, e, d) not in present]


# --- measuring ------------------------------------------------------------------------------


def _real_cuda(case) -> bool:
    import torch

    return not case.target.simulated and case.target.kind != "cpu" and torch.cuda.is_available()


def measure_runs(case, runs: int | None = None, torch_threads: int | None = None):
    """Run one case `runs` times (execute only: no checks, no oracle), pooled with the rule
    `samedevice compare` uses too (`harness.record.figures.CaseFigures`)."""
    import torch

    execute = _harness_module("execute.case", "runner").execute
    CaseFigures = _harness_module("record.figures", "figures").CaseFigures

    torch.set_num_threads(torch_threads or threads())
    cuda = _real_cuda(case)
    pooled = CaseFigures(case.id, case.scenario.name)
    for _ in range(runs or repeats()):
        if cuda:
            torch.cuda.synchronize()  # nothing from a previous run is still in flight
        run = execute(case)
        if cuda:
            torch.cuda.synchronize()  # for engines that return early
        error = run.error.one_line() if run.error is not None else ""
        pooled.add("error" if error else "passed", run.ledger, run.timings, run.peak_memory_bytes, error)
        if error:
            break
    return pooled


def measure_case(case, runs: int | None = None) -> dict[str, Any]:
    """One case's figures as asv reads them, or {"error": ...}."""
    return measure_runs(case, runs).to_bench(threads())


def measure_all(cases: Iterable | None = None, runs: int | None = None, passes: int | None = None,
                settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """{case id: figures | {"skipped": reason} | {"error": message}}: what asv's
    `setup_cache` returns and every `track_` reads. Every case runs `runs` times in each
    of `passes` passes over all cases, so a case's runs are spread over the whole
    measurement, not caught in one busy moment."""
    import harness
    skip_reason = _harness_module("execute.cases", "cases").skip_reason

    settings = _settings(settings)
    cases = list(benchmark_cases(settings) if cases is None else cases)
    passes = passes or settings.rounds
    runs = runs or settings.repeats
    paths = ", ".join(str(p) for p in settings.scenario_paths())
    print(f"samedevice benchmarks: measuring {Path(harness.__file__).parent.parent} "
          f"(scenarios {paths}, {passes} x {runs} runs per case)", file=sys.stderr)
    skipped: dict[str, dict[str, Any]] = {}
    pooled: dict[str, Any] = {}
    for case in cases:
        skip = skip_reason(case)
        if skip is not None:
            skipped[case.id] = {"skipped": skip[0]}
    for _ in range(passes):
        for case in cases:
            if case.id in skipped or (case.id in pooled and pooled[case.id].error):
                continue
            one = measure_runs(case, runs, settings.threads)
            pooled[case.id] = pooled[case.id].pooled(one) if case.id in pooled else one
    code_under_test()
    figures = skipped | {case_id: one.to_bench(settings.threads) for case_id, one in pooled.items()}
    for case_id, entry in figures.items():
        print(f"  {case_id}: {entry}", file=sys.stderr)
    return figures


def figures_for(figures: dict[str, dict[str, Any]], scenario: str, engine: str, device: str) -> dict[str, Any]:
    """One case's figures; NotImplementedError (asv: skipped) where the case cannot run
    here or does not exist, RuntimeError (asv: failed) where it ran and failed."""
    if scenario == NO_CASES:
        raise NotImplementedError("no scenario is marked `benchmark: true` in the configured paths")
    entry = figures.get(case_key(scenario, engine, device))
    if entry is None:
        raise NotImplementedError(f"scenario {scenario} has no case for engine {engine} on {device}")
    if "skipped" in entry:
        raise NotImplementedError(entry["skipped"])
    if "error" in entry:
        raise RuntimeError(f"{case_key(scenario, engine, device)} failed: {entry['error']}")
    return entry


# --- the asv class ---------------------------------------------------------------------------

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # imported outside asv (tests, `samedevice init asv`)
    class SkipNotImplemented(NotImplementedError):  # type: ignore[no-redef]
        pass


def _unit(unit: str, pretty: str):
    """asv's `unit` and the name its dashboard shows (`pretty_name`) on a `track_`."""
    def mark(method):
        method.unit, method.pretty_name = unit, pretty
        return method

    return mark


class _ScenarioMetrics:
    """The metrics of one (scenario, engine, device); `scenario_benchmarks` subclasses it
    with the params and settings (private here: asv must not collect it from this module)."""

    param_names = ["scenario", "engine", "device"]
    timeout = 3600  # setup_cache runs every case, `repeats` times each
    settings: Settings = Settings()

    def setup_cache(self):
        return measure_all(settings=type(self).settings)

    def setup(self, figures, scenario, engine, device):
        self.figures = figures_for(figures, scenario, engine, device)

    # --- throughput and latency (best of the repeats) ---

    @_unit("tokens/s", "decode tokens/s")
    def track_decode_tokens_per_s(self, figures, *params):
        return self.figures["decode_tokens_per_s"]

    @_unit("ms/token", "decode ms/token")
    def track_decode_ms_per_token(self, figures, *params):
        return self.figures["decode_ms_per_token"]

    @_unit("seconds", "prefill seconds")
    def track_prefill_s(self, figures, *params):
        return self.figures["prefill_s"]

    # --- transfers per generated token, per direction (deterministic) ---

    @_unit("copies/token", "H2D copies per token")
    def track_h2d_per_token(self, figures, *params):
        return self.figures["per_token"]["h2d"]

    @_unit("copies/token", "D2H copies per token")
    def track_d2h_per_token(self, figures, *params):
        return self.figures["per_token"]["d2h"]

    @_unit("copies/token", "D2D copies per token")
    def track_d2d_per_token(self, figures, *params):
        return self.figures["per_token"]["d2d"]

    @_unit("syncs/token", "host syncs per token")
    def track_syncs_per_token(self, figures, *params):
        return self.figures["per_token"]["sync"]

    # --- bytes per generated token, per direction ---

    @_unit("bytes/token", "H2D bytes per token")
    def track_h2d_bytes_per_token(self, figures, *params):
        return self.figures["bytes_per_token"]["h2d"]

    @_unit("bytes/token", "D2H bytes per token")
    def track_d2h_bytes_per_token(self, figures, *params):
        return self.figures["bytes_per_token"]["d2h"]

    @_unit("bytes/token", "D2D bytes per token")
    def track_d2d_bytes_per_token(self, figures, *params):
        return self.figures["bytes_per_token"]["d2d"]

    # --- memory ---

    @_unit("bytes", "peak CUDA memory")
    def track_peak_memory_bytes(self, figures, *params):
        """torch.cuda.max_memory_allocated over the case: real GPUs only (n/a elsewhere)."""
        peak = self.figures["peak_memory_bytes"]
        if peak is None:
            raise SkipNotImplemented("peak memory is measured on real CUDA devices only")
        return peak


def scenario_benchmarks(scenarios: Sequence[str | os.PathLike[str]] = (), plugins: Sequence[str] = (),
                        root: str | os.PathLike[str] | None = None, repeats: int | None = None,
                        rounds: int | None = None, threads: int | None = None, name: str = "Scenarios") -> type:
    """The asv class for the `benchmark: true` scenarios under `scenarios` (relative paths
    against `root`), with the engines `plugins` register; `repeats` runs per case in each
    of `rounds` passes with `threads` torch threads. Assign it to a module-level name in a
    benchmark module; asv names its benchmarks `<module>.<name>.track_*`."""
    settings = Settings.resolve(scenarios, plugins, root, repeats, rounds, threads)
    cases = benchmark_cases(settings)
    params = list(benchmark_params(cases))
    skip = absent_combinations(cases, params) if cases else []
    return type(name, (_ScenarioMetrics,), {"params": params, "skip_params": skip, "settings": settings,
                                            "__module__": __name__, "__doc__": _ScenarioMetrics.__doc__})


# --- machine metadata asv does not record ---------------------------------------------------


def environment_metadata() -> dict[str, str]:
    """torch / CUDA / GPU facts, as strings (asv machine params must be strings)."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = "absent"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "cudnn": str(cudnn) if cudnn else "none",
        "gpus": ", ".join(gpus) if gpus else "none",
        "transformers": transformers_version,
        "torch_threads": str(threads()),
    }


def record_asv_machine(machine: str | None = None, path: Path | None = None) -> dict[str, Any]:
    """Merge `environment_metadata()` into asv's machine entry (~/.asv-machine.json, which
    `asv machine --yes` wrote). asv copies every key of that entry into the `params` of
    each result file it writes, so every asv run records the torch/CUDA/GPU it ran on,
    and the published dashboard offers them as filters beside os, cpu and ram."""
    path = path or Path.home() / ".asv-machine.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"version": 1}
    name = machine or platform.uname().node
    entry = data.get(name)
    if not isinstance(entry, dict):
        raise SystemExit(f"no asv machine {name!r} in {path}: run `asv machine --yes` first")
    entry.update(environment_metadata())
    path.write_text(json.dumps(data, indent=4, sort_keys=True))
    return entry


# --- harness result directories for `samedevice compare` -------------------------------------


def run_cases(results_dir: Path, runs: int, root: Path | None = None, label: str = "") -> int:
    """Append `runs` results per benchmark case to `results_dir/cases.jsonl` (created if
    absent; further calls append, so interleaved rounds pool in one directory).

    Uses `run_case` with no oracle: the case's own checks apply, parity does not.
    """
    import torch

    one_case, lifecycle = _harness_module("execute.case", "runner"), _harness_module("record.lifecycle", "run")
    RunOptions, run_case = one_case.RunOptions, one_case.run_case
    Run, RunSettings = lifecycle.Run, lifecycle.RunSettings

    settings = Settings.resolve()
    torch.set_num_threads(settings.threads)
    cases = benchmark_cases(settings, root)
    if (results_dir / "run.json").exists():  # a later round pools into the same run
        run = Run.open(results_dir, RunSettings(results_root=results_dir.parent, front_end="bench"))
    else:
        if results_dir.is_dir() and not any(results_dir.iterdir()):
            results_dir.rmdir()  # made empty by the caller: the run makes it itself
        run = Run.start(RunSettings(results_root=results_dir.parent, front_end="bench"), run_id=results_dir.name,
                        label=label, benchmark=True, rounds=0, bench=environment_metadata())
    for case in cases:
        for index in range(runs):
            result = run_case(case, RunOptions(), None)
            run.record(result)
            if result.status == "skipped":
                break
            if index == 0:
                tps = result.timings.get("decode_tokens_per_s")
                print(f"  {result.status:7} {case.id} {tps or '-'} tokens/s", file=sys.stderr)
    extra = run.info.model_extra or {}
    extra["code"] = code_under_test()
    extra["rounds"] = int(extra.get("rounds", 0)) + 1
    run.info.cases_selected = len(cases)
    run.close()
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.frontends.asv_suite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run-cases", help="run the benchmark cases into a harness result directory")
    run.add_argument("--results-dir", type=Path, required=True)
    run.add_argument("--repeats", type=int, default=None, help=f"runs per case (default {DEFAULT_REPEATS})")
    run.add_argument("--scenarios", type=Path, default=None, help="scenario directory (default: beside harness)")
    run.add_argument("--label", default="")
    machine = sub.add_parser("asv-machine", help="record torch/CUDA/GPU in asv's machine entry")
    machine.add_argument("--machine", default=None, help="asv machine name (default: host name)")
    sub.add_parser("env", help="print the environment metadata as JSON")
    args = parser.parse_args(argv)
    if args.command == "run-cases":
        return run_cases(args.results_dir, args.repeats or repeats(), args.scenarios, args.label)
    if args.command == "asv-machine":
        print(json.dumps(record_asv_machine(args.machine), indent=2))
        return 0
    print(json.dumps(environment_metadata() | {"host": socket.gethostname()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
