"""Device labels, parsed in one place: `cpu`, `cuda:N`, `auto` (a scenario's devices, where a
model goes) and their simulated forms `sim:cuda:N`, `sim:auto` (case labels: the same device
on simulated GPUs). The format, the case list, the testing API, the benchmarks and the report
all read a label through `DeviceLabel.parse`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

MAX_GPUS = 64
SIM_PREFIX = "sim:"
DEVICE_KINDS = ("cpu", "cuda", "auto")

# A scenario device: cuda:N with N < MAX_GPUS, written without leading zeros (cuda:01 would
# be a second label for cuda:1). Also the pattern of the JSON schema.
DEVICE_RE = re.compile(r"^(cpu|auto|cuda:([0-9]|[1-5][0-9]|6[0-3]))$")
_SHAPE = re.compile(r"(sim:)?(cpu|auto|cuda:\d+)")


@dataclass(frozen=True)
class DeviceLabel:
    kind: Literal["cpu", "cuda", "auto"]
    index: int | None = None  # cuda:N only
    simulated: bool = False

    @classmethod
    def parse(cls, text: object, *, simulated: bool = True) -> DeviceLabel:
        """The label `text` names; ValueError (one line) if it names none. `simulated=False`:
        a scenario's device, without the sim: prefix."""
        shape = _SHAPE.fullmatch(text) if isinstance(text, str) else None
        prefixed, body = (shape[1] is not None, shape[2]) if shape else (False, "")
        if shape is None or (prefixed and (not simulated or body == "cpu")):
            accepted = "cpu, cuda:N, auto, sim:cuda:N, sim:auto" if simulated else "cpu, cuda:N, auto"
            raise ValueError(f"must be one of {accepted}, but got {text!r}")
        if not DEVICE_RE.match(body):
            raise ValueError(f"cuda:N takes N from 0 to {MAX_GPUS - 1} without leading zeros, but got {text!r}")
        kind, _, index = body.partition(":")
        return cls(kind, int(index) if index else None, prefixed)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return (SIM_PREFIX if self.simulated else "") + self.device

    @property
    def device(self) -> str:
        """The scenario device: the label without sim:."""
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    def with_simulated(self, simulated: bool) -> DeviceLabel:
        return replace(self, simulated=simulated)

    def gpus_needed(self, auto_gpus: int) -> int:
        """GPUs the device needs: none on cpu, N+1 for cuda:N, `auto_gpus` for auto."""
        if self.kind == "cpu":
            return 0
        return auto_gpus if self.kind == "auto" else self.index + 1  # type: ignore[operator]

    def placement(self, auto_gpus: int) -> tuple[str, ...]:
        """Where a model goes: ("cpu",), ("cuda:N",), or cuda:0 .. cuda:auto_gpus-1 for auto."""
        if self.kind == "auto":
            return tuple(f"cuda:{i}" for i in range(auto_gpus))
        return (self.device,)
