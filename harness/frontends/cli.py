"""The `samedevice` command: runs scenarios on CPU and (simulated) GPUs, and the tools around a run.

Exit codes: 0 nothing failed; 1 a case failed or errored, or a scenario file is invalid
(the valid ones still ran), or `report` found damaged lines; 2 usage error (checked before
any case runs: paths, timeouts, filters, an empty selection, the junit path) or unusable
results (a results file that cannot be written mid-run stops the run: every finished case
is kept and run.json says the run is incomplete); 130 interrupted (every finished case is
kept).

Everything printed that came from data (ids, paths, keys, messages) goes through
harness.record.render: control characters are escaped and nothing is read as rich markup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

from harness import __version__
from harness.format.suggest import closest
from harness.frontends.arguments import (
    build_timeout,
    device_filter_problems,
    engine_filter_problems,
    output_file_problem,
    results_root_problem,
    timeout_seconds,
)
from harness.record.lifecycle import DEFAULT_TIMEOUT
from harness.record.render import terminal, terminal_text


def bundled_scenarios() -> Path:
    """The suite shipped with samedevice: harness/bundled_scenarios/ in an installed wheel
    (package data, see pyproject.toml), else the source checkout's scenarios/ (editable)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "bundled_scenarios"
    return installed if installed.is_dir() else package.parent / "scenarios"


# ./scenarios where it exists, else the bundled suite.
DEFAULT_SCENARIOS = Path("scenarios") if Path("scenarios").is_dir() else bundled_scenarios()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would print the top-level usage; the command's own is the useful one
        _unknown_arguments(parser, getattr(args, "command", None), unknown)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C where no command handles it (loading, starting a run): one line
        _eprint("samedevice: interrupted (SIGINT)")
        return 130


def _unknown_arguments(parser: argparse.ArgumentParser, command: str | None, unknown: list[str]) -> NoReturn:
    """Exit 2 with the command's usage and, for a mistyped option, the closest one it has."""
    commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
    target: argparse.ArgumentParser = commands.get(command, parser) if command else parser
    options = [o for action in target._actions for o in action.option_strings]
    hint = ""
    for arg in unknown:
        close = closest(arg.split("=", 1)[0], options) if arg.startswith("--") else None
        if close:
            hint = f" (did you mean {close}?)"
            break
    target.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samedevice", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"samedevice {__version__}")
    sub = parser.add_subparsers(dest="command")

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument("paths", nargs="*", type=Path, help="scenario files or directories (default: scenarios/)")
        p.add_argument("--bundled", action="store_true",
                       help="the suite shipped with samedevice (in the installed package), wherever you are")
        p.add_argument("--engine", "-e", action="append", default=[], help="only these engines (repeatable)")
        p.add_argument("--device", "-d", action="append", default=[],
                       help="only these devices: cpu, cuda:N, auto, sim:cuda:N, sim:auto, or the groups "
                            "sim (all simulated), gpu (all real GPU), all (repeatable; default all)")
        p.add_argument("-k", dest="keyword", default=None, help="only cases whose id contains this text")
        p.add_argument("--model", default=None, metavar="PATH|hub:ORG/NAME[@REV]",
                       help="no YAML: run the standard suite (samedevice init scenarios writes it out) against this "
                            "model, a local transformers-format directory or a model in the local Hugging Face "
                            "cache, with the --engine engines (default transformers)")

    run = sub.add_parser("run", help="run scenarios and write results/<run-id>/")
    selection(run)
    run.add_argument("--results", type=Path, default=None, help="results root (default: results/ or $SAMEDEVICE_RESULTS)")
    run.add_argument("--strict-devices", action="store_true", help="a case whose device is absent fails instead of skipping")
    run.add_argument("--timeout", type=timeout_seconds, default=DEFAULT_TIMEOUT,
                     help=f"seconds per case where the scenario sets none, counted from the case's own start "
                          f"(worker start, imports and model building excluded; default {DEFAULT_TIMEOUT:g})")
    run.add_argument("--isolation", choices=("process", "none"), default="process",
                     help="process: cases run in a worker process, so a crash or hang is that case's error "
                          "(default); none: in this process (debugging)")
    run.add_argument("--shard", default=None, metavar="I/N",
                     help="run only shard I of N (deterministic, balanced by expected cost)")
    run.add_argument("--junit", type=Path, default=None, metavar="FILE",
                     help="also write JUnit XML here (default: only results/<run-id>/junit.xml)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
    run.add_argument("--allow-empty", action="store_true",
                     help="a selection with no case, or a run whose every case skipped, is not an error (default: exit 2 "
                          "for an empty selection, 1 when nothing ran, so a typo or a missing engine never makes "
                          "a green job; --strict-devices fails a run where nothing ran regardless)")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list the cases and why any would be skipped")
    selection(lst)
    lst.set_defaults(func=cmd_list)

    rep = sub.add_parser("report", help="markdown summary of a run directory")
    rep.add_argument("run_dir", type=Path)
    rep.add_argument("--output", "-o", type=Path, default=None, help="write here instead of stdout")
    rep.set_defaults(func=cmd_report)

    sch = sub.add_parser("schema", help="print the JSON Schema of scenario files")
    sch.set_defaults(func=cmd_schema)

    mat = sub.add_parser("matrix", help="the CI job matrix (device kind x engine x shard)")
    mat.add_argument("paths", nargs="*", type=Path, help="scenario files or directories (default: scenarios/)")
    mat.add_argument("--format", choices=("github", "json", "text", "workflow"), default="json",
                     help="github: for strategy.matrix fromJSON; json: each job with the ids of its cases; text: "
                          "each job's case count and command; workflow: a whole GitHub Actions workflow (default "
                          "json). Engine x device labels where nothing can run get no job: listed on stderr")
    mat.add_argument("--gpus-per-runner", type=int, default=2, help="GPUs on a GPU runner (default 2)")
    mat.add_argument("--cost-per-job", type=float, default=400.0, help="expected cost units per shard (default 400)")
    mat.set_defaults(func=cmd_matrix)

    mrg = sub.add_parser("merge", help="merge shard run directories into one run")
    mrg.add_argument("run_dirs", nargs="+", type=Path)
    mrg.add_argument("--results", type=Path, default=None, help="results root for the merged run (default results/)")
    mrg.add_argument("--summary", type=Path, default=None, help="append the markdown report here (e.g. $GITHUB_STEP_SUMMARY)")
    mrg.set_defaults(func=cmd_merge)

    doc = sub.add_parser("doctor", help="versions, devices, simulation and engines available here")
    doc.add_argument("--selftest", action="store_true",
                     help="also run a workload of known transfers through the active tracker (real CUDA where "
                          "present, else simulated GPUs) and check the ledger against it; exit 1 on any mismatch")
    doc.add_argument("--tracker", choices=("auto", "sim", "cuda"), default="auto",
                     help="the tracker --selftest checks: auto (cuda where available, else sim; default)")
    doc.set_defaults(func=cmd_doctor)

    ini = sub.add_parser("init", help="write starter files: `init scenarios` (the standard suite as YAML), "
                                      "`init asv` (samedevice's asv suite in a repository)")
    init_sub = ini.add_subparsers(dest="what", required=True)
    scn = init_sub.add_parser("scenarios", help="the standard suite as an editable YAML file")
    scn.add_argument("--engine", "-e", default="transformers", help="the engine the suite runs (default transformers)")
    scn.add_argument("--model", default=None, metavar="PATH|hub:ORG/NAME[@REV]",
                     help="the model (default: the generated tiny llama)")
    scn.add_argument("--output", "-o", type=Path, default=Path("scenarios/standard.yaml"),
                     help="where to write it (default scenarios/standard.yaml)")
    scn.add_argument("--force", action="store_true", help="overwrite an existing file")
    scn.set_defaults(func=cmd_init)
    asv = init_sub.add_parser("asv", help="asv.conf.json and a benchmarks module running samedevice's asv suite")
    asv.add_argument("directory", nargs="?", type=Path, default=Path("."), help="the repository (default: .)")
    asv.add_argument("--scenarios", action="append", type=Path, default=[], metavar="PATH",
                     help="scenario files or directories whose `benchmark: true` scenarios are measured "
                          "(repeatable; default: DIRECTORY/scenarios)")
    asv.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                     help="a module that registers engines, imported as $SAMEDEVICE_PLUGINS does (repeatable; "
                          "engines installed through the samedevice.engines entry point need none)")
    asv.add_argument("--force", action="store_true", help="replace asv.conf.json and the benchmarks module if present")
    asv.set_defaults(func=cmd_init_asv)

    chk = sub.add_parser("check-engine", help="conformance battery for a registered engine (exit 0 only if conformant)")
    chk.add_argument("engine", help="a registered engine name (see `samedevice doctor`)")
    chk.add_argument("--device", "-d", action="append", default=[],
                     help="only these devices: cpu, sim:cuda:0, sim:auto, cuda:0, auto (repeatable; default: every "
                          "device kind the engine declares, simulated and real where present)")
    chk.add_argument("--isolation", choices=("process", "none"), default="process",
                     help="process: every case in a worker process, so a crash fails its line (default); none: in this process")
    chk.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds per case (default {DEFAULT_TIMEOUT:g})")
    chk.add_argument("--budget", default=None, metavar="h2d=N,d2h=N,d2d=N,syncs=N",
                     help="per decode token, on every device and feature, instead of the engine's declared transfer "
                          "profile (Capabilities.transfers; the reference engine's where it declares none); a count "
                          "not named is not judged")
    chk.set_defaults(func=cmd_check_engine)

    arc = sub.add_parser("architectures", help="model families, which have a tiny form here, and a sweep run's table")
    arc.add_argument("--results", type=Path, default=None, metavar="RUN_DIR",
                     help="a run directory of the architecture sweep: its family x feature x device table")
    arc.add_argument("--build", action="store_true", help="also build each tiny model (cached), so build failures show")
    arc.add_argument("--output", "-o", type=Path, default=None, help="write here instead of stdout")
    arc.add_argument("--fail-on-failures", action="store_true", help="with --results: exit 1 if a case failed or errored")
    arc.set_defaults(func=cmd_architectures)

    from harness.record import compare

    compare.add_parser(sub)
    return parser


def _report_broken_plugins() -> dict[str, str]:
    """Each plugin that failed to import, with its error (its engines' scenarios are invalid,
    naming it; the run still runs the rest, and fails)."""
    from harness.engines import broken_plugins

    broken = broken_plugins()
    for name, why in sorted(broken.items()):
        print(f"samedevice: plugin {terminal(name)} failed to load: {terminal(why)}", file=sys.stderr)
    return broken


def _usage_error(message: str) -> NoReturn:
    print(f"samedevice: error: {terminal(message)}", file=sys.stderr)
    raise SystemExit(2)


def _select(args: argparse.Namespace):
    from harness.execute.cases import expand, selected
    from harness.frontends.scenarios import load_paths

    problems = device_filter_problems(args.device) + engine_filter_problems(args.engine)
    if problems:
        _usage_error("; ".join(problems))
    paths = args.paths or [DEFAULT_SCENARIOS]
    if getattr(args, "bundled", False):
        if args.paths or getattr(args, "model", None):
            _usage_error("--bundled runs the bundled suite: give no scenario paths or --model with it")
        paths = [bundled_scenarios()]
    if getattr(args, "model", None):
        if args.paths:
            _usage_error("give scenario paths or --model (the standard suite), not both")
        paths = [_standard_suite_file(args, args.engine or ["transformers"])]
    missing = [p for p in paths if not p.exists()]
    if missing:
        _usage_error(f"no such file or directory: {missing[0]}")
    loaded = load_paths(paths)
    cases = [c for s in loaded.scenarios for c in expand(s)]
    # `-e ENGINE` with no scenario path and no --model, where no default scenario lists the
    # engine (a user's plugin): the standard suite on a generated tiny model, for those engines.
    unlisted = [] if args.paths or getattr(args, "model", None) else [
        e for e in args.engine if not any(c.engine == e for c in cases)]
    if unlisted:
        suite = load_paths([_standard_suite_file(args, unlisted, because=f"no scenario in {paths[0]} lists "
                                                 f"engine {', '.join(unlisted)}")])
        loaded.errors.extend(suite.errors)
        cases += [c for s in suite.scenarios for c in expand(s)]
    cases = [c for c in cases if selected(c, args.engine, args.device)]
    if getattr(args, "keyword", None):
        cases = [c for c in cases if args.keyword in c.id]
    return loaded.errors, cases


def cmd_architectures(args: argparse.Namespace) -> int:
    from harness.frontends import architectures

    return architectures.main(args.results, args.build, args.output, args.fail_on_failures)


def model_source(text: str) -> dict:
    """`--model` as a scenario's `model:` mapping: `hub:ORG/NAME[@REV]` or a directory."""
    if text.startswith("hub:"):
        name, _, revision = text.removeprefix("hub:").partition("@")
        return {"hub": name, **({"revision": revision} if revision else {})}
    return {"path": str(Path(text).resolve())}


def _standard_suite_file(args: argparse.Namespace, engines: list[str], because: str = "") -> Path:
    """The standard suite of `engines` for `--model` (without it, a generated tiny model of an
    architecture each engine runs), written where the run can point at it."""
    import hashlib

    from harness.engines import get_engine
    from harness.format.scenario import HubModel, PathModel
    from harness.frontends.standard_suite import suite_for, to_yaml
    from harness.models.sources import ModelSourceError, describe_model
    from harness.models.tinymodel import cache_root
    from harness.record.results import ResultsWriteError, write_file

    source = model_source(args.model) if args.model else None
    if source is not None:
        try:  # before any suite is written: one line naming --model, not a temporary file
            describe_model(HubModel(**source) if "hub" in source else PathModel(**source))
        except (ModelSourceError, ValueError) as exc:
            _usage_error(f"--model {args.model}: {exc}")
    scenarios = []
    for engine in engines:
        families = get_engine(engine).capabilities.families
        generated = {"family": "llama" if families is None or "llama" in families else sorted(families)[0]}
        kept, left_out = suite_for(engine, source or generated)
        for line in left_out:
            print(f"samedevice: standard suite: left out {line}", file=sys.stderr)
        scenarios += [dict(s, name=f"{s['name']}-{engine}") if len(engines) > 1 else s for s in kept]
    # Named by its content in the cache, not in a fresh temporary directory: the same model
    # and engines reuse one file across runs (none piles up in /tmp), and the path that
    # results and reports name stays readable after the run.
    text = to_yaml(scenarios)
    path = cache_root() / "suites" / f"standard-suite-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        try:  # atomic: a concurrent run reads a whole file or none
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(path, text)
        except (OSError, ResultsWriteError) as exc:
            _usage_error(f"{f'--model {args.model}' if args.model else 'standard suite'}: cannot keep the standard "
                         f"suite: {exc}")
    what = args.model if args.model else "a generated tiny model"
    print(f"samedevice: {because + ': running ' if because else ''}the standard suite for {what}: {path} "
          "(samedevice init scenarios writes it out)", file=sys.stderr)
    return path


def cmd_init(args: argparse.Namespace) -> int:
    from harness.frontends.standard_suite import suite_for, to_yaml

    if args.what != "scenarios":
        print(f"samedevice init: error: unknown target {args.what!r}", file=sys.stderr)
        return 2
    target = args.output
    if target.exists() and not args.force:
        print(f"samedevice init: error: {target} exists (--force to overwrite)", file=sys.stderr)
        return 2
    scenarios, left_out = suite_for(args.engine, model_source(args.model) if args.model else {"family": "llama"})
    for line in left_out:
        print(f"samedevice init: left out {line}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(to_yaml(scenarios))
    print(f"wrote {target}: {len(scenarios)} scenarios for engine {args.engine}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from harness.execute.cases import skip_reason

    errors, cases = _select(args)
    broken = _report_broken_plugins()
    for error in errors:  # a scenario that would not load is listed as such, never as `runs`
        print(f"{terminal(error.scenario or error.path)}\tinvalid: {terminal(str(error))}")
    for case in cases:
        skip = skip_reason(case)
        print(f"{terminal(case.id)}\t{'skip: ' + terminal(skip[0]) if skip else 'runs'}")
    print(f"{len(cases)} cases, {len(errors)} invalid scenario file problems", file=sys.stderr)
    return 1 if errors or broken else 0


class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so no `except Exception` swallows it."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess test
    raise _Terminated()


def _console():
    """stderr console: markup, highlighting and emoji codes off, so data prints literally."""
    from rich.console import Console

    console = Console(stderr=True, markup=False, highlight=False, emoji=False)
    if not console.is_terminal:  # CI logs: wide rows, not folded columns ($COLUMNS if set)
        width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 200
        console = Console(stderr=True, width=width, markup=False, highlight=False, emoji=False)
    return console


def _eprint(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _empty_selection(args: argparse.Namespace, selected_before_shard: int) -> str:
    paths = ", ".join(str(p) for p in (args.paths or [bundled_scenarios() if args.bundled else DEFAULT_SCENARIOS]))
    if args.shard and selected_before_shard:
        return f"shard {args.shard} holds none of the {selected_before_shard} selected cases"
    filters = [f"-e {e}" for e in args.engine] + [f"-d {d}" for d in args.device]
    filters += [f"-k {args.keyword}"] if args.keyword else []
    if filters:
        return f"no case in {paths} matches {' '.join(filters)}"
    return f"no valid scenario in {paths}"


def cmd_run(args: argparse.Namespace) -> int:
    from rich.text import Text

    from harness.execute.case import RunOptions
    from harness.execute.worker import make_executor
    from harness.record import report
    from harness.record.lifecycle import Run, RunSettings
    from harness.record.results import ResultsWriteError

    console = _console()
    try:
        build_timeout()
    except ValueError as exc:
        _usage_error(str(exc))
    if args.junit is not None:
        problem = output_file_problem(args.junit, "--junit")
        if problem:
            _usage_error(problem)
    errors, cases = _select(args)
    broken = _report_broken_plugins()
    expected_ids = [c.id for c in cases]
    if args.shard:
        from harness.execute.sharding import select_shard

        try:
            cases = select_shard(cases, args.shard)
        except ValueError as exc:
            _usage_error(str(exc))
    for error in errors:
        _eprint(f"invalid scenario: {terminal(error)}")
    if not cases and (errors or broken) and not args.allow_empty:
        _eprint("samedevice: nothing to run: every selected scenario is invalid (above)")
        return 1
    if not cases and not args.allow_empty:
        _usage_error(f"nothing to run: {_empty_selection(args, len(expected_ids))} "
                     "(--allow-empty accepts an empty run)")
    settings = RunSettings(**({"results_root": args.results} if args.results else {}), timeout=args.timeout,
                           isolation=args.isolation, strict_devices=args.strict_devices, junit=args.junit)
    try:
        run = Run.start(settings, expected_ids=expected_ids, selected_ids=[c.id for c in cases],
                        invalid_files=[str(e) for e in errors], shard=args.shard)
    except ResultsWriteError as exc:
        _eprint(f"samedevice: error: {terminal(exc)}")
        return 2
    except OSError as exc:
        _eprint(f"samedevice: error: {terminal(results_root_problem(Path(settings.results_root), exc))}")
        return 2
    results: list = []
    interrupted: str | None = None
    write_error: ResultsWriteError | None = None
    execute, previous = None, signal.getsignal(signal.SIGTERM)
    try:  # from here on, an interrupt closes the run: run.json says "interrupted"
        signal.signal(signal.SIGTERM, _on_sigterm)
        options = RunOptions(strict_devices=settings.strict_devices)
        execute = make_executor(settings.isolation, settings.timeout)
        with _progress(console, len(cases), enabled=not args.no_progress) as advance:
            for case in cases:
                result = execute(case, options)
                try:
                    run.record(result)
                except ResultsWriteError as exc:  # a full disk, a read-only filesystem: stop here
                    write_error = exc
                    break
                results.append(result)
                advance(case.id, result.status)
    except (KeyboardInterrupt, _Terminated) as exc:
        interrupted = "SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
    finally:
        getattr(execute, "stop", lambda: None)()
        signal.signal(signal.SIGTERM, previous)
        if write_error is not None:
            _eprint(f"samedevice: error: {terminal(write_error)}; the run stopped after {len(results)} of "
                    f"{len(cases)} cases (every finished case is kept)")
        # What cases.jsonl holds is the run: an interrupt between writing a case and counting
        # it here leaves the case on disk, whole.
        with contextlib.suppress(OSError):
            results = run.directory.load_cases().results
        unwritten = run.close(results, interrupted=interrupted, write_error=write_error)
        for line in unwritten:
            _eprint(f"samedevice: error: {terminal(line)}")

    console.print(report.console_table(results))
    for r in results:
        if r.status in ("failed", "error"):
            heading = Text.assemble((r.status.upper(), "bold red"), f" {terminal(r.id)} ({terminal(r.file)}:{r.line})")
            console.print(heading, soft_wrap=True)
            for f in r.failures:
                console.print(terminal_text(f"    {f.check}: {f.message}", indent="      "), soft_wrap=True)
            if r.status == "error" and r.error is not None:
                console.print(terminal_text(f"    {r.error.one_line()}"), soft_wrap=True)
    plugins = f"; {len(broken)} plugin(s) failed to load" if broken else ""
    console.print(terminal_text(f"{report.counts_line(results)}; {len(errors)} invalid scenario problem(s){plugins}. "
                                f"Results: {run.path}"), soft_wrap=True)
    if write_error is not None or unwritten:
        return 2
    if interrupted:
        console.print(terminal_text(f"interrupted ({interrupted}): {len(results)} of {len(cases)} cases finished and kept"),
                      soft_wrap=True)
        return 130
    bad = any(r.status in ("failed", "error") for r in results)
    if bad or errors or broken:
        return 1
    return _nothing_ran_exit(results, args)


def _nothing_ran_exit(results: list, args: argparse.Namespace) -> int:
    """0 when a case ran; else 1 (every case skipped, so the run checked nothing) with the
    skip reasons on stderr, unless --allow-empty; --strict-devices fails it regardless."""
    from collections import Counter

    if any(r.status != "skipped" for r in results):
        return 0
    reasons = Counter(r.reason for r in results)
    for reason, count in reasons.most_common(3):
        _eprint(f"skipped: {count} x {terminal(reason)}")
    if len(reasons) > 3:
        _eprint(f"skipped: {len(reasons) - 3} more reasons in the report")
    nothing = f"nothing ran: all {len(results)} selected cases were skipped" if results else "nothing ran: no case selected"
    if args.strict_devices:
        _eprint(f"samedevice: error: {nothing}, and --strict-devices fails a run that exercised no device "
                "(--allow-empty does not change that)")
        return 1
    if args.allow_empty:
        return 0
    _eprint(f"samedevice: error: {nothing} (reasons above; --allow-empty accepts a run where nothing ran)")
    return 1


class _progress:
    """A rich progress bar on a terminal; one line per case otherwise (CI logs)."""

    def __init__(self, console, total: int, enabled: bool) -> None:
        self.console, self.total = console, total
        self.enabled = enabled and console.is_terminal
        self.done = 0

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("running", total=self.total)
        return self.advance

    def advance(self, case_id: str, status: str) -> None:
        self.done += 1
        if self.enabled:
            self.bar.update(self.task, advance=1, description=terminal(case_id)[:60])
        else:
            print(f"[{self.done}/{self.total}] {status:7} {terminal(case_id)}", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


def cmd_report(args: argparse.Namespace) -> int:
    from harness.record import report
    from harness.record.results import DamagedResults, ResultsWriteError, RunDirectory, write_file

    run_dir = RunDirectory(args.run_dir)
    if not run_dir.cases_path.exists() and not run_dir.run_path.exists():
        _eprint(f"samedevice: error: {terminal(args.run_dir)} is not a run directory (no cases.jsonl or run.json)")
        return 2
    damaged: list = []
    try:
        try:
            info = run_dir.read_run_info()
        except DamagedResults as exc:
            damaged.append(str(exc))
            info = {}
        read = run_dir.load_cases()
    except OSError as exc:
        _eprint(f"samedevice: error: cannot read {terminal(exc.filename or args.run_dir)}: {terminal(exc.strerror or exc)}")
        return 2
    damaged += read.damaged
    for item in damaged:
        _eprint(f"damaged: {terminal(item)}")
    text = report.markdown(read.results, info, damaged=damaged)
    if args.output:
        try:
            write_file(args.output, text)
        except ResultsWriteError as exc:
            _eprint(f"samedevice: error: {terminal(exc)}")
            return 2
    else:
        sys.stdout.write(text)
    if damaged:
        _eprint(f"samedevice report: {len(damaged)} damaged line(s) in {terminal(args.run_dir)}, listed in the report")
        return 1
    if not run_dir.run_path.exists():
        _eprint(f"samedevice report: {terminal(args.run_dir)} has no run.json: versions, devices and completeness "
                "are unknown")
        return 1
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from harness.format.scenario import scenario_json_schema

    print(json.dumps(scenario_json_schema(), indent=2))
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    from harness.execute import matrix as ci

    args.engine, args.device = [], []
    errors, cases = _select(args)
    for error in errors:
        print(f"invalid scenario: {terminal(error)}", file=sys.stderr)
    matrix = ci.build_matrix(cases, args.gpus_per_runner, args.cost_per_job, paths=[str(p) for p in args.paths])
    for case_id in matrix.unschedulable:
        print(f"unschedulable: {case_id} needs more than {args.gpus_per_runner} GPUs per runner", file=sys.stderr)
    if args.format != "text":  # text prints them on stdout
        for left_out in matrix.left_out:
            print(terminal(left_out.line()), file=sys.stderr)
    if args.format == "github":
        print(ci.github_matrix(matrix.jobs))
    elif args.format == "workflow":
        sys.stdout.write(ci.render_workflow(matrix))
    elif args.format == "text":
        sys.stdout.write(ci.text_matrix(matrix))
    else:
        print(ci.json_matrix(matrix, len(cases)))
    return 1 if errors or matrix.unschedulable else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from harness.record import report
    from harness.record.lifecycle import results_root_default
    from harness.record.merge import merge_runs

    root = Path(args.results or results_root_default())
    try:
        outcome = merge_runs(args.run_dirs, root)
    except OSError as exc:  # the merged run cannot be written
        _eprint(f"samedevice: error: {terminal(results_root_problem(root, exc))}")
        return 2
    for label, items in (("duplicate", outcome.duplicates), ("gap", outcome.gaps),
                         ("unexpected", outcome.unexpected), ("problem", outcome.problems),
                         ("damaged", outcome.damaged)):
        for item in items:
            _eprint(f"{label}: {terminal(item)}")
    if args.summary:
        try:
            with open(args.summary, "a", encoding="utf-8", errors="backslashreplace") as summary:
                summary.write(outcome.report)
        except OSError as exc:
            _eprint(f"samedevice: error: cannot append the summary to {terminal(args.summary)}: {terminal(exc.strerror or exc)}")
            return 2
    bad = [r for r in outcome.results if r.status in ("failed", "error")]
    _eprint(f"merged {outcome.sources_read} of {len(args.run_dirs)} runs: {report.counts_line(outcome.results)}; "
            f"{len(outcome.gaps)} gaps, {len(outcome.duplicates)} duplicates, {len(outcome.damaged)} damaged lines, "
            f"{len(outcome.problems)} problems -> {terminal(outcome.run_dir.path)}")
    return 1 if bad or not outcome.complete else 0


def cmd_check_engine(args: argparse.Namespace) -> int:
    from harness.engines import UnknownEngine, get_engine
    from harness.execute.worker import make_executor
    from harness.frontends.check_engine import check_engine, device_targets, parse_budget

    try:
        get_engine(args.engine)
    except UnknownEngine as exc:
        print(f"samedevice check-engine: error: {exc}", file=sys.stderr)
        return 2
    problems = device_filter_problems(args.device)
    if problems:
        _usage_error("; ".join(problems))
    try:
        targets = device_targets(args.engine, args.device)
        budget = parse_budget(args.budget) if args.budget is not None else None
    except ValueError as exc:
        _usage_error(str(exc))
    print(f"samedevice check-engine {args.engine}")
    execute = make_executor(args.isolation, args.timeout)
    try:
        lines = check_engine(args.engine, targets, execute, lambda line: print(line, flush=True), budget)
    finally:
        getattr(execute, "stop", lambda: None)()
    tally = {v: sum(line.verdict == v for line in lines) for v in ("PASS", "FAIL", "SKIP")}
    verdict = "conformant" if not tally["FAIL"] else "NOT conformant"
    print(f"{args.engine}: {verdict} ({tally['PASS']} passed, {tally['FAIL']} failed, {tally['SKIP']} skipped)")
    return 1 if tally["FAIL"] else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from harness.frontends.doctor import report_lines

    print("\n".join(report_lines()))
    if not args.selftest:
        return 0
    from harness.devices.selftest import run_selftest

    print()
    report = run_selftest(args.tracker)
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1


def cmd_init_asv(args: argparse.Namespace) -> int:
    from harness.frontends.asv_init import init_asv

    try:
        result = init_asv(args.directory, args.scenarios, args.plugin, args.force)
    except FileNotFoundError as exc:
        print(f"samedevice init asv: error: {exc}", file=sys.stderr)
        return 2
    if not result.ok:
        for path in result.refused:
            print(f"samedevice init asv: {path} exists; not replaced (--force replaces it)", file=sys.stderr)
        return 2
    for path in result.written:
        print(f"wrote {path}")
    for path in result.kept:
        print(f"kept  {path}")
    for line in result.summary:
        print(line)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print("next, in that repository (samedevice[bench] installed): asv machine --yes; "
          "asv run --set-commit-hash HEAD; asv publish")
    return 0


if __name__ == "__main__":
    sys.exit(main())
