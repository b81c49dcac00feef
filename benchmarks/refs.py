"""Benchmark chosen versions of the code: asv on git refs, and the base-vs-head gate.

    python benchmarks/refs.py machine [--machine NAME]                   (nox -s bench, first)
    python benchmarks/refs.py asv [REF|DIR ...] [-- ASV_RUN_ARGS]       (nox -s bench)
    python benchmarks/refs.py compare [--base REF|DIR] [--head REF|DIR] [--rounds 3]
        [--repeats 10] [--throughput-factor 1.1] [--markdown OUT]       (nox -s bench_compare)

`asv`: asv runs in the existing environment (`environment_type: existing`), so it measures
whatever `harness` imports. For each ref, this checks the ref out into a temporary
worktree, names it in `ASV_PYTHONPATH` (asv's way to put a directory first on the
benchmark processes' sys.path) and tags the results with the ref's commit
(`--set-commit-hash`). A directory (default `.`, this working tree) is measured as it is
and tagged with its HEAD commit (with a warning when it has uncommitted changes). asv's
output is shown less its line per skipped result, summed up in one line (`AsvLog`). asv is
given only the suite (a copy of this checkout's `harness/frontends/asv_suite.py` and the lines of
`benchmarks/bench_scenarios.py` importing it), not the scripts beside it.

`compare`: a side is a directory (a checkout, used as it is, uncommitted changes included) or a git
ref (checked out with `git worktree add --detach` into a temporary directory, removed
afterwards). Defaults: base `HEAD`, head `.` (this working tree): "does my change regress?".
A CI job on a pull request passes `--base origin/main --head HEAD`.

Each side runs in its own interpreter with `PYTHONPATH=<side>`, so `harness` and
`reference_impl` come from that side (the editable install is kept out of the way:
`asv_suite.prefer_path_checkout`), and its own `benchmark: true` scenarios are measured by
this checkout's suite (`harness/frontends/asv_suite.py`, copied: `python samedevice_suite.py run-cases`).
Base and head alternate for `--rounds` rounds (base-head, head-base, ...) so a change in
the machine's load hits both; each round runs every case `--repeats` times; all runs of a
side pool in one harness run directory, judged by `samedevice compare` (harness.record.compare):
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
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
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


SUITE = REPO / "harness" / "frontends" / "asv_suite.py"
SUITE_COPY = "samedevice_suite.py"


def copy_suite(directory: Path) -> Path:
    """This checkout's suite (`harness/frontends/asv_suite.py`) as a top-level module in `directory`.
    Every side is measured by the same suite, imported this way: a side's own
    `harness.frontends.asv_suite` may differ, and an older commit has none."""
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
    `harness/frontends/asv_suite.py` and the benchmark module (`benchmarks/bench_scenarios.py`'s
    lines, importing the copy). asv imports every module of its benchmark_dir at every
    commit it measures; the scripts beside the suite import project modules that older
    commits lack, which would fail discovery of the whole suite there."""
    from asv.util import load_json

    from harness.frontends.asv_init import benchmark_module

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


_PREFIX = re.compile(r"^(\[ *[\d.]+%\] ·+ )?")  # asv's progress prefix on a line's first output
_BORDER = re.compile(r"^\s*=+( +=+)+\s*$")
_SKIPPED = re.compile(r"^\s*asv: skipped: (?:\w+\(['\"]?)?(?P<why>.*?)(?:['\"]?\))?\s*$")


class AsvLog:
    """asv's output less one line per skipped benchmark, summed up in `summary()`.

    asv prints every result of a parameterised benchmark as a table row (`n/a` where
    skipped) and, with --show-stderr, a "For parameters: ..." block for each
    NotImplementedError skip; for the (scenario, engine, device) grid that was hundreds
    of lines. Tables keep the rows that have a value (a table of n/a rows only is
    dropped), skip blocks go, and every other line passes unchanged (failures included).
    """

    def __init__(self) -> None:
        self.na_rows = 0
        self.reasons: Counter[str] = Counter()
        self._table: list[str] | None = None  # the table being read, until its closing border
        self._kept_rows = 0
        self._header_done = False  # past the table's "-----" line under its header
        self._block: list[str] = []  # a "For parameters:" block being read

    def feed(self, line: str) -> list[str]:
        """The lines to print for one line of asv's output (without its newline)."""
        out: list[str] = []
        prefix = _PREFIX.match(line)[0]
        body = line[len(prefix):]
        if self._block and (not body.strip() or body.lstrip().startswith("For parameters:")):
            shown = self._end_block()
            if not shown and not body.strip():
                return out  # the blank line that ended a dropped block
            out += shown
        if body.lstrip().startswith("For parameters:"):
            self._block = [line]
            return out
        if self._block:
            self._block.append(line)
            return out
        if _BORDER.match(body):
            if self._table is None:
                self._table, self._kept_rows, self._header_done = [line], 0, False
                return out
            self._table.append(line)
            table, self._table = self._table, None
            return out + (table if self._kept_rows else [])
        if self._table is not None:
            if body.rstrip().endswith(" n/a"):
                self.na_rows += 1
            else:
                self._table.append(line)
                self._kept_rows += self._header_done and body.strip() != ""
                self._header_done = self._header_done or body.strip().startswith("-")
            return out
        return [*out, line]

    def _end_block(self) -> list[str]:
        block, self._block = self._block, []
        lines = [line for line in block[1:] if line.strip()]
        skips = [_SKIPPED.match(line) for line in lines]
        if lines and all(skips):
            self.reasons.update(m["why"] for m in skips if m)
            return []
        return block

    def finish(self) -> list[str]:
        out = self._end_block() if self._block else []
        if self._table is not None:  # cut off: print what there is
            out += self._table
            self._table = None
        return out

    def summary(self) -> str:
        """One line: how many results were skipped, and why."""
        if not self.na_rows and not self.reasons:
            return "bench: no benchmark result was skipped"
        told = sum(self.reasons.values())
        counts = [f"{n} {why}" for why, n in self.reasons.most_common()]
        if self.na_rows > told:
            counts.append(f"{self.na_rows - told} with no reason in asv's log (no scenario has that case: "
                          "skip_params; or the metric is not measured there)")
        return f"bench: {max(self.na_rows, told)} benchmark results skipped (n/a, not listed): " + "; ".join(counts)


def run_quietly(command: list[str], **kwargs) -> int:
    """Run asv with its output through `AsvLog`, line by line, then the skip summary."""
    log = AsvLog()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          **kwargs) as process:
        assert process.stdout is not None
        for line in process.stdout:
            for shown in log.feed(line.rstrip("\n")):
                print(shown, flush=True)
    for shown in log.finish():
        print(shown)
    print(log.summary(), flush=True)
    return process.returncode


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
                worst = max(worst, run_quietly(command, cwd=REPO, env=env))
    return worst


def asv_machine(machine: str | None) -> int:
    """`asv machine --yes` (its questionnaire captured: printed only if it fails), then the
    torch/CUDA/GPU facts merged into the entry (`harness.frontends.asv_suite.record_asv_machine`);
    one line says what was recorded."""
    from harness.frontends.asv_suite import record_asv_machine

    command = [sys.executable, "-m", "asv", "machine", "--yes", *(["--machine", machine] if machine else [])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        print(f"bench: asv machine --yes failed (exit {done.returncode})", file=sys.stderr)
        return done.returncode
    entry = record_asv_machine(machine)
    facts = ", ".join(f"{key} {entry[key]}" for key in ("os", "cpu", "num_cpu", "ram", "torch", "cuda", "gpus") if key in entry)
    print(f"bench: asv machine {entry.get('machine')!r} recorded in ~/.asv-machine.json: {facts}")
    return 0


def _throughput_only(base_dir: Path, head_dir: Path, factor: float) -> bool:
    """True when the only regressions are throughput ones (noise may explain them)."""
    from harness.record.compare import compare_dirs

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

    from harness.record.compare import main as compare_main

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
    machine = sub.add_parser("machine", help="asv machine --yes, quietly, plus torch/CUDA/GPU facts; one line")
    machine.add_argument("--machine", default=None, help="asv machine name (default: asv's, the host name)")
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
    if args.command == "machine":
        return asv_machine(args.machine)
    return compare_refs(args)


if __name__ == "__main__":
    sys.exit(main())
