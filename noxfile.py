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
    session.run("python", "-c", "import pathlib; p = max(pathlib.Path('results').glob('2*/report.md')); "
                "print(f'report: {p}'); print(p.read_text()[:4000])")


@nox.session
def tests(session: nox.Session) -> None:
    """The project's tests and the bundled scenarios as pytest items (pytest -n 2)."""
    install(session)
    session.run("pytest", "-n", "2", *session.posargs)


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
