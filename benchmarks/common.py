"""Shared fixtures of the benchmarks: which cases, how one is measured, what the machine is.

Imported by the asv modules (`bench_scenarios.py`) and run as a script by
`benchmarks/compare_refs.py` (the `bench_compare` nox session), so it imports nothing from
`benchmarks` and only stable names from `harness`: `load_paths`, `expand`, `skip_reason`,
`execute`, `run_case`, `RunDirectory`. The code measured is whatever `harness` imports
from: the installed checkout, or another commit's worktree put first on `PYTHONPATH`.

Measuring (the same for asv and for `samedevice compare` runs):
- Each case runs `repeats` times (``$SAMEDEVICE_BENCH_REPEATS``, default 10) in each of
  ``$SAMEDEVICE_BENCH_ROUNDS`` passes (default 3) over all cases; throughput is the best
  run (most tokens/s), prefill latency the fastest. The best of several runs
  is what survives a noisy shared machine; transfer counts are deterministic and must
  agree across runs (a disagreement is reported, and the largest count kept).
- torch runs with one intra-op thread (``$SAMEDEVICE_BENCH_THREADS``, default 1): on two
  shared cores, OpenMP workers spin-waiting on a busy neighbour turned a 10 ms decode
  into 370 ms (62 tokens/s against 2,400 with one thread), which is noise, not the engine.
- Timings are the harness's `perf_counter` phase clock (`harness.phases.PhaseTracker`).
  On a real GPU that clock is only correct where the engine synchronises at the phase
  boundaries; the reference implementation does: prefill ends, and every decode step
  ends, with the blocking `token.cpu()` read-back, so no GPU work is still queued when the
  clock reads. `measure_case` adds `torch.cuda.synchronize()` before each run (nothing
  from a previous run is still in flight) and after it (for engines that return early).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_REPEATS = 10
DEFAULT_THREADS = 1
DEFAULT_ROUNDS = 3
_HERE = Path(__file__).resolve().parent


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
                # in benchmarks/) may put another checkout first on sys.path.
                for name in ("harness", "reference_impl"):
                    try:
                        __import__(name)
                    except Exception as exc:  # a broken commit: its cases report the error
                        print(f"samedevice benchmarks: cannot import {name} from {checkout}: {exc}", file=sys.stderr)
    return checkout


def code_under_test() -> dict[str, str]:
    """Where `harness` and `reference_impl` were imported from; RuntimeError if they come
    from different checkouts (the numbers would belong to neither)."""
    import harness

    sources = {"harness": str(Path(harness.__file__).resolve().parent.parent)}
    module = sys.modules.get("reference_impl")
    if module is not None and getattr(module, "__file__", None):
        sources["reference_impl"] = str(Path(module.__file__).resolve().parent.parent)
        if sources["reference_impl"] != sources["harness"]:
            raise RuntimeError(f"harness comes from {sources['harness']} but reference_impl from "
                               f"{sources['reference_impl']}: something put another checkout on sys.path")
    return sources


prefer_path_checkout()


def repeats() -> int:
    return max(1, int(os.environ.get("SAMEDEVICE_BENCH_REPEATS", DEFAULT_REPEATS)))


def threads() -> int:
    return max(1, int(os.environ.get("SAMEDEVICE_BENCH_THREADS", DEFAULT_THREADS)))


def scenario_root() -> Path:
    """The scenarios of the code under test: ``$SAMEDEVICE_BENCH_SCENARIOS``, else the
    `scenarios/` beside the imported `harness` package, else this checkout's."""
    explicit = os.environ.get("SAMEDEVICE_BENCH_SCENARIOS")
    if explicit:
        return Path(explicit)
    import harness

    beside = Path(harness.__file__).resolve().parent.parent / "scenarios"
    return beside if beside.is_dir() else _HERE.parent / "scenarios"


def benchmark_cases(root: Path | None = None) -> list:
    """Every case of every scenario marked `benchmark: true` (invalid files are reported
    on stderr and left out: a broken scenario must not hide the others' numbers)."""
    from harness.cases import expand
    from harness.loader import load_paths

    loaded = load_paths([root or scenario_root()])
    for error in loaded.errors:
        print(f"samedevice benchmarks: invalid scenario left out: {error}", file=sys.stderr)
    return [case for one in loaded.scenarios if one.scenario.benchmark for case in expand(one)]


def _device_order(label: str) -> tuple[int, str]:
    simulated = label.startswith("sim:")
    kind = label.removeprefix("sim:").split(":")[0]
    return (simulated * 3 + {"cpu": 0, "cuda": 1, "auto": 2}.get(kind, 2), label)


def benchmark_params(cases: Iterable | None = None) -> tuple[list[str], list[str], list[str]]:
    """asv `params`: (scenarios, engines, devices) seen in the benchmark cases."""
    cases = list(benchmark_cases() if cases is None else cases)
    scenarios = sorted({c.scenario.name for c in cases})
    engines = sorted({c.engine for c in cases})
    devices = sorted({c.target.label for c in cases}, key=_device_order)
    if not cases:  # asv needs at least one value per parameter; setup skips it
        return ["(no benchmark scenarios)"], ["reference"], ["cpu"]
    return scenarios, engines, devices


def case_key(scenario: str, engine: str, device: str) -> str:
    return f"{scenario}[{engine}-{device}]"  # the same as Case.id


def _real_cuda(case) -> bool:
    import torch

    return not case.target.simulated and case.target.kind != "cpu" and torch.cuda.is_available()


def measure_runs(case, runs: int | None = None):
    """Run one case `runs` times (execute only: no checks, no oracle), pooled with the rule
    `samedevice compare` uses too (`harness.figures.CaseFigures`)."""
    import torch

    from harness.figures import CaseFigures
    from harness.runner import execute

    torch.set_num_threads(threads())
    cuda = _real_cuda(case)
    pooled = CaseFigures(case.id, case.scenario.name)
    for _ in range(runs or repeats()):
        if cuda:
            torch.cuda.synchronize()
        run = execute(case)
        if cuda:
            torch.cuda.synchronize()
        error = run.error.one_line() if run.error is not None else ""
        pooled.add("error" if error else "passed", run.ledger, run.timings, run.peak_memory_bytes, error)
        if error:
            break
    return pooled


def measure_case(case, runs: int | None = None) -> dict[str, Any]:
    """One case's figures as asv reads them (see module docstring), or {"error": ...}."""
    return measure_runs(case, runs).to_bench(threads())


def rounds() -> int:
    return max(1, int(os.environ.get("SAMEDEVICE_BENCH_ROUNDS", DEFAULT_ROUNDS)))


def measure_all(cases: Iterable | None = None, runs: int | None = None, passes: int | None = None) -> dict[str, dict[str, Any]]:
    """{case id: figures | {"skipped": reason} | {"error": message}}: what asv's
    `setup_cache` returns and every `track_` reads. Every case runs `runs` times in each
    of `passes` passes over all cases ($SAMEDEVICE_BENCH_ROUNDS, default 3), so a
    case's runs are spread over the whole measurement, not caught in one busy moment."""
    import harness
    from harness.cases import skip_reason

    cases = list(benchmark_cases() if cases is None else cases)
    passes = passes or rounds()
    print(f"samedevice benchmarks: measuring {Path(harness.__file__).parent.parent} "
          f"(scenarios {scenario_root()}, {passes} x {runs or repeats()} runs per case)", file=sys.stderr)
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
            one = measure_runs(case, runs)
            pooled[case.id] = pooled[case.id].pooled(one) if case.id in pooled else one
    code_under_test()
    figures = skipped | {case_id: one.to_bench(threads()) for case_id, one in pooled.items()}
    for case_id, entry in figures.items():
        print(f"  {case_id}: {entry}", file=sys.stderr)
    return figures


def figures_for(figures: dict[str, dict[str, Any]], scenario: str, engine: str, device: str) -> dict[str, Any]:
    """One case's figures; NotImplementedError (asv: skipped) where the case cannot run
    here or does not exist, RuntimeError (asv: failed) where it ran and failed."""
    entry = figures.get(case_key(scenario, engine, device))
    if entry is None:
        raise NotImplementedError(f"scenario {scenario} has no case for engine {engine} on {device}")
    if "skipped" in entry:
        raise NotImplementedError(entry["skipped"])
    if "error" in entry:
        raise RuntimeError(f"{case_key(scenario, engine, device)} failed: {entry['error']}")
    return entry


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
    data = json.loads(path.read_text()) if path.exists() else {"version": 1}
    name = machine or platform.uname().node
    entry = data.get(name)
    if entry is None:
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

    from harness.results import RunDirectory, environment_info
    from harness.runner import RunOptions, run_case

    torch.set_num_threads(threads())
    results_dir.mkdir(parents=True, exist_ok=True)
    directory = RunDirectory(results_dir)
    cases = benchmark_cases(root)
    info = directory.read_run_info() or environment_info() | {
        "run_id": results_dir.name, "label": label, "benchmark": True, "rounds": 0,
        "started": time.time(), "bench": environment_metadata(),
    }
    for case in cases:
        for index in range(runs):
            result = run_case(case, RunOptions(), None)
            directory.append(result)
            if result.status == "skipped":
                break
            if index == 0:
                tps = result.timings.get("decode_tokens_per_s")
                print(f"  {result.status:7} {case.id} {tps or '-'} tokens/s", file=sys.stderr)
    info["code"] = code_under_test()
    info["rounds"] = info.get("rounds", 0) + 1
    info["finished"] = time.time()
    info["cases_selected"] = len(cases)
    directory.write_run_info(info)
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/common.py", description=__doc__.splitlines()[0])
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
