"""pytest plugin (entry point `pytest11`): scenario files become test items.

Only files under the configured scenario paths (ini `samedevice_paths`, default
`scenarios/`) are collected, so installing samedevice never makes pytest collect
unrelated YAML. Each case is an item `file.yaml::name[engine-device]` with a marker per
device kind (cpu, gpu, multigpu, sim). Results stream to results/<run-id>/cases.jsonl;
under xdist the controller creates the run directory and every worker appends to it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.results import CaseResult, RunDirectory, environment_info

MARKERS = {
    "cpu": "samedevice case on the CPU",
    "gpu": "samedevice case on one real GPU",
    "multigpu": "samedevice case across several real GPUs (auto placement)",
    "sim": "samedevice case on simulated GPUs",
    "samedevice": "a samedevice scenario case; on your own test, samedevice(devices=[cpu, cuda:0, auto], gpus=2) "
                  "runs it once per device, on real GPUs where present and simulated ones otherwise",
}
_RUN_DIR_KEY = "samedevice_run_dir"


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
    group.addoption("--samedevice-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="seconds per case where the scenario sets none (default: 600)")
    group.addoption("--strict-devices", action="store_true", default=False,
                    help="a case whose device is absent fails instead of skipping (default: skip)")
    parser.addini("samedevice_paths", type="paths", default=[],
                  help="directories whose .yaml/.yml files are scenarios (default: scenarios)")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config._samedevice_run_dir = None  # type: ignore[attr-defined]
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        path = workerinput.get(_RUN_DIR_KEY)
        config._samedevice_run_dir = RunDirectory(Path(path)) if path else None  # type: ignore[attr-defined]
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "samedevice-xdist")


class _XdistHooks:
    @pytest.hookimpl
    def pytest_configure_node(self, node) -> None:
        run_dir = _ensure_run_dir(node.config)
        node.workerinput[_RUN_DIR_KEY] = str(run_dir.path) if run_dir else ""


def _ensure_run_dir(config: pytest.Config) -> RunDirectory | None:
    """The run directory, created on first need by the controller (never by a worker)."""
    if config._samedevice_run_dir is not None or getattr(config, "workerinput", None) is not None:  # type: ignore[attr-defined]
        return config._samedevice_run_dir  # type: ignore[attr-defined]
    if config.getoption("samedevice_no_results"):
        return None
    if not getattr(config, "_samedevice_has_cases", False) and not config.pluginmanager.hasplugin("xdist"):
        return None
    from harness.runner import results_root_default

    root = Path(config.getoption("samedevice_results") or results_root_default())
    if not root.is_absolute():
        root = Path(config.rootpath) / root
    try:
        run_dir = RunDirectory.create(root)
    except OSError as exc:
        raise pytest.UsageError(f"samedevice: results directory {root} is not writable: {exc.strerror or exc}") from None
    run_dir.write_run_info(environment_info() | {"run_id": run_dir.path.name, "started": time.time(), "front_end": "pytest"})
    config._samedevice_run_dir = run_dir  # type: ignore[attr-defined]
    return run_dir


def _scenario_roots(config: pytest.Config) -> list[Path]:
    paths = config.getini("samedevice_paths") or [Path(config.rootpath) / "scenarios"]
    return [Path(p).resolve() for p in paths]


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    resolved = file_path.resolve()
    if not any(resolved.is_relative_to(root) for root in _scenario_roots(parent.config)):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


class ScenarioFile(pytest.File):
    def collect(self):
        from harness.cases import expand, selected
        from harness.loader import load_file

        loaded = load_file(self.path)
        for error in loaded.errors:
            yield InvalidScenario.from_parent(self, name=f"invalid[{error.line}:{error.column}]", error=str(error))
        devices = self.config.getoption("samedevice_device")
        engines = self.config.getoption("samedevice_engine")
        for scenario in loaded.scenarios:
            for case in expand(scenario):
                if not selected(case, engines, devices):
                    continue
                self.config._samedevice_has_cases = True  # type: ignore[attr-defined]
                item = ScenarioItem.from_parent(self, name=case.id, case=case)
                item.add_marker(case.target.marker)
                item.add_marker("samedevice")
                yield item


class CaseFailed(Exception):
    def __init__(self, result: CaseResult) -> None:
        super().__init__(result.summary_line())
        self.result = result


class ScenarioItem(pytest.Item):
    def __init__(self, *, case, **kwargs) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        from harness.runner import RunOptions

        options = RunOptions(strict_devices=self.config.getoption("strict_devices"))
        result = _executor(self.session)(self.case, options)
        run_dir = _ensure_run_dir(self.config)
        if run_dir is not None:
            run_dir.append(result)
        self.user_properties.append(("samedevice_status", result.status))
        if result.status == "skipped":
            # Reported at the scenario's file:line (reportinfo), not at this line.
            raise pytest.skip.Exception(result.reason, _use_item_location=True)
        if result.status in ("failed", "error"):
            raise CaseFailed(result)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CaseFailed):
            r = excinfo.value.result
            lines = [f"{r.id} {r.status} ({r.file}:{r.line})"]
            lines += [f"  {f.check}: {f.message}" for f in r.failures]
            if r.status == "error" and r.error is not None:
                lines.append(f"  error: {r.error.one_line()}")
                if r.error.traceback:
                    lines.append(r.error.traceback.rstrip())
            lines += [f"  note: {n}" for n in r.notes]
            return "\n".join(lines)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, self.case.loaded.line - 1, self.case.id


def _executor(session: pytest.Session):
    """One per session (per xdist worker): a case worker process, or in-process."""
    execute = getattr(session, "_samedevice_execute", None)
    if execute is None:
        from harness.isolation import make_executor

        config = session.config
        execute = make_executor(config.getoption("samedevice_isolation"), config.getoption("samedevice_timeout"))
        session._samedevice_execute = execute  # type: ignore[attr-defined]
    return execute


class InvalidScenario(pytest.Item):
    """A scenario file problem, reported as one failing item with one line."""

    def __init__(self, *, error: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise ValueError(self.error)

    def repr_failure(self, excinfo, style=None):
        return f"invalid scenario: {self.error}"

    def reportinfo(self):
        return self.path, None, f"invalid scenario {self.path.name}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    getattr(getattr(session, "_samedevice_execute", None), "stop", lambda: None)()
    config = session.config
    if getattr(config, "workerinput", None) is not None:
        return
    run_dir = config._samedevice_run_dir  # type: ignore[attr-defined]
    if run_dir is None:
        return
    from harness import report

    info = run_dir.read_run_info() | {"finished": time.time(), "exitstatus": int(exitstatus)}
    run_dir.write_run_info(info)
    results = run_dir.read_cases()
    (run_dir.path / "report.md").write_text(report.markdown(results, info))
    config._samedevice_summary = f"samedevice: {report.counts_line(results)}; results in {os.path.relpath(run_dir.path)}"  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    summary = getattr(config, "_samedevice_summary", None)
    if summary:
        terminalreporter.write_line(summary)


# --- fixtures and the marker for users' own tests (harness.testing documents them) ---------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("samedevice")
    if marker is None or "devices" not in marker.kwargs:
        return
    if "samedevice_target" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.samedevice(devices=...) parametrizes the "
                                "`samedevice_target` fixture: add it (or `device`) to the test's arguments")
    from harness.testing import device_runs

    runs = device_runs(list(marker.kwargs["devices"]), int(marker.kwargs.get("gpus", 2)))
    metafunc.parametrize("samedevice_target", runs, ids=[run.label for run in runs], indirect=True)


@pytest.fixture
def samedevice_target(request: pytest.FixtureRequest):
    """The device of this run of a `@pytest.mark.samedevice(devices=...)` test: a
    `harness.testing.DeviceRun`; a simulated one runs the test inside simulated GPUs."""
    run = getattr(request, "param", None)
    if run is None:
        raise pytest.UsageError("samedevice_target needs @pytest.mark.samedevice(devices=[...]) on the test")
    if run.skip:
        pytest.skip(run.skip)
    if not run.simulated:
        yield run
        return
    import torch

    from harness.testing import simulated_gpus

    with torch.no_grad(), simulated_gpus(count=max(2, len(run.devices))):
        yield run


@pytest.fixture
def device(samedevice_target) -> str:
    """The first device of this run (`cpu`, `cuda:0`, ...), as a string for `.to()`."""
    return samedevice_target.device


@pytest.fixture
def sim_gpus(request: pytest.FixtureRequest):
    """Simulated CUDA GPUs for the test (`@pytest.mark.samedevice(gpus=N)`, default 2):
    a `harness.devices.Simulation`; skipped with the reason where simulation cannot run."""
    from harness.devices import unavailable_reason

    why = unavailable_reason()
    if why:
        pytest.skip(f"simulated GPUs unavailable: {why}")
    marker = request.node.get_closest_marker("samedevice")
    count = int(marker.kwargs.get("gpus", 2)) if marker is not None else 2
    import torch

    from harness.testing import simulated_gpus

    with torch.no_grad(), simulated_gpus(count=count) as simulation:
        yield simulation


@pytest.fixture
def transfer_ledger():
    """A `harness.testing.TrackedLedger`: `with transfer_ledger.track(model): ...`."""
    from harness.testing import TrackedLedger

    return TrackedLedger()
