"""nox sessions for samedevice. `nox -l` lists them; README's two commands use `run` and `tests`.

What the sessions install is locked: constraints.txt pins every package and version (generated
by pip-tools from pyproject.toml's ranges: `nox -s lock` regenerates it), so README's test
command tests the same stack every day; `nox -s tests_latest` runs the tests on the newest
releases, to see an upstream change on purpose. torch comes first, alone: from a local wheelhouse
where pip has one (this project's machines), else from PyTorch's CPU wheel index (about 190 MB),
never the several-GB CUDA build PyPI serves. The backend is plain venv + pip: uv would not see
local wheels and would download a CUDA build.
"""

from __future__ import annotations

import os

import nox

nox.needs_version = ">=2024.3"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["run", "tests", "lint"]

LOCK = "constraints.txt"
CONSTRAINTS = ("-c", LOCK)
LOCKED_EXTRAS = "dev,engines,bench"  # what the lock covers (pyproject's optional-dependencies)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def locked_version(name: str) -> str:
    """The version constraints.txt pins for `name` (raises if it pins none)."""
    with open(LOCK, encoding="utf-8") as lock:
        lines = lock.read().splitlines()
    for line in lines:
        package, _, version = line.split("#")[0].strip().partition("==")
        if package.lower() == name.lower() and version:
            return version
    raise LookupError(f"{LOCK} pins no {name}: regenerate it with `nox -s lock`")


def install_torch(session: nox.Session) -> None:
    """The locked torch, a CPU build: from a local wheelhouse where pip is configured with one
    (no index asked), else from PyTorch's CPU index ($SAMEDEVICE_TORCH_INDEX overrides it). Its
    dependencies come with the project, from the lock."""
    torch = f"torch=={locked_version('torch')}"
    try:
        session.install("--no-index", "--no-deps", torch, silent=True)
    except nox.command.CommandFailed:
        index = os.environ.get("SAMEDEVICE_TORCH_INDEX", TORCH_CPU_INDEX)
        session.log(f"{torch} from {index} (CPU build, about 190 MB)")
        session.install("--index-url", index, "--no-deps", torch)


def install(session: nox.Session, extras: str = "dev,engines", check_lock: bool = True) -> None:
    """torch (CPU), then the project and its extras at the locked versions (checked: every
    installed package is the lock's, unless an extra outside the lock is asked for)."""
    install_torch(session)
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")
    # The example engine plugin, so its entry point is exercised (no deps: they are ours).
    session.install("--no-deps", "-e", "examples/plugin-engine")
    if check_lock:
        session.run("python", ".ci/check_lock.py", LOCK)


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


@nox.session(name="tests_latest", default=False)
def tests_latest(session: nox.Session) -> None:
    """The tests on the newest releases pyproject's ranges admit (torch stays the locked CPU
    build): not in CI; run it to see what an upstream release changes, before `nox -s lock`."""
    install_torch(session)
    session.install("--upgrade", "--upgrade-strategy", "eager", f"torch=={locked_version('torch')}",
                    "-e", ".[dev,engines]")
    session.install("--no-deps", "-e", "examples/plugin-engine")
    session.run("python", ".ci/check_lock.py", LOCK, "--differences")
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session(default=False)
def lock(session: nox.Session) -> None:
    """Regenerate constraints.txt with pip-tools: every package of pyproject's ranges (extras
    dev, engines, bench) at the newest release, torch held at the CPU build given here. Commit
    the result after `nox -s tests_latest` is green on it."""
    session.install("pip-tools>=7.4")
    torch = session.posargs[0] if session.posargs else f"torch=={locked_version('torch')}"
    session.run("pip-compile", "--quiet", "--upgrade", "--strip-extras", "--no-emit-index-url",
                "--no-emit-find-links", "--extra", LOCKED_EXTRAS, "--upgrade-package", torch,
                "--output-file", LOCK, "pyproject.toml", env={"CUSTOM_COMPILE_COMMAND": "nox -s lock"})


@nox.session(default=False)
def base_install(session: nox.Session) -> None:
    """A plain `pip install .` (no extras, not editable): the bundled suite on cpu + sim runs, nothing errors."""
    install_torch(session)
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
    _run_sweep(session, "sweeps/architectures.yaml", SWEEP_RESULTS, "architectures.md")


@nox.session(default=False)
def options_sweep(session: nox.Session) -> None:
    """The generation-options sweep (sweeps/options.yaml, written by `python -m
    harness.frontends.generation_options` from the installed transformers' GenerationConfig):
    each option that turns on a logits processor, a stopping criterion, a cache or a decoding
    strategy, alone and with an assistant on a second GPU, on cpu, sim:cuda:0 and sim:auto.
    Writes results/options-sweep/options.md; fails if a case failed or errored."""
    install(session)
    session.run("python", "-m", "harness.frontends.generation_options", "--check")
    _run_sweep(session, "sweeps/options.yaml", "results/options-sweep", "options.md")


def _run_sweep(session: nox.Session, sweep_file: str, results: str, table: str) -> None:
    session.run("pytest", sweep_file, "-n", "2", "-p", "no:cacheprovider", "-o", f"samedevice_paths={sweep_file}",
                "-m", "cpu or sim", "-q", "--samedevice-results", results, *session.posargs,
                success_codes=[0, 1])
    session.run("python", "-c", "import pathlib, subprocess, sys; "
                f"run = max(pathlib.Path('{results}').glob('2*/cases.jsonl')).parent; "
                f"out = run.parent / '{table}'; "
                "code = subprocess.call(['samedevice', 'architectures', '--results', str(run), '-o', str(out), "
                "'--fail-on-failures']); print(out.read_text()); sys.exit(code)")


@nox.session(default=False)
def opinfo(session: nox.Session) -> None:
    """Simulated GPUs against torch's whole OpInfo database (float32, int64, bool; ~15 min on
    2 cores): each sample on sim cuda:0 against the CPU, plus mixed-device binary ops. Writes
    results/opinfo/opinfo.md (failures by class, each failing op with its reason); CI runs a
    fixed slice of it (tests/test_sim_opinfo.py). `-- --dtype float32 --op add` narrows it."""
    install(session)
    session.run("python", "-m", "tests.opinfo_fidelity", *session.posargs)


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
    """`asv machine --yes` (its questions kept out of the log), plus torch/CUDA/GPU facts merged
    into asv's machine entry (so every result file records them in its params); one line says
    what was recorded. $SAMEDEVICE_ASV_MACHINE names the machine."""
    import os

    name = os.environ.get("SAMEDEVICE_ASV_MACHINE")
    flag = ["--machine", name] if name else []
    session.run("python", "benchmarks/refs.py", "machine", *flag)
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
    session.run("asv", "publish", silent=True)
    # CDN scripts -> results/html/vendor (npm); asv's pages patched to open on data
    session.run("python", "benchmarks/dashboard.py", "vendor")
    session.run("pytest", "-rs", "tests/test_dashboard.py")  # -rs: a skip says why (no chromium)
    # Screenshots and what each shows, or "skipped: chromium not found": it claims none it did not take.
    session.run("python", "benchmarks/dashboard.py", "screenshot", "--out", "results/dashboard-screenshots")
    session.log("dashboard: results/html/index.html")
    if "--serve" in session.posargs:
        session.run("asv", "preview", "--port", "8080")


@nox.session(name="llamacpp", default=False)
def llamacpp(session: nox.Session) -> None:
    """llama.cpp engine: builds llama-cpp-python from source (about 8 minutes), then its tests."""
    install(session, extras="dev,engines,llamacpp", check_lock=False)  # llama-cpp-python is a source build, unlocked
    session.run("pytest", "tests/test_llamacpp.py", "-p", "no:cacheprovider", *session.posargs)
    session.run("samedevice", "run", "-e", "llamacpp", "-d", "cpu", "--no-progress")


# ---- compat: the built-in transformers and outlines engines on the versions users are on ----
# One nox venv per stack: the project installed with pip as a user would, the stack's versions
# pinned beside it and torch pinned by constraints.txt. Each session runs the engine scenarios
# on cpu and sim plus the version-sensitive tests, writes results/compat/<stack>.json and
# prints the table of every stack run so far (results/compat/table.md). The tiny-model cache
# is shared by all stacks on purpose: the newest tokenizers writes it first, so a cache key
# that forgot the tokenizer.json format would break the 4.44 stack (tokenizers 0.19).

OLD_NUMPY = "numpy<2"  # what the 4.4x-era stacks were used with
LEGACY_OUTLINES = ["datasets==2.18.0", "fsspec<=2024.2.0", "pyarrow<18"]  # pyarrow 18+ needs numpy 2
# The pyproject floors (accelerate 0.34.0 needs safetensors >= 0.4.3, so that is the floor).
# peft 0.13 (the oldest the engines extra allows): the newest peft reads configs in ways 4.44 lacks.
TRANSFORMERS_4_44 = ["transformers==4.44.0", "tokenizers==0.19.1", "accelerate==0.34.0", "safetensors==0.4.3", OLD_NUMPY,
                     "peft==0.13.2"]
TRANSFORMERS_4_46 = ["transformers==4.46.3", "accelerate==0.34.2", OLD_NUMPY]
TRANSFORMERS_4_48 = ["transformers==4.48.3", "accelerate==0.34.2", OLD_NUMPY]
COMPAT_STACKS: dict[str, tuple[list[str], list[str]]] = {  # id -> (pins, engines)
    "transformers-5.x": ([], ["transformers", "outlines"]),  # the newest releases pip resolves
    "transformers-4.44": (TRANSFORMERS_4_44, ["transformers", "outlines"]),  # pyproject floors
    "transformers-4.46": (TRANSFORMERS_4_46, ["transformers"]),
    "transformers-4.48": (TRANSFORMERS_4_48, ["transformers"]),
    "transformers-4.57": (["transformers==4.57.6", "accelerate==1.10.1"], ["transformers", "outlines"]),
    "outlines-0.0.28": (["outlines==0.0.28", *LEGACY_OUTLINES, *TRANSFORMERS_4_44], ["outlines"]),
    "outlines-0.0.31": (["outlines==0.0.31", *LEGACY_OUTLINES, *TRANSFORMERS_4_46], ["outlines"]),
    # Outlines 0.1.x wraps the tokenizer after importing LlamaTokenizer: sentencepiece on 4.48.
    "outlines-0.1.14": (["outlines==0.1.14", "sentencepiece", *LEGACY_OUTLINES, *TRANSFORMERS_4_48], ["outlines"]),
}
# Released device bugs the simulated GPUs catch on a stack: (stack, case id) -> (where, verdict).
# Such a failure is the harness working; a stack passes when its failures are exactly these.
_ASSISTED = ("transformers/models/llama/modeling_llama.py",
             "caught assisted decoding: the assistant's candidate ids reach the main model on the assistant's GPU "
             "(passes from 4.48)")
KNOWN_RELEASED_BUGS = {
    ("outlines-0.0.28", "engines-json-schema[outlines-sim:cuda:0]"): (
        "outlines/generate/generator.py", "caught Outlines #651 (fixed in 0.0.30)"),
    ("outlines-0.0.28", "engines-json-schema[outlines-sim:auto]"): (
        "outlines/generate/generator.py", "caught Outlines #651 (fixed in 0.0.30)"),
    ("transformers-4.44", "options-assisted-decoding[transformers-sim:cuda:0]"): _ASSISTED,
    ("transformers-4.46", "options-assisted-decoding[transformers-sim:cuda:0]"): _ASSISTED,
    ("transformers-4.44", "options-static-cache[transformers-sim:auto]"): (
        "transformers/cache_utils.py", "caught a static cache on one GPU for layers on two (passes from 4.46)"),
    ("transformers-4.44", "options-prefix-tuning[transformers-sim:auto]"): (
        "transformers/cache_utils.py", "caught prefix tuning on two GPUs (peft 0.13.2): the prefix cache is concatenated "
        "with keys of layers on the other GPU (passes on 4.46 with the newest peft)"),
    ("transformers-4.44", "options-dola[transformers-sim:auto]"): (
        "transformers/generation/utils.py", "caught DoLa mixes hidden states of layers on two GPUs (passes from 4.46)"),
}
# Where the simulator itself is wrong on a stack (a false failure, named, never a pass), as
# (stack, case id) -> (library file, explanation). None known: transformers 4.57 builds its sdpa
# masks under torch.vmap, which the simulated GPUs follow since tests/test_sim_vmap.py.
KNOWN_SIMULATOR_GAPS: dict[tuple[str, str], tuple[str, str]] = {}
COMPAT_TESTS = ["tests/test_engines.py", "tests/test_sim_beam_search.py", "tests/test_sim_python_views.py",
                "tests/test_sim_transformers.py", "tests/test_sim_vmap.py", "tests/test_versions.py"]


@nox.session(default=False)
@nox.parametrize("stack", list(COMPAT_STACKS))
def compat(session: nox.Session, stack: str) -> None:
    """Engine scenarios on cpu + sim and the version tests on one library stack (see COMPAT_STACKS)."""
    import json
    import pathlib

    pins, engines = COMPAT_STACKS[stack]
    out = pathlib.Path("results", "compat")
    out.mkdir(parents=True, exist_ok=True)
    if pins:  # can the releases be had at all? (no network, no such release: skip, with the reason)
        try:
            session.run("pip", "download", "-q", "--no-deps", "-d", session.create_tmp(), *pins, silent=True)
        except nox.command.CommandFailed:
            reason = f"cannot fetch {' '.join(pins)} (no network, or no such release for this Python)"
            _compat_record(out, stack, {"skipped": reason})
            session.skip(f"{stack}: {reason}")
    # Not the lock: a stack pins its own versions; torch stays the locked CPU build.
    install_torch(session)
    session.install(f"torch=={locked_version('torch')}", "-e", ".[dev,engines]", *pins)  # a conflict is a real failure
    session.install("--no-deps", "-e", "examples/plugin-engine")
    env = {"SAMEDEVICE_CACHE": str(pathlib.Path(".nox", "compat-cache").resolve()),
           "OUTLINES_CACHE_DIR": str(pathlib.Path(".nox", "compat-outlines-cache", stack).resolve()),
           "SAMEDEVICE_RESULTS": str(out / stack)}
    versions = session.run("python", "-c", "import json; from harness.engines.versions import library_versions; "
                           "print(json.dumps(library_versions()))", silent=True, env=env)
    engine_args = [arg for engine in engines for arg in ("-e", engine)]
    # engine_options.yaml: DoLa (built into 4.x, a Hub repo in 5.x), assisted decoding with the
    # assistant on the second GPU, a peft prefix-tuning adapter, a static cache.
    session.run("samedevice", "run", "scenarios/engines.yaml", "scenarios/engine_options.yaml", *engine_args,
                "-d", "cpu", "-d", "sim", "--no-progress", "--allow-empty", env=env, success_codes=[0, 1])
    junit = out / f"{stack}-tests.xml"
    session.run("pytest", *COMPAT_TESTS, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", env=env,
                success_codes=[0, 1])
    run_dir = max((out / stack).glob("2*/"))
    cases = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    row = {"versions": json.loads(str(versions).strip().splitlines()[-1]), "run": str(run_dir), "cells": {},
           "tests": _junit_counts(junit)}
    unexpected = []
    for case in cases:
        device = "sim" if case["device"].startswith("sim") else case["device"]
        verdict = case["status"]
        # a failure listed for this case, at the library line listed, is explained
        where, explained = KNOWN_RELEASED_BUGS.get((stack, case["id"])) or KNOWN_SIMULATOR_GAPS.get(
            (stack, case["id"])) or ("", "")
        error_site = (case.get("error") or {}).get("site") or ""
        if verdict == "failed" and where and error_site.startswith(where):
            verdict = explained
        elif verdict not in ("passed", "skipped"):
            unexpected.append(f"{case['id']}: {verdict}: {case.get('reason') or case['failures'] or case.get('error')}")
        row["cells"].setdefault(f"{case['engine']} {device}", []).append(verdict)
    _compat_record(out, stack, row)
    if unexpected or "failed" in row["tests"]:
        session.error(f"{stack}: " + ("; ".join(unexpected) or f"the version tests: {row['tests']}"))


def _junit_counts(path) -> str:
    """'34 passed, 2 skipped' (or '... 1 failed') from a pytest JUnit XML file."""
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    passed = int(suite.get("tests", 0)) - failed - skipped
    return ", ".join(f"{n} {what}" for n, what in ((passed, "passed"), (failed, "failed"), (skipped, "skipped")) if n)


def _compat_record(out, stack: str, row: dict) -> None:
    """Write results/compat/<stack>.json and rebuild results/compat/table.md from all stacks."""
    import json
    from collections import Counter

    (out / f"{stack}.json").write_text(json.dumps(row, indent=2))
    lines = ["| stack | versions | cells (engine device: verdicts) | tests |", "|---|---|---|---|"]
    for name in COMPAT_STACKS:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        if "skipped" in data:
            lines.append(f"| {name} | - | skipped: {data['skipped']} | - |")
            continue
        v = data["versions"]
        shown = ", ".join(f"{lib} {v[lib]}" for lib in ("transformers", "tokenizers", "accelerate", "outlines", "numpy") if v.get(lib))
        cells = "; ".join(f"{cell}: " + ", ".join(f"{n} {verdict}" for verdict, n in Counter(verdicts).items())
                          for cell, verdicts in data["cells"].items())
        lines.append(f"| {name} | {shown} | {cells} | {data['tests']} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
