"""One owner of a run, for every front end: its settings, its run.json, its cases, its close.

`samedevice run`, the pytest plugin, `samedevice merge` and the benchmark runner all write a
run the same way: `Run.start()` makes `results/<run-id>/` and writes `run.json` (typed:
`RunInfo`) saying the run is not complete yet; `record()` appends each case as it finishes;
`close()` rewrites run.json with how the run ended, writes report.md and junit.xml and removes
the appends' lock file. A run killed before `close()` still says, in run.json, that it is
incomplete.

`RunSettings` is the one home of every default a front end exposes as an option.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.record.results import (
    CaseResult,
    DamagedLine,
    FrontEnd,
    ResultsWriteError,
    RunDirectory,
    RunInfo,
    environment_info,
    wanted_ids,
    write_file,
)

DEFAULT_TIMEOUT = 600.0  # seconds per case where the scenario sets none


def results_root_default() -> Path:
    return Path(os.environ.get("SAMEDEVICE_RESULTS", "results"))


@dataclass(frozen=True)
class RunSettings:
    """How cases run and where results go: the defaults of every front end's options."""

    results_root: Path = field(default_factory=results_root_default)
    timeout: float = DEFAULT_TIMEOUT
    isolation: Literal["process", "none"] = "process"
    strict_devices: bool = False
    junit: Path | None = None  # also write JUnit XML here (every run has its own junit.xml)
    front_end: FrontEnd = "cli"


class Run:
    def __init__(self, directory: RunDirectory, info: RunInfo, settings: RunSettings) -> None:
        self.directory, self.info, self.settings = directory, info, settings

    @property
    def path(self) -> Path:
        return self.directory.path

    @classmethod
    def start(cls, settings: RunSettings, *, expected_ids: list[str] | None = None,
              selected_ids: list[str] | None = None, invalid_files: Sequence[str] = (),
              shard: str | None = None, environment: dict[str, Any] | None = None, run_id: str | None = None,
              **extra: Any) -> Run:
        """A fresh run directory and its first run.json (not complete). OSError if the
        results root is unusable, ResultsWriteError if run.json cannot be written."""
        directory = RunDirectory.create(settings.results_root, run_id)
        try:  # until run.json is written, an interrupt or a failure leaves no directory behind
            info = RunInfo(**(environment_info() if environment is None else environment), **extra,
                           run_id=directory.path.name, front_end=settings.front_end, started=time.time(),
                           expected_ids=expected_ids, selected_ids=selected_ids, shard=shard,
                           cases_selected=len(selected_ids) if selected_ids is not None else None,
                           invalid_files=list(invalid_files))
            run = cls(directory, info, settings)
            run.write_info()
        except BaseException:
            directory.discard()
            raise
        return run

    @classmethod
    def open(cls, path: Path, settings: RunSettings | None = None) -> Run:
        """An existing run (an xdist worker appends to its controller's; a benchmark's
        rounds pool into one directory)."""
        directory = RunDirectory(path)
        data = directory.read_run_info()
        info = RunInfo.model_validate(data) if data else RunInfo(run_id=directory.path.name)
        return cls(directory, info, settings or RunSettings())

    def expect(self, expected_ids: list[str], invalid_files: Sequence[str] = ()) -> None:
        """The cases this run is to run, once known (pytest: after collection)."""
        self.info.expected_ids = self.info.selected_ids = list(expected_ids)
        self.info.cases_selected = len(expected_ids)
        self.info.invalid_files = list(invalid_files)
        self.write_info()

    def record(self, result: CaseResult) -> None:
        """Append one finished case (ResultsWriteError: the disk is full, or read-only)."""
        self.directory.append(result)
        self.info.cases_finished += 1

    def write_info(self) -> None:
        self.directory.write_run_info(self.info.as_dict())

    def close(self, results: list[CaseResult] | None = None, *, interrupted: str | None = None,
              write_error: ResultsWriteError | None = None, exitstatus: int | None = None,
              damaged: Sequence[DamagedLine] = ()) -> list[str]:
        """Final run.json, report.md, junit.xml (and `settings.junit`). `results` default to
        what cases.jsonl holds. Returns a line per file that could not be written (run.json
        then keeps saying the run is incomplete)."""
        from harness.record import report
        from harness.record.junit import write_junit

        if results is None:
            read = self.directory.load_cases()
            results, damaged = read.results, read.damaged
        info = self.info
        info.finished, info.interrupted, info.exitstatus = time.time(), interrupted, exitstatus
        info.write_error = str(write_error) if write_error else None
        info.cases_finished = len(results)
        wanted = wanted_ids(info.as_dict())
        ran = {r.id for r in results}
        info.complete = (interrupted is None and write_error is None and exitstatus not in (2, 3)
                         and not damaged and (wanted is None or set(wanted) <= ran)
                         and not (info.gaps or info.duplicates or info.unexpected or info.problems))
        data = info.as_dict()
        steps = [
            (self.write_info, "; run.json keeps saying the run is incomplete"),
            (lambda: write_file(self.path / "report.md", report.markdown(results, data, damaged=damaged)), ""),
            (lambda: write_junit(results, self.path / "junit.xml"), ""),
        ]
        if self.settings.junit:
            steps.append((lambda: write_junit(results, self.settings.junit), ""))  # type: ignore[arg-type]
        problems = []
        for write, consequence in steps:
            try:
                write()
            except ResultsWriteError as exc:
                problems.append(f"{exc}{consequence}")
        self.directory.remove_lock_file()  # the owner closes the run once every writer is done
        return problems
