"""pytest plugin (entry point `pytest11`): scenario files become test items.

Only files under the configured scenario paths (ini `samedevice_paths`, default
`scenarios/`) and YAML files named on the command line are collected, so installing
samedevice never makes pytest collect unrelated YAML. Each case is an item `file.yaml::name[engine-device]` with a marker per
device kind (cpu, gpu, multigpu, sim). Results stream to results/<run-id>/cases.jsonl;
under xdist the controller creates the run directory and every worker appends to it.

`--sim-gpus N` runs the session's own tests on N simulated GPUs (harness.frontends.pytest_sim_gpus).

Loading this plugin imports nothing POSIX-only (it loads in every pytest of an environment
with samedevice installed, Windows included); options are checked at configure time
(pytest.UsageError), before any case runs. The plugin's state is one `PluginState` in
`config.stash`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.frontends import pytest_sim_gpus
from harness.frontends.arguments import (
    build_timeout,
    device_filter_problems,
    engine_filter_problems,
    results_root_problem,
    timeout_seconds,
)
from harness.record.lifecycle import DEFAULT_TIMEOUT, Run, RunSettings, results_root_default
from harness.record.render import terminal
from harness.record.results import CaseResult, ResultsWriteError

MARKERS = {
    "cpu": "samedevice case on the CPU",
    "gpu": "samedevice case on one real GPU",
    "multigpu": "samedevice case across several real GPUs (auto placement)",
    "sim": "samedevice case on simulated GPUs",
    "samedevice": "a samedevice scenario case; on your own test, samedevice(devices=[cpu, cuda:0, auto], gpus=2) "
                  "runs it once per device, on real GPUs where present and simulated ones otherwise",
}
_RUN_DIR_KEY = "samedevice_run_dir"


@dataclass
class PluginState:
    """Everything the plugin keeps for one pytest session (each xdist worker has its own)."""

    run: Run | None = None  # results/<run-id>/, started on first need
    names: dict[str, Any] = field(default_factory=dict)  # scenario name -> where first defined
    has_cases: bool = False  # a scenario case was collected
    collected: list[str] | None = None  # under xdist: the first worker's collected node ids
    plugins_reported: set[str] = field(default_factory=set)  # broken engine plugins already reported
    summary: str | None = None  # the closing line
    execute: Any = None  # the case executor (a worker process, or in-process)
    sim: pytest_sim_gpus.SimSession | None = None  # --sim-gpus


_STATE = pytest.StashKey[PluginState]()
_SIMULATION = pytest.StashKey[Any]()  # on an item: the simulation of its samedevice_target


def _state(config: pytest.Config) -> PluginState:
    state = config.stash.get(_STATE, None)
    if state is None:
        state = config.stash[_STATE] = PluginState()
    return state


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("samedevice", "samedevice scenarios")
    group.addoption("--samedevice-results", metavar="DIR", default=None,
                    help="results root for scenario runs (default: results/ or $SAMEDEVICE_RESULTS)")
    group.addoption("--samedevice-no-results", action="store_true", default=False,
                    help="do not write results/<run-id>/ (default: write them)")
    group.addoption("--samedevice-device", action="append", default=[], metavar="DEVICE",
                    help="only these devices (cpu, cuda:N, auto, sim:..., sim, gpu, all; default: all)")
    group.addoption("--samedevice-engine", action="append", default=[], metavar="ENGINE",
                    help="only these engines (default: every engine a scenario names)")
    group.addoption("--samedevice-isolation", choices=("process", "none"), default="process",
                    help="process: cases run in a worker process, so a crash or hang fails only that case "
                         "(default: process)")
    group.addoption("--samedevice-timeout", type=timeout_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                    help="seconds per case where the scenario sets none, counted from the case's own start "
                         f"(default: {DEFAULT_TIMEOUT:g})")
    group.addoption("--strict-devices", action="store_true", default=False,
                    help="a case whose device is absent fails instead of skipping (default: skip)")
    group.addoption("--sim-gpus", type=pytest_sim_gpus.gpu_count_option, default=None, metavar="N",
                    help="run the tests on N simulated CUDA GPUs, from conftest loading on (0: off; "
                         f"default: ${pytest_sim_gpus.ENV}, else ini {pytest_sim_gpus.INI})")
    parser.addini("samedevice_paths", type="paths", default=[],
                  help="directories whose .yaml/.yml files are scenarios (default: scenarios)")
    parser.addini(pytest_sim_gpus.INI, type="string", default="",
                  help="simulated CUDA GPUs for the tests, as --sim-gpus (default: none)")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """--sim-gpus: simulated GPUs from before the first conftest loads until pytest ends."""
    count = pytest_sim_gpus.requested(early_config, getattr(early_config.known_args_namespace, "sim_gpus", None))
    if count:
        sim = pytest_sim_gpus.SimSession(count)
        _state(early_config).sim = sim
        early_config.add_cleanup(sim.close)


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    _check_options(config)
    state = _state(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        path = workerinput.get(_RUN_DIR_KEY)
        state.run = Run.open(Path(path), _settings(config)) if path else None
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "samedevice-xdist")
    if state.sim is not None and workerinput is None:
        config.pluginmanager.register(_SimTally(state.sim), "samedevice-sim-tally")


def _check_options(config: pytest.Config) -> None:
    """A device or engine filter naming nothing known is a usage error (a typo must not
    make a green job); so is an unusable $SAMEDEVICE_BUILD_TIMEOUT."""
    problems = device_filter_problems(config.getoption("samedevice_device"))
    problems += engine_filter_problems(config.getoption("samedevice_engine"))
    try:
        build_timeout()
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise pytest.UsageError("samedevice: " + terminal("; ".join(problems)))


class _XdistHooks:
    @pytest.hookimpl
    def pytest_configure_node(self, node) -> None:
        run = _ensure_run(node.config)
        node.workerinput[_RUN_DIR_KEY] = str(run.path) if run else ""

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        """Every worker collects the same items: the first list is the run's expected cases."""
        state = _state(node.config)
        if state.collected is None:
            state.collected = ids


def _settings(config: pytest.Config) -> RunSettings:
    root = Path(config.getoption("samedevice_results") or results_root_default())
    if not root.is_absolute():
        # Beside the project's rootdir (where its ini file is), wherever in the project pytest
        # runs. Without an ini file pytest's rootdir is only the arguments' common ancestor (a
        # scenario outside the project puts it above the project): then where `samedevice run`
        # writes, the current directory.
        base = config.rootpath if config.inipath is not None else config.invocation_params.dir
        root = Path(base) / root
    return RunSettings(results_root=root, timeout=config.getoption("samedevice_timeout"),
                       isolation=config.getoption("samedevice_isolation"),
                       strict_devices=config.getoption("strict_devices"), front_end="pytest")


def _ensure_run(config: pytest.Config) -> Run | None:
    """The run, started on first need by the controller (a worker opens the controller's)."""
    state = _state(config)
    if state.run is not None or getattr(config, "workerinput", None) is not None:
        return state.run
    if config.getoption("samedevice_no_results"):
        return None
    if not state.has_cases and not config.pluginmanager.hasplugin("xdist"):
        return None
    settings = _settings(config)
    try:
        run = Run.start(settings)
    except (OSError, ResultsWriteError) as exc:
        raise pytest.UsageError(f"samedevice: {terminal(results_root_problem(Path(settings.results_root), exc))}") from None
    state.run = run
    return run


def pytest_collection_finish(session: pytest.Session) -> None:
    """Without xdist workers: the selected scenario cases are the run's expected ones (with
    workers the controller collects nothing: their collection reports them instead)."""
    config = session.config
    if getattr(config, "workerinput", None) is not None:
        return
    cases = [item.case.id for item in session.items if isinstance(item, ScenarioItem)]
    invalid = [item.error for item in session.items if isinstance(item, InvalidScenario)]
    if cases or invalid:
        _state(config).has_cases = True
        run = _ensure_run(config)
        if run is not None:
            run.expect(cases, invalid)


def _scenario_roots(config: pytest.Config) -> list[Path]:
    paths = config.getini("samedevice_paths") or [Path(config.rootpath) / "scenarios"]
    return [Path(p).resolve() for p in paths]


def _named_files(config: pytest.Config) -> set[Path]:
    """YAML files named on the command line (`pytest my/scenario.yaml`): scenarios wherever
    they are. A named directory is not enough: `pytest .` must not collect every YAML."""
    named = (Path(config.invocation_params.dir, arg.split("::")[0]) for arg in config.args)
    return {path.resolve() for path in named if path.suffix in (".yaml", ".yml")}


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    resolved = file_path.resolve()
    if not (any(resolved.is_relative_to(root) for root in _scenario_roots(parent.config))
            or resolved in _named_files(parent.config)):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


class ScenarioFile(pytest.File):
    def collect(self):
        from harness.execute.cases import expand, selected
        from harness.format.loader import duplicate_name
        from harness.frontends.scenarios import load_file

        loaded = load_file(self.path)
        yield from self._broken_plugins()
        for error in loaded.errors:
            yield InvalidScenario.from_parent(self, name=f"invalid[{error.line}:{error.column}]", error=str(error))
        devices = self.config.getoption("samedevice_device")
        engines = self.config.getoption("samedevice_engine")
        for scenario in loaded.scenarios:
            duplicate = duplicate_name(scenario, _state(self.config).names)
            if duplicate is not None:  # as the CLI does: the second definition is an invalid item
                yield InvalidScenario.from_parent(self, name=f"duplicate[{scenario.scenario.name}]", error=str(duplicate))
                continue
            for case in expand(scenario):
                if not selected(case, engines, devices):
                    continue
                _state(self.config).has_cases = True
                item = ScenarioItem.from_parent(self, name=case.id, case=case)
                item.add_marker(case.target.marker)
                item.add_marker("samedevice")
                yield item

    def _broken_plugins(self):
        """A plugin that failed to import fails the session as one item, in the first
        scenario file collected (every xdist worker collects files in the same order)."""
        from harness.engines import broken_plugins

        reported = _state(self.config).plugins_reported
        for module, why in sorted(broken_plugins().items()):
            if module not in reported:
                reported.add(module)
                yield InvalidScenario.from_parent(self, name=f"plugin[{module}]",
                                                  error=f"plugin {module} failed to load: {why}")


class CaseFailed(Exception):
    def __init__(self, result: CaseResult) -> None:
        super().__init__(result.summary_line())
        self.result = result


class ScenarioItem(pytest.Item):
    def __init__(self, *, case, **kwargs) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        from harness.execute.case import RunOptions

        if _state(self.config).sim is not None:
            pytest.skip("scenario cases run without --sim-gpus (they simulate GPUs themselves: sim: devices)")
        options = RunOptions(strict_devices=self.config.getoption("strict_devices"))
        result = _executor(self.session)(self.case, options)
        run = _ensure_run(self.config)
        if run is not None:
            try:
                run.record(result)
            except ResultsWriteError as exc:  # a full disk: this case's verdict is lost, stop the session
                self.session.shouldstop = f"samedevice: {terminal(exc)}"
                pytest.fail(f"{terminal(self.case.id)} {result.status}, but its result could not be recorded: "
                            f"{terminal(exc)}", pytrace=False)
        self.user_properties.append(("samedevice_status", result.status))
        if result.status == "skipped":
            # Reported at the scenario's file:line (reportinfo), not at this line.
            raise pytest.skip.Exception(result.reason, _use_item_location=True)
        if result.status in ("failed", "error"):
            raise CaseFailed(result)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CaseFailed):
            r = excinfo.value.result
            lines = [f"{terminal(r.id)} {r.status} ({terminal(r.file)}:{r.line})"]
            lines += [f"  {terminal(f.check)}: {terminal(f.message, indent='    ')}" for f in r.failures]
            if r.status == "error" and r.error is not None:
                lines.append(f"  error: {terminal(r.error.one_line(), indent='    ')}")
                if r.error.traceback:
                    lines.append(terminal(r.error.traceback.rstrip(), indent="    "))
            lines += [f"  note: {terminal(n)}" for n in r.notes]
            return "\n".join(lines)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, self.case.loaded.line - 1, self.case.id


def _executor(session: pytest.Session):
    """One per session (per xdist worker): a case worker process, or in-process."""
    state = _state(session.config)
    if state.execute is None:
        from harness.execute.worker import make_executor

        config = session.config
        state.execute = make_executor(config.getoption("samedevice_isolation"), config.getoption("samedevice_timeout"))
    return state.execute


class InvalidScenario(pytest.Item):
    """A scenario file problem, reported as one failing item with one line."""

    def __init__(self, *, error: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise ValueError(self.error)

    def repr_failure(self, excinfo, style=None):
        return f"invalid scenario: {terminal(self.error)}"

    def reportinfo(self):
        return self.path, None, f"invalid scenario {self.path.name}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = _state(config)
    getattr(state.execute, "stop", lambda: None)()
    if getattr(config, "workerinput", None) is not None:
        return
    run = state.run
    if run is None:
        return
    from harness.record import report
    from harness.record.results import DamagedResults

    collected = state.collected
    if collected is not None:  # under xdist: a case's item is `file.yaml::<case id>`
        cases = [nodeid.split("::", 1)[1] for nodeid in collected
                 if ".yaml::" in nodeid or ".yml::" in nodeid]
        if not cases and _remove_unused_run(run.path):
            return  # a pytest -n of no scenario: it leaves no results directory behind
        run.info.expected_ids = run.info.selected_ids = [c for c in cases if not c.startswith(("invalid[", "duplicate[", "plugin["))]
    try:
        read = run.directory.load_cases()
        problems = run.close(read.results, exitstatus=int(exitstatus), damaged=read.damaged)
    except (OSError, DamagedResults) as exc:  # never a traceback at the end of a session
        state.summary = f"samedevice: error: {terminal(exc)}"
        return
    damaged = f"; {len(read.damaged)} damaged result line(s)" if read.damaged else ""
    unwritten = f"; {'; '.join(problems)}" if problems else ""
    state.summary = (
        f"samedevice: {report.counts_line(read.results)}{damaged}{unwritten}; results in "
        f"{terminal(os.path.relpath(run.path))}")


def _remove_unused_run(path: Path) -> bool:
    """Remove a run directory the xdist controller made before it knew there would be no
    scenario case (workers need its path when they start), and its results root if that is
    left empty. False if a case was recorded after all."""
    cases = path / "cases.jsonl"
    if cases.exists() and cases.stat().st_size:
        return False
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only if empty
    return True


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = _state(config)
    if state.sim is not None:
        for line in state.sim.summary():
            terminalreporter.write_line(line)
    if state.summary:
        terminalreporter.write_line(state.summary)


# --- --sim-gpus: honest outcomes per test (harness.frontends.pytest_sim_gpus) -----------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    sim = _state(item.config).sim
    if sim is not None:
        sim.begin(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    sim = _state(item.config).sim
    if sim is not None and not isinstance(item, ScenarioItem):
        sim.judge(item, call, report)
    return report


class _SimTally:
    """Counts every test's final report where the summary is printed (the xdist controller
    receives its workers' reports)."""

    def __init__(self, sim: pytest_sim_gpus.SimSession) -> None:
        self.sim = sim

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.sim.tally.add(report)


# --- fixtures and the marker for users' own tests (harness.frontends.testing documents them) ---------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("samedevice")
    if marker is None:
        return
    from harness.frontends.testing import DeviceRun, device_runs, marker_problem

    problem = marker_problem(marker.args, marker.kwargs)
    if problem and "samedevice_target" in metafunc.fixturenames:  # this test fails with it; the rest run
        metafunc.parametrize("samedevice_target", [DeviceRun("invalid", ("cpu",), False, problem=problem)],
                             ids=["invalid-marker"], indirect=True)
        return
    if problem or "devices" not in marker.kwargs:
        return  # sim_gpus reports a bad marker itself
    if "samedevice_target" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.samedevice(devices=...) parametrizes the "
                                "`samedevice_target` fixture: add it (or `device`) to the test's arguments")
    runs = device_runs(list(marker.kwargs["devices"]), marker.kwargs.get("gpus", 2))
    metafunc.parametrize("samedevice_target", runs, ids=[run.label for run in runs], indirect=True)


@pytest.fixture
def samedevice_target(request: pytest.FixtureRequest):
    """The device of this run of a `@pytest.mark.samedevice(devices=...)` test: a
    `harness.frontends.testing.DeviceRun`; a simulated one runs the test inside simulated GPUs."""
    run = getattr(request, "param", None)
    if run is None:
        raise pytest.UsageError("samedevice_target needs @pytest.mark.samedevice(devices=[...]) on the test")
    if run.problem:
        pytest.fail(run.problem, pytrace=False)
    if run.skip:
        pytest.skip(run.skip)
    if not run.simulated:
        yield run
        return
    session_sim = _state(request.config).sim
    if session_sim is not None:  # --sim-gpus: simulations do not nest; use the session's
        _skip_unless_enough(session_sim, run.gpu_count)
        request.node.stash[_SIMULATION] = session_sim.simulation
        yield run
        return
    import torch

    from harness.frontends.testing import simulated_gpus

    with torch.no_grad(), simulated_gpus(count=run.gpu_count) as simulation:
        request.node.stash[_SIMULATION] = simulation  # what sim_gpus hands out for this test
        yield run


def _skip_unless_enough(sim: pytest_sim_gpus.SimSession, needed: int) -> None:
    if sim.count < needed:
        pytest.skip(f"needs {needed} simulated GPUs, --sim-gpus gives {sim.count}")


@pytest.fixture
def device(samedevice_target) -> str:
    """The first device of this run (`cpu`, `cuda:0`, ...), as a string for `.to()`."""
    return samedevice_target.device


@pytest.fixture
def sim_gpus(request: pytest.FixtureRequest):
    """Simulated CUDA GPUs for the test (`@pytest.mark.samedevice(gpus=N)`, default 2):
    a `harness.devices.Simulation`; skipped with the reason where simulation cannot run."""
    from harness.devices import unavailable_reason
    from harness.frontends.testing import marker_problem

    marker = request.node.get_closest_marker("samedevice")
    problem = marker_problem(marker.args, marker.kwargs) if marker is not None else None
    if problem:
        pytest.fail(problem, pytrace=False)
    if "samedevice_target" in request.fixturenames:  # the marked test's own simulation, if any
        request.getfixturevalue("samedevice_target")
        simulation = request.node.stash.get(_SIMULATION, None)
        if simulation is not None:
            yield simulation
            return
    count = marker.kwargs.get("gpus", 2) if marker is not None else 2
    session_sim = _state(request.config).sim
    if session_sim is not None:  # --sim-gpus: simulations do not nest; use the session's
        _skip_unless_enough(session_sim, count)
        yield session_sim.simulation
        return
    why = unavailable_reason()
    if why:
        pytest.skip(f"simulated GPUs unavailable: {why}")
    import torch

    from harness.frontends.testing import simulated_gpus

    with torch.no_grad(), simulated_gpus(count=count) as simulation:
        yield simulation


@pytest.fixture
def transfer_ledger():
    """A `harness.frontends.testing.TrackedLedger`: `with transfer_ledger.track(model): ...`."""
    from harness.frontends.testing import TrackedLedger

    return TrackedLedger()
