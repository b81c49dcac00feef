"""nox sessions for samedevice. `nox -l` lists them; README's two commands use `run` and `tests`.

Every session installs with pip against constraints.txt (torch 2.13.0, a CPU build that
installs from local disk in seconds). uv would not see that file and would download a CUDA
build of several GB, so the backend is plain venv + pip.
"""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.3"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["run", "tests", "lint"]

CONSTRAINTS = ("-c", "constraints.txt")


def install(session: nox.Session, extras: str = "dev,engines") -> None:
    """The project and its extras, torch pinned by constraints.txt."""
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")
    # The example engine plugin, so its entry point is exercised (no deps: they are ours).
    session.install("--no-deps", "-e", "examples/plugin-engine")


@nox.session
def run(session: nox.Session) -> None:
    """Main job: the bundled suite on cpu + simulated GPUs, with a readable report."""
    install(session)
    args = session.posargs or ["--device", "cpu", "--device", "sim"]
    session.run("samedevice", "run", *args, "--no-progress", env={"SAMEDEVICE_RESULTS": "results"})
    # The report's head (verdict counts, engine x feature x device matrix, skip reasons);
    # the case table above already listed every case.
    session.run("python", "-c", "import pathlib; p = max(pathlib.Path('results').glob('2*/report.md')); "
                "print(p.read_text().split('## Cases')[0]); print(f'full report: {p}')")


@nox.session
def tests(session: nox.Session) -> None:
    """The project's tests and the bundled scenarios as pytest items (pytest -n 2)."""
    install(session)
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session(default=False)
def base_install(session: nox.Session) -> None:
    """A plain `pip install .` (no extras, not editable): the bundled suite on cpu + sim runs, nothing errors."""
    session.install(*CONSTRAINTS, ".")
    session.run("samedevice", "doctor")
    session.run("samedevice", "run", "--device", "cpu", "--device", "sim", "--no-progress", *session.posargs,
                env={"SAMEDEVICE_RESULTS": "results/base-install"})


SWEEP_RESULTS = "results/sweep"


@nox.session(default=False)
def sweep(session: nox.Session) -> None:
    """The architecture sweep (sweeps/architectures.yaml): transformers' generate on every
    causal-LM architecture the installed transformers builds tiny, on cpu, sim:cuda:0 and
    sim:auto (greedy, beams, static cache, sampling). Writes results/sweep/architectures.md;
    fails if a case failed or errored (those are findings about transformers).
    `-- -k qwen2` (any pytest arguments) narrows it."""
    install(session)
    session.run("pytest", "sweeps", "-n", "2", "-p", "no:cacheprovider", "-o", "samedevice_paths=sweeps",
                "-m", "cpu or sim", "-q", "--samedevice-results", SWEEP_RESULTS, *session.posargs,
                success_codes=[0, 1])
    session.run("python", "-c", "import pathlib, subprocess, sys; "
                f"run = max(pathlib.Path('{SWEEP_RESULTS}').glob('2*/cases.jsonl')).parent; "
                "out = run.parent / 'architectures.md'; "
                "code = subprocess.call(['samedevice', 'architectures', '--results', str(run), '-o', str(out), "
                "'--fail-on-failures']); print(out.read_text()); sys.exit(code)")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the packages, tests and benchmarks."""
    session.install("ruff")
    session.run("ruff", "check", "harness", "reference_impl", "tests", "benchmarks", "noxfile.py", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the harness and the reference implementation."""
    install(session)
    session.run("mypy", *session.posargs)


# ---- benchmarks: asv, dashboard, base-vs-head gate ------------------------------------------
# (benchmarks/ owns this block: bench, bench_compare, dashboard; none of them is a default
# session. asv measures the Python that runs it (asv.conf.json: environment_type existing),
# here the session's venv with the project installed.)


def _bench_install(session: nox.Session) -> None:
    install(session, "dev,engines,bench")


def _asv_machine(session: nox.Session) -> list[str]:
    """`asv machine --yes`, plus torch/CUDA/GPU facts merged into asv's machine entry (so
    every result file records them in its params). $SAMEDEVICE_ASV_MACHINE names the machine."""
    import os

    name = os.environ.get("SAMEDEVICE_ASV_MACHINE")
    flag = ["--machine", name] if name else []
    session.run("asv", "machine", "--yes", *flag)
    session.run("python", "benchmarks/common.py", "asv-machine", *flag)
    return flag


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """asv run on this checkout (or on the refs given: `-- REF [REF...] [-- ASV_ARGS]`), tagged by commit."""
    _bench_install(session)
    flag = _asv_machine(session)
    session.run("python", "benchmarks/refs.py", "asv", *flag, *session.posargs)
    session.log("results: results/asv/ (nox -s dashboard publishes them)")


@nox.session(default=False)
def bench_compare(session: nox.Session) -> None:
    """Benchmark base and head alternately and fail on regressions: `-- --base REF --head REF|DIR`."""
    _bench_install(session)
    session.run("python", "benchmarks/refs.py", "compare", *session.posargs)


@nox.session(default=False)
def dashboard(session: nox.Session) -> None:
    """asv publish into results/html (offline-ready), checked in headless Chromium; `-- --serve` serves it."""
    _bench_install(session)
    session.run("asv", "publish")
    session.run("python", "benchmarks/dashboard.py", "vendor")  # CDN scripts -> results/html/vendor (npm)
    session.run("pytest", "tests/test_dashboard.py", env={"SAMEDEVICE_DASHBOARD_SCREENSHOTS": "results/dashboard-screenshots"})
    session.log("dashboard: results/html/index.html; screenshots: results/dashboard-screenshots/")
    if "--serve" in session.posargs:
        session.run("asv", "preview", "--port", "8080")


@nox.session(name="llamacpp", default=False)
def llamacpp(session: nox.Session) -> None:
    """llama.cpp engine: builds llama-cpp-python from source (about 8 minutes), then its tests."""
    install(session, extras="dev,engines,llamacpp")
    session.run("pytest", "tests/test_llamacpp.py", "-p", "no:cacheprovider", *session.posargs)
    session.run("samedevice", "run", "-e", "llamacpp", "-d", "cpu", "--no-progress")
