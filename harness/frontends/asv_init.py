"""`samedevice init asv`: put samedevice's asv suite into a repository.

Writes `asv.conf.json` (asv over the environment it runs in, results and the dashboard
under `.asv/`, which ignores itself for git) and `benchmarks/bench_samedevice.py`, a few lines that build the suite (`harness.frontends.asv_suite`)
from the repository's scenarios and engine plugins. Existing files are left alone unless
`force` is given. This repository's own `benchmarks/bench_scenarios.py` is the same module
(`benchmark_module()` with no scenarios or plugins).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARK_DIR = "benchmarks"
BENCHMARK_MODULE = "bench_samedevice.py"

_MODULE_DOC = '''\
"""asv benchmarks of samedevice scenarios (the module `samedevice init asv` writes).

Every scenario marked `benchmark: true` becomes asv benchmarks over (scenario, engine,
device): decode tokens/s and ms/token, prefill time, copies, bytes and syncs per generated
token, peak CUDA memory. The suite is samedevice's (`harness.frontends.asv_suite`); what to measure is
the arguments below. $SAMEDEVICE_BENCH_SCENARIOS, $SAMEDEVICE_PLUGINS and
$SAMEDEVICE_BENCH_REPEATS / _ROUNDS / _THREADS override them for one run.
"""
'''


def benchmark_module(scenarios: list[str] | tuple[str, ...] = (), plugins: list[str] | tuple[str, ...] = (),
                     suite: str = "harness.frontends.asv_suite") -> str:
    """The text of a benchmark module building the suite. Without scenarios the suite
    measures the `scenarios/` beside the imported `harness` (this repository's case)."""
    lines = [_MODULE_DOC]
    if scenarios or plugins:
        lines.append("import pathlib\n")
    lines.append(f"from {suite} import scenario_benchmarks\n")
    if not (scenarios or plugins):
        lines.append("Scenarios = scenario_benchmarks()  # the scenarios/ beside the imported harness package")
    else:
        lines.append("Scenarios = scenario_benchmarks(")
        lines.append("    root=pathlib.Path(__file__).resolve().parents[1],  # the paths below are relative to it")
        if scenarios:
            lines.append(f"    scenarios={json.dumps(list(scenarios))},  # where the `benchmark: true` scenarios are")
        if plugins:
            lines.append(f"    plugins={json.dumps(list(plugins))},  # modules that register engines (as $SAMEDEVICE_PLUGINS)")
        lines.append(")")
    return "\n".join(lines) + "\n"


def asv_config(project: str, branch: str) -> str:
    """asv.conf.json for a repository: asv measures the Python it runs in (the project and
    samedevice installed there), results and the dashboard under .asv/."""
    conf = {
        "version": 1,
        "project": project,
        "repo": ".",
        "branches": [branch],
        "dvcs": "git",
        "environment_type": "existing",
        "pythons": ["same"],
        "benchmark_dir": BENCHMARK_DIR,
        "results_dir": ".asv/results",
        "html_dir": ".asv/html",
        "launch_method": "forkserver",
        "default_benchmark_timeout": 600,
        "regressions_thresholds": {".*": 0.1},
    }
    comments = [
        "// asv configuration written by `samedevice init asv` (asv reads // comments).",
        "// asv never builds or installs the project: it benchmarks the Python that runs asv,",
        "// where the project and samedevice[bench] are installed, and tags the results with the",
        "// commit given: asv machine --yes; asv run --set-commit-hash HEAD; asv publish.",
        "// forkserver: torch is imported once and each benchmark forks from there.",
    ]
    return "\n".join(comments) + "\n" + json.dumps(conf, indent=4) + "\n"


@dataclass
class InitResult:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # present and not ours to replace (benchmarks/__init__.py)
    refused: list[Path] = field(default_factory=list)  # present; --force replaces them
    notes: list[str] = field(default_factory=list)  # what the user should know (warnings)
    summary: list[str] = field(default_factory=list)  # what the suite will measure

    @property
    def ok(self) -> bool:
        return not self.refused


def _relative(path: Path, root: Path) -> str:
    """`path` as the benchmark module names it: relative to the repository where inside."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root).as_posix() or "."
    except ValueError:
        return str(resolved)


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _survey(scenarios: list[Path], plugins: list[str], root: Path) -> tuple[list[str], list[str]]:
    """(summary, notes): the benchmark cases the suite would measure, and any problem."""
    from harness.frontends.asv_suite import Settings, benchmark_cases, benchmark_params

    notes: list[str] = []
    for module in plugins:
        sys.path.append(str(root))
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.remove(str(root))
        if not found:
            notes.append(f"plugin module {module!r} is not importable from {root} or the environment: "
                         "its engines' cases will fail naming it")
    saved = os.environ.get("SAMEDEVICE_PLUGINS")
    try:
        settings = Settings(scenarios=tuple(scenarios), plugins=tuple(plugins), root=root)
        cases = benchmark_cases(settings)
    finally:  # the survey must not leave the plugins in this process's environment
        if saved is None:
            os.environ.pop("SAMEDEVICE_PLUGINS", None)
        else:
            os.environ["SAMEDEVICE_PLUGINS"] = saved
    from harness.engines import broken_plugins

    for module, why in sorted(broken_plugins().items()):
        if module in plugins:
            notes.append(f"plugin module {module!r} failed to import: {why}")
    if not cases:
        notes.append("no scenario under " + ", ".join(str(s) for s in scenarios) + " is marked `benchmark: true`: "
                     "asv will list one skipped placeholder until one is")
        return [], notes
    names, engines, devices = benchmark_params(cases)
    return [f"{len(cases)} benchmark cases: scenarios {', '.join(names)}; engines {', '.join(engines)}; "
            f"devices {', '.join(devices)}"], notes


def init_asv(directory: Path, scenarios: list[Path], plugins: list[str], force: bool = False) -> InitResult:
    """Write asv.conf.json and benchmarks/bench_samedevice.py into `directory` (see module
    docstring). Scenario paths are as given on the command line (relative to the working
    directory); the module names them relative to `directory` where they lie inside it."""
    root = directory.resolve()
    result = InitResult()
    if not scenarios:
        default = root / "scenarios"
        if not default.is_dir():
            raise FileNotFoundError(f"no scenarios/ in {root}: name the scenario files or directories with --scenarios PATH")
        scenarios = [default]
    missing = [s for s in scenarios if not s.exists()]
    if missing:
        raise FileNotFoundError(f"no such scenario file or directory: {missing[0]}")
    config_path = root / "asv.conf.json"
    module_path = root / BENCHMARK_DIR / BENCHMARK_MODULE
    package_init = root / BENCHMARK_DIR / "__init__.py"
    result.refused = [p for p in (config_path, module_path) if p.exists() and not force]
    if result.refused:
        return result
    result.summary, result.notes = _survey(scenarios, plugins, root)
    if _git(root, "rev-parse", "--is-inside-work-tree") != "true":
        result.notes.append(f"{root} is not a git work tree: asv tags results with a commit (asv run --set-commit-hash)")
    branch = _git(root, "symbolic-ref", "--short", "HEAD") or "main"
    config_path.write_text(asv_config(root.name, branch))
    module_path.parent.mkdir(parents=True, exist_ok=True)
    module_path.write_text(benchmark_module([_relative(s, root) for s in scenarios], plugins))
    result.written += [config_path, module_path]
    ignore = root / ".asv" / ".gitignore"  # results and the dashboard are not sources
    if not ignore.exists():
        ignore.parent.mkdir(exist_ok=True)
        ignore.write_text("# written by `samedevice init asv`: asv's results and published dashboard\n*\n")
        result.written.append(ignore)
    if package_init.exists():
        result.kept.append(package_init)
    else:  # asv imports the benchmark directory as a package
        package_init.write_text('"""asv benchmarks (asv.conf.json: benchmark_dir)."""\n')
        result.written.append(package_init)
    return result
