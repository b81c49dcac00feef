"""Benchmark chosen versions of the code: asv on git refs, and the base-vs-head gate.

    python benchmarks/refs.py asv [REF|DIR ...] [-- ASV_RUN_ARGS]       (nox -s bench)
    python benchmarks/refs.py compare [--base REF|DIR] [--head REF|DIR] [--rounds 3]
        [--repeats 10] [--throughput-factor 1.1] [--markdown OUT]       (nox -s bench_compare)

`asv`: asv runs in the existing environment (`environment_type: existing`), so it measures
whatever `harness` imports. For each ref, this checks the ref out into a temporary
worktree, names it in `ASV_PYTHONPATH` (asv's way to put a directory first on the
benchmark processes' sys.path) and tags the results with the ref's commit
(`--set-commit-hash`). A directory (default `.`, this working tree) is measured as it is
and tagged with its HEAD commit (with a warning when it has uncommitted changes). asv is
given only the suite (a copy of this checkout's `harness/asv_suite.py` and the lines of
`benchmarks/bench_scenarios.py` importing it), not the scripts beside it.

`compare`: a side is a directory (a checkout, used as it is, uncommitted changes included) or a git
ref (checked out with `git worktree add --detach` into a temporary directory, removed
afterwards). Defaults: base `HEAD`, head `.` (this working tree): "does my change regress?".
A CI job on a pull request passes `--base origin/main --head HEAD`.

Each side runs in its own interpreter with `PYTHONPATH=<side>`, so `harness` and
`reference_impl` come from that side (the editable install is kept out of the way:
`asv_suite.prefer_path_checkout`), and its own `benchmark: true` scenarios are measured by
this checkout's suite (`harness/asv_suite.py`, copied: `python samedevice_suite.py run-cases`).
Base and head alternate for `--rounds` rounds (base-head, head-base, ...) so a change in
the machine's load hits both; each round runs every case `--repeats` times; all runs of a
side pool in one harness run directory, judged by `samedevice compare` (harness.compare):
any increase of transfers per token fails, and best-run decode tokens/s below
base / factor fails. When throughput is the only failure, `--confirm-rounds` more rounds
run and the pooled runs are judged again: on a shared machine a side can sit in a busy
spell for a whole round (seen: 808 vs 995 tokens/s, same code), while a real slowdown
stays below the factor however many runs are added (the best run cannot beat the code).
The two run directories stay under results/bench-compare/<stamp>/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def checkout(spec: str):
    """(directory, label) for a side: an existing directory as is, else a worktree of a ref."""
    path = Path(spec)
    if path.is_dir():
        path = path.resolve()
        try:
            described = f"{spec} (commit {_git('rev-parse', '--short', 'HEAD', cwd=path)}, working tree)"
        except (subprocess.CalledProcessError, OSError):
            described = spec
        yield path, described
        return
    commit = _git("rev-parse", "--verify", f"{spec}^{{commit}}")
    target = Path(tempfile.mkdtemp(prefix="samedevice-bench-")) / "checkout"
    _git("worktree", "add", "--detach", str(target), commit)
    try:
        yield target, f"{spec} (commit {commit[:10]})"
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(target)], cwd=REPO, capture_output=True)
        subprocess.run(["rm", "-rf", str(target.parent)], capture_output=True)


SUITE = REPO / "harness" / "asv_suite.py"
SUITE_COPY = "samedevice_suite.py"


def copy_suite(directory: Path) -> Path:
    """This checkout's suite (`harness/asv_suite.py`) as a top-level module in `directory`.
    Every side is measured by the same suite, imported this way: a side's own
    `harness.asv_suite` may differ, and an older commit has none."""
    target = directory / SUITE_COPY
    shutil.copy2(SUITE, target)
    return target


def run_side(checkout_dir: Path, results_dir: Path, repeats: int, label: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(checkout_dir), SAMEDEVICE_BENCH_SCENARIOS=str(checkout_dir / "scenarios"))
    env.pop("ASV_PYTHONPATH", None)
    with tempfile.TemporaryDirectory(prefix="samedevice-suite-") as tmp:
        command = [sys.executable, str(copy_suite(Path(tmp))), "run-cases", "--results-dir", str(results_dir),
                   "--repeats", str(repeats), "--label", label]
        subprocess.run(command, cwd=checkout_dir, env=env, check=True)


@contextmanager
def asv_suite() -> Iterator[Path]:
    """An asv config whose benchmark_dir holds only the suite: the copy of this checkout's
    `harness/asv_suite.py` and the benchmark module (`benchmarks/bench_scenarios.py`'s
    lines, importing the copy). asv imports every module of its benchmark_dir at every
    commit it measures; the scripts beside the suite import project modules that older
    commits lack, which would fail discovery of the whole suite there."""
    from asv.util import load_json

    from harness.asv_init import benchmark_module

    conf = load_json(str(REPO / "asv.conf.json"), js_comments=True)
    with tempfile.TemporaryDirectory(prefix="samedevice-asv-") as tmp:
        suite = Path(tmp) / "benchmarks"
        suite.mkdir()
        shutil.copy2(HERE / "__init__.py", suite / "__init__.py")
        copy_suite(suite)
        (suite / "bench_scenarios.py").write_text(benchmark_module(suite="." + SUITE_COPY.removesuffix(".py")))
        conf |= {"repo": str(REPO), "benchmark_dir": str(suite),
                 "results_dir": str(REPO / conf["results_dir"]), "html_dir": str(REPO / conf["html_dir"])}
        path = Path(tmp) / "asv.conf.json"
        path.write_text(json.dumps(conf, indent=2))
        yield path


def asv_run(specs: list[str], asv_args: list[str], machine: str | None) -> int:
    """`asv run` once per side, each tagged with its commit; returns the worst exit code."""
    worst = 0
    with asv_suite() as config:
        for spec in specs or ["."]:
            with checkout(spec) as (directory, label):
                commit = _git("rev-parse", "HEAD", cwd=directory)
                if Path(spec).is_dir() and _git("status", "--porcelain", "--untracked-files=no", cwd=directory):
                    print(f"bench: warning: {spec} has uncommitted changes; its results are tagged {commit[:10]}",
                          file=sys.stderr)
                env = dict(os.environ)
                env.pop("PYTHONPATH", None)
                if directory != REPO:
                    env["ASV_PYTHONPATH"] = str(directory)
                else:
                    env.pop("ASV_PYTHONPATH", None)
                command = ["asv", "run", "--config", str(config), "--python=same", "--set-commit-hash", commit,
                           "--show-stderr", *(["--machine", machine] if machine else []), *asv_args]
                print(f"bench: {label}: {' '.join(command)}", file=sys.stderr, flush=True)
                worst = max(worst, subprocess.run(command, cwd=REPO, env=env).returncode)
    return worst


def _throughput_only(base_dir: Path, head_dir: Path, factor: float) -> bool:
    """True when the only regressions are throughput ones (noise may explain them)."""
    from harness.compare import compare_dirs

    comparison = compare_dirs(base_dir, head_dir, factor)
    return bool(comparison.regressions) and all(f.what.startswith("decode tokens/s") for f in comparison.regressions)


def compare_refs(args: argparse.Namespace) -> int:
    out = args.out or REPO / "results" / "bench-compare" / time.strftime("%Y%m%d-%H%M%S")
    base_dir, head_dir = out / "base", out / "head"
    with ExitStack() as stack:
        base, base_label = stack.enter_context(checkout(args.base))
        head, head_label = stack.enter_context(checkout(args.head))
        print(f"bench_compare: base {base_label} -> {base_dir}\n               head {head_label} -> {head_dir}",
              file=sys.stderr)
        sides = [("base", base, base_dir, base_label), ("head", head, head_dir, head_label)]

        def rounds(count: int, first: int) -> None:
            for index in range(first, first + count):
                for name, directory, results, label in sides if index % 2 == 0 else sides[::-1]:
                    print(f"bench_compare: round {index + 1}: {name}", file=sys.stderr, flush=True)
                    run_side(directory, results, args.repeats, label)

        rounds(args.rounds, 0)
        if args.confirm_rounds and not args.no_throughput and _throughput_only(base_dir, head_dir, float(args.throughput_factor)):
            print(f"bench_compare: throughput below the factor after {args.rounds} rounds; confirming with "
                  f"{args.confirm_rounds} more (a slow machine moment is not a regression)", file=sys.stderr)
            rounds(args.confirm_rounds, args.rounds)

    from harness.compare import main as compare_main

    compare_args = [str(base_dir), str(head_dir), "--throughput-factor", args.throughput_factor]
    if args.no_throughput:
        compare_args.append("--no-throughput")
    if args.markdown:
        compare_args += ["--markdown", str(args.markdown)]
    return compare_main(compare_args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="benchmarks/refs.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    asv = sub.add_parser("asv", help="asv run on refs or directories, each tagged with its commit")
    asv.add_argument("specs", nargs="*", metavar="REF|DIR", help="default: . (this working tree)")
    asv.add_argument("--machine", default=None, help="asv machine name (default: asv's, the host name)")
    cmp = sub.add_parser("compare", help="run base and head alternately, then judge with samedevice compare")
    cmp.add_argument("--base", default="HEAD", help="git ref or directory (default: HEAD)")
    cmp.add_argument("--head", default=".", help="git ref or directory (default: . , this working tree)")
    cmp.add_argument("--rounds", type=int, default=3, help="alternating base/head rounds (default: 3)")
    cmp.add_argument("--repeats", type=int, default=10, help="runs of each case per round (default: 10)")
    cmp.add_argument("--confirm-rounds", type=int, default=4,
                     help="when only throughput fails, run this many more rounds and judge again (default: 4)")
    cmp.add_argument("--throughput-factor", default="1.1", help="head below base / FACTOR fails (default: 1.1)")
    cmp.add_argument("--no-throughput", action="store_true", help="judge transfer counts only")
    cmp.add_argument("--out", type=Path, default=None,
                     help="where the two run directories go (default: results/bench-compare/<stamp>)")
    cmp.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    asv_args: list[str] = []
    if "--" in argv:
        argv, asv_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = parser.parse_args(argv)
    if args.command == "asv":
        return asv_run(args.specs, asv_args, args.machine)
    return compare_refs(args)


if __name__ == "__main__":
    sys.exit(main())
