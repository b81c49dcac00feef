"""Case results and the run directory: results/<run-id>/{cases.jsonl, run.json, ...}.

Writing: each case is one JSON line appended under an exclusive lock (filelock: flock on
POSIX, LockFileEx on Windows; nothing POSIX-only is imported with this module, which the
pytest plugin loads) and flushed to disk, so several processes (xdist workers, concurrent
shards) append to one file without interleaving and a run killed at any moment keeps every
finished case. A short write is completed; a write that fails (full disk, read-only
filesystem) cuts the file back to its last whole line and raises `ResultsWriteError`
naming the file, so the caller stops the run cleanly. Other files (run.json, report.md,
junit.xml) are replaced atomically through `write_file`; no temp file outlives a failure.

Reading never trusts the file: a line that is not UTF-8, not JSON, not an object or not a
case comes back as a `DamagedLine` (file, line, why), never as a traceback or a silent drop;
a damaged run.json raises `DamagedResults` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from harness.devices.ledger import Ledger
from harness.execute.case_errors import ErrorInfo

Status = Literal["passed", "failed", "error", "skipped"]
STATUSES: tuple[Status, ...] = ("passed", "failed", "error", "skipped")


@dataclass
class Failure:
    check: str  # mismatch | parity | transfers | placement | phases | output | features... | expect_*
    message: str


@dataclass
class CaseResult:
    id: str
    scenario: str
    engine: str
    device: str
    file: str
    line: int
    features: list[str] = field(default_factory=list)
    status: Status = "passed"
    reason: str = ""  # why skipped
    failures: list[Failure] = field(default_factory=list)
    error: ErrorInfo | None = None
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # known engine properties, not failures
    tokens: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    ledger: Ledger | None = None
    weights: dict[str, Any] | None = None  # where the engine's weights were after load
    started: float = 0.0
    duration_s: float = 0.0
    worker: str = ""

    def summary_line(self) -> str:
        if self.status == "skipped":
            return self.reason
        if self.failures:
            return "; ".join(f"{f.check}: {_first_line(f.message)}" for f in self.failures)
        if self.error is not None:
            return self.error.one_line()
        return ""

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["failures"] = [asdict(f) for f in self.failures]
        data["error"] = self.error.to_json() if self.error is not None else None
        data["ledger"] = self.ledger.to_json() if self.ledger is not None else None
        return data


def _first_line(text: object) -> str:
    lines = str(text or "").splitlines()
    return lines[0] if lines else ""


def new_run_id() -> str:
    """Sortable by time and unique across concurrent runs on one results root."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


LOCK_TIMEOUT_S = 60.0  # an append holds the lock for microseconds; a minute means something is wrong
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


class ResultsWriteError(OSError):
    """A results file could not be written (full disk, read-only filesystem, ...)."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno) if self.errno is not None else None
        code = f" [{name}]" if name else ""
        return f"cannot write {self.path}: {self.strerror}{code}"


class DamagedResults(ValueError):
    """A results file that cannot be read as what it should be; names the file and line."""

    def __init__(self, path: Path | str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")
        self.path, self.line, self.reason = str(path), line, reason


@dataclass(frozen=True)
class DamagedLine:
    path: str
    line: int
    reason: str
    torn: bool = False  # the last line, cut short: what a writer killed mid-write leaves

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class CasesRead:
    """What a cases.jsonl holds: the readable cases and every line that was not one."""

    results: list[CaseResult] = field(default_factory=list)
    damaged: list[DamagedLine] = field(default_factory=list)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written: a write may take fewer bytes than asked (a
    nearly full disk, a signal); the rest is retried, and a failure raises."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def fsync_directory(path: Path) -> None:
    """Make a created or renamed entry in `path` durable (not possible, nor needed, on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes | str) -> None:
    """Replace `path` atomically: a temp file beside it, written in full, flushed, renamed.
    On failure the temp file is removed and `ResultsWriteError` names `path`."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8", "backslashreplace")  # a lone surrogate never aborts a write
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ResultsWriteError(path, exc) from None
    except BaseException:  # an interrupt mid-write: `path` is as it was, and no temp file is left
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


FrontEnd = Literal["cli", "pytest", "merge", "bench"]


class RunInfo(BaseModel):
    """run.json. The environment (versions, host, devices, git commit) is recorded too; keys
    a front end adds of its own (a benchmark's label and rounds) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    label: str | None = None  # a benchmark's or a user's name for the run
    devices: list[str] | None = None  # the device labels asked for (-d)
    front_end: FrontEnd = "cli"
    started: float = 0.0
    finished: float | None = None
    complete: bool = False
    shard: str | None = None
    # The cases this run was cut from (every shard's), and this run's own share of them;
    # None where unknown (a pytest run learns them only at the end of collection).
    expected_ids: list[str] | None = None
    selected_ids: list[str] | None = None
    cases_selected: int | None = None
    cases_finished: int = 0
    invalid_files: list[str] = []
    interrupted: str | None = None
    write_error: str | None = None
    exitstatus: int | None = None
    # merge only
    merged_from: list[str] | None = None
    duplicates: list[str] = []
    gaps: list[str] = []
    unexpected: list[str] = []
    problems: list[str] = []
    damaged: list[str] = []

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)  # absent: not known (yet)


# How a reader (report, merge, compare) checks each field of a run.json it did not write, from
# RunInfo's own types: one schema for writing and reading. A field absent or null is not known.
_BASE_RULES: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    list[str]: ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


def _field_rule(annotation: Any) -> tuple[str, Callable[[Any], bool]] | None:
    args = [a for a in get_args(annotation) if a is not type(None)]
    optional = len(args) < len(get_args(annotation))
    base = args[0] if optional and len(args) == 1 else annotation
    if get_origin(base) is Literal:
        choices = get_args(base)
        rule: tuple[str, Callable[[Any], bool]] | None = (f"one of {', '.join(map(str, choices))}", lambda v: v in choices)
    else:
        rule = _BASE_RULES.get(base)
    if rule is None or not optional:
        return rule
    description, valid = rule
    return description, lambda v: v is None or valid(v)


_RUN_INFO_FIELDS = {name: rule for name, field in RunInfo.model_fields.items()
                    if (rule := _field_rule(field.annotation)) is not None}


def wanted_ids(run_info: Mapping[str, Any]) -> list[str] | None:
    """The cases a run was to run, from its run.json: `selected_ids` (its own share), else
    `expected_ids` unless it is a shard (those are every shard's cases, not its own); None
    where unknown (a pytest run before collection ended, an old shard's run.json)."""
    wanted = run_info.get("selected_ids")
    if wanted is None and not run_info.get("shard"):
        wanted = run_info.get("expected_ids")
    return wanted


def _json_kind(value: object) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _decode_json(raw: bytes) -> Any:
    """Parse one JSON document; ValueError with a short reason (never the data itself)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # nested too deeply, an integer too long
        raise ValueError(f"not JSON ({type(exc).__name__}: {str(exc)[:100]})") from None


_case_adapter: Any = None


def case_from_record(data: Any) -> CaseResult:
    """A CaseResult from one decoded cases.jsonl record; ValueError says what is wrong."""
    global _case_adapter
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {_json_kind(data)}, not an object")
    if _case_adapter is None:
        from pydantic import TypeAdapter

        _case_adapter = TypeAdapter(CaseResult)  # checks every field against its annotation
    from pydantic import ValidationError

    data = dict(data)
    nested = {name: data.pop(name, None) for name in ("error", "ledger")}  # typed records: their own from_json
    try:
        result = _case_adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(record)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ValueError(f"not a case result: field {where}: {first['msg']}{more}") from None
    for name, record, kind in (("error", nested["error"], ErrorInfo), ("ledger", nested["ledger"], Ledger)):
        if record is None:
            continue
        try:
            if not isinstance(record, dict):
                raise TypeError(f"a JSON {_json_kind(record)}, not an object")
            setattr(result, name, kind.from_json(record))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a case result: field {name}: {exc}") from None
    if result.status not in STATUSES:
        raise ValueError(f"not a case result: status {result.status!r} is not one of {', '.join(STATUSES)}")
    return result


class RunDirectory:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.cases_path = self.path / "cases.jsonl"
        self.run_path = self.path / "run.json"
        self.lock_path = self.path / ".cases.jsonl.lock"

    @classmethod
    def create(cls, root: Path, run_id: str | None = None) -> RunDirectory:
        """Make a fresh run directory; fails fast (OSError) if `root` is not writable. A
        failure or an interrupt leaves no directory behind."""
        root.mkdir(parents=True, exist_ok=True)
        path = root / (run_id or new_run_id())
        path.mkdir(exist_ok=False)
        probe = path / ".write-test"
        try:  # a full disk or read-only root fails here, not mid-run
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o644)
            try:
                write_all(fd, b"x" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            cls(path).discard()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)
        return cls(path)

    def discard(self) -> None:
        """Remove a run directory that never became a run (no run.json yet: made, then
        interrupted or failed), so no empty directory is left for `report` to reject."""
        shutil.rmtree(self.path, ignore_errors=True)

    def append(self, result: CaseResult) -> None:
        """One line, all of it or none of it; ResultsWriteError if the disk refuses."""
        line = (json.dumps(result.to_json(), separators=(",", ":"), default=str) + "\n").encode()
        from filelock import FileLock  # imported here: the plugin loads this module at pytest start

        try:
            with FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT_S):
                created = not self.cases_path.exists()
                fd = os.open(self.cases_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_BINARY, 0o644)
                try:
                    end = os.fstat(fd).st_size
                    try:
                        write_all(fd, line)
                    except BaseException:  # a failed write, or SIGINT/SIGTERM between two writes
                        _cut_back(fd, end)
                        raise
                    os.fsync(fd)  # the line is whole from here on: an interrupt now keeps it
                finally:
                    os.close(fd)
                if created:
                    fsync_directory(self.path)
        except OSError as exc:
            raise ResultsWriteError(self.cases_path, exc) from None

    def remove_lock_file(self) -> None:
        """Remove the lock file `append` leaves behind, once the run is closed. Only the run's
        owner calls this, when no other process can still append (xdist workers have ended
        before their controller closes the run). It is taken first, so an append still in
        progress finishes; a lock held past the timeout is left in place. An append after
        this (a benchmark's next round) makes it again."""
        from filelock import FileLock, Timeout

        if not self.lock_path.exists():
            return
        try:
            with FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT_S), contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
        except (Timeout, OSError):  # still held, or already gone with the directory: leave it
            pass

    def load_cases(self) -> CasesRead:
        """Every case in cases.jsonl, and every line that is not one (with file, line, why).
        Blank lines are ignored. OSError if the file cannot be read at all."""
        read = CasesRead()
        if not self.cases_path.exists():
            return read
        lines = self.cases_path.read_bytes().split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                read.results.append(case_from_record(_decode_json(raw)))
            except ValueError as exc:
                reason, torn = str(exc), number == len(lines)  # no newline after it: cut short
                if torn:
                    reason = f"torn last line (no newline; the writer was killed mid-write?): {reason}"
                read.damaged.append(DamagedLine(str(self.cases_path), number, reason, torn))
        return read

    def read_cases(self) -> list[CaseResult]:
        """The readable cases only (see `load_cases` for the damaged lines)."""
        return self.load_cases().results

    def write_run_info(self, info: dict[str, Any]) -> None:
        write_file(self.run_path, json.dumps(info, indent=2, default=str))

    def read_run_info(self) -> dict[str, Any]:
        """run.json as a dict ({} when absent); DamagedResults when it is not a run.json."""
        if not self.run_path.exists():
            return {}
        raw = self.run_path.read_bytes()
        try:
            info = _decode_json(raw)
        except ValueError as exc:
            _damaged(self.run_path, str(exc))
        if not isinstance(info, dict):
            _damaged(self.run_path, f"a JSON {_json_kind(info)}, not an object")
        for key, (expected, valid) in _RUN_INFO_FIELDS.items():
            if key in info and not valid(info[key]):
                _damaged(self.run_path, f"field {key!r}: expected {expected}, got a JSON {_json_kind(info[key])}")
        return info


def _damaged(path: Path, reason: str) -> NoReturn:
    raise DamagedResults(path, 0, reason)


def _cut_back(fd: int, size: int) -> None:
    """Remove a partly written line so the file ends with a whole line (best effort: the
    failure that got us here is what gets reported)."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        pass


def environment_info() -> dict[str, Any]:
    """What run.json records about this machine and checkout."""
    import torch

    from harness import __version__
    from harness.engines.versions import library_versions

    info: dict[str, Any] = {
        "samedevice": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "git_commit": _git_commit(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    info["libraries"] = library_versions()  # every engine library (harness/engines/versions.py)
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    info["devices"] = devices
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
