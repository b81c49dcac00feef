"""Case results and the run directory: results/<run-id>/{cases.jsonl, run.json}.

Each case is one JSON line appended with a single write under an exclusive lock and
flushed to disk, so a run killed at any moment keeps every finished case, and several
processes (xdist workers, concurrent shards) can append to one file without interleaving.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("passed", "failed", "error", "skipped")


@dataclass
class Failure:
    check: str  # mismatch | parity | transfers | output | expect_error | expect_failure | timeout | ...
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
    status: str = "passed"
    reason: str = ""  # why skipped
    failures: list[Failure] = field(default_factory=list)
    error: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # known engine properties, not failures
    tokens: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    ledger: dict[str, Any] | None = None
    started: float = 0.0
    duration_s: float = 0.0
    worker: str = ""

    def fail(self, check: str, message: str) -> None:
        self.failures.append(Failure(check, message))
        if self.status == "passed":
            self.status = "failed"

    def summary_line(self) -> str:
        if self.status == "skipped":
            return self.reason
        if self.failures:
            return "; ".join(f"{f.check}: {f.message.splitlines()[0]}" for f in self.failures)
        if self.error:
            return f"{self.error.get('type')}: {str(self.error.get('message', '')).splitlines()[0] if self.error.get('message') else ''}"
        return ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseResult:
        data = dict(data)
        data["failures"] = [Failure(**f) for f in data.get("failures", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def new_run_id() -> str:
    """Sortable by time and unique across concurrent runs on one results root."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class RunDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.cases_path = path / "cases.jsonl"
        self.run_path = path / "run.json"

    @classmethod
    def create(cls, root: Path, run_id: str | None = None) -> RunDirectory:
        """Make a fresh run directory; fails fast (OSError) if `root` is not writable."""
        root.mkdir(parents=True, exist_ok=True)
        path = root / (run_id or new_run_id())
        path.mkdir(exist_ok=False)
        probe = path / ".write-test"
        probe.write_bytes(b"x" * 4096)  # a full disk or read-only root fails here, not mid-run
        probe.unlink()
        return cls(path)

    def append(self, result: CaseResult) -> None:
        line = (json.dumps(result.to_json(), separators=(",", ":"), default=str) + "\n").encode()
        fd = os.open(self.cases_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_cases(self) -> list[CaseResult]:
        """Every complete line; a torn last line (killed mid-write) is ignored."""
        if not self.cases_path.exists():
            return []
        results = []
        for raw in self.cases_path.read_text().splitlines():
            try:
                results.append(CaseResult.from_json(json.loads(raw)))
            except (json.JSONDecodeError, TypeError):
                continue
        return results

    def write_run_info(self, info: dict[str, Any]) -> None:
        tmp = self.run_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(info, indent=2, default=str))
        tmp.replace(self.run_path)  # atomic

    def read_run_info(self) -> dict[str, Any]:
        if not self.run_path.exists():
            return {}
        return json.loads(self.run_path.read_text())


def environment_info() -> dict[str, Any]:
    """What run.json records about this machine and checkout."""
    import torch

    from harness import __version__
    from harness.versions import library_versions

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
    info["libraries"] = library_versions()  # every engine library (harness/versions.py)
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
