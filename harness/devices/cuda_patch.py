"""`torch.cuda.*`, `torch.accelerator.*`, `torch.device` and `torch.Generator` answering as
if GPUs existed, for the duration of a simulated run, restored exactly afterwards.

`torch.device(0)` and `torch.Generator(device="cuda")` are types, not torch functions, so no
mode sees them: they are replaced by look-alike classes whose isinstance/issubclass checks
answer for the real type. `nn.Module.to(1)` parses its arguments in
`torch._C._nn._parse_to`, also outside any mode.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from harness.devices import sim_streams
from harness.devices.sim_comm import COLLECTIVES
from harness.devices.sim_tensor import CUDA, check_index
from harness.devices.state import STATE, call_site

_RealDevice = torch.device
_RealGenerator = torch.Generator
_real_parse_to = torch._C._nn._parse_to
SIM_MEMORY_BYTES = 80 * 2**30  # what mem_get_info reports per simulated GPU


class SimGenerator(_RealGenerator):
    """A CPU generator that reports `cuda:<i>` (a CPU-only torch cannot build a CUDA one).
    Samples match a CPU run with the same seed."""

    _sim_index: int = 0

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return CUDA[self._sim_index]


def _int_device(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return CUDA[check_index(value)]
    return value


class _DeviceMeta(type):
    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], int) and not isinstance(args[0], bool):
            return _RealDevice("cuda", args[0])
        return _RealDevice(*args, **kwargs)

    def __instancecheck__(cls, obj):
        return isinstance(obj, _RealDevice)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _RealDevice)


class SimDevice(metaclass=_DeviceMeta):
    """Stands in for `torch.device`: `torch.device(0)` is cuda:0, as on a GPU build."""


class _GeneratorMeta(type):
    def __call__(cls, device: Any = "cpu"):
        device = _RealDevice(_int_device(device)) if not isinstance(device, _RealDevice) else device
        if device.type != "cuda":
            return _RealGenerator(device)
        generator = SimGenerator()
        generator._sim_index = check_index(device.index)
        return generator

    def __instancecheck__(cls, obj):
        return isinstance(obj, _RealGenerator)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _RealGenerator)


class SimGeneratorType(metaclass=_GeneratorMeta):
    """Stands in for `torch.Generator`: `torch.Generator(device="cuda:0")` works."""


def _parse_to(*args, **kwargs):
    # Outside the function mode: the mode's generic handler would read a `device=` keyword as a
    # factory's and hand back the host device, so `module.to(device="cuda:0")` stayed on the CPU.
    with torch._C.DisableTorchFunction():
        return _real_parse_to(*(_int_device(a) for a in args), **{k: _int_device(v) for k, v in kwargs.items()})


# --- torch.cuda ---------------------------------------------------------------------------


def _index_of(device: Any = None) -> int:
    if device is None:
        return STATE.current
    if isinstance(device, (str, _RealDevice)):
        device = _RealDevice(device)
        return check_index(device.index) if device.type == "cuda" else STATE.current
    return check_index(device)


def _set_device(device: Any) -> None:
    index = _index_of(device)
    if index >= 0:
        STATE.current = index


def _properties(device: Any = None) -> SimpleNamespace:
    index = _index_of(device)
    return SimpleNamespace(name=f"Simulated CUDA device {index}", major=9, minor=0, total_memory=SIM_MEMORY_BYTES,
                           multi_processor_count=132, is_integrated=False, gcnArchName="", uuid=f"sim-{index}",
                           L2_cache_size=50 * 2**20, warp_size=32)


class _DeviceContext:
    """torch.cuda.device(i) / torch.accelerator.device_index(i)."""

    def __init__(self, device: Any):
        self.index = -1 if device is None else _index_of(device)
        self.previous = -1

    def __enter__(self):
        self.previous = STATE.current
        if self.index >= 0:
            STATE.current = self.index
        return self

    def __exit__(self, *exc):
        STATE.current = self.previous
        return False


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


# --- paths answered, not run: a test through one proves nothing about the GPU path ---------


def not_exercised(what: str) -> None:
    """Note on the simulation that `what` (a GPU path it answers without running) was used,
    with the user's call site: "torch.compile called at test_x.py:12"."""
    note = f"{what} at {call_site()}"
    if note not in STATE.not_exercised:
        STATE.not_exercised.append(note)


# Libraries read current usage to place weights (transformers' device_map="auto" reads
# memory_reserved - memory_allocated): only a read from a test file is noted for those.
_CURRENT_USAGE = ("memory_allocated", "memory_reserved")


def _statistic(module: str, name: str, answer: Any) -> Callable[..., Any]:
    """torch.cuda.max_memory_allocated and kin: 0 (or nothing), and the read is noted."""

    def read(*args: Any, **kwargs: Any) -> Any:
        site = call_site().rsplit(":", 1)[0]
        base = os.path.basename(site)
        if name not in _CURRENT_USAGE or base == "conftest.py" or base.startswith("test_") or base.endswith("_test.py"):
            not_exercised(f"{module}.{name} used (simulated GPUs measure no memory)")
        return answer() if callable(answer) else answer

    return read


_real_compile = torch.compile


def _compile(model: Any = None, **kwargs: Any) -> Any:
    """torch.compile under simulation: noted, and nothing compiled (TORCHDYNAMO_DISABLE). A
    function compiled at import (`@torch.compile` on a module-level function) is noted when called."""
    if model is None:  # @torch.compile(mode=...)
        return lambda fn: _compile(fn, **kwargs)
    not_exercised("torch.compile called (nothing is compiled on simulated GPUs)")
    compiled = _real_compile(model, **kwargs)
    if not isinstance(compiled, types.FunctionType):
        return compiled

    @functools.wraps(compiled)
    def call(*args: Any, **call_kwargs: Any) -> Any:
        if STATE.active:
            not_exercised(f"{getattr(compiled, '__qualname__', 'a function')} from torch.compile called (ran eagerly)")
        return compiled(*args, **call_kwargs)

    return call


def _get_rng_state(device: Any = "cuda") -> torch.Tensor:
    """torch.cuda.get_rng_state: ops on simulated tensors draw from the CPU's default
    generator, so its state stands for every simulated GPU's (torch.random.fork_rng,
    torch.testing's freeze_rng_state save and restore it)."""
    _index_of(device)
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
    _index_of(device)
    torch.set_rng_state(new_state)


def _set_rng_state_all(new_states: Any) -> None:
    for state in new_states:
        _set_rng_state(state)


def _cuda_patches(count: int) -> dict[str, Any]:
    return {
        "is_available": lambda: True,
        "device_count": lambda: count,
        "current_device": lambda: STATE.current,
        "set_device": _set_device,
        "synchronize": sim_streams.synchronize_device,
        "get_device_name": lambda device=None: _properties(device).name,
        "get_device_properties": _properties,
        "get_device_capability": lambda device=None: (9, 0),
        "get_arch_list": lambda: ["sm_90"],
        "is_bf16_supported": lambda including_emulation=True: True,
        "mem_get_info": lambda device=None: (SIM_MEMORY_BYTES, SIM_MEMORY_BYTES),
        "memory_allocated": _statistic("torch.cuda", "memory_allocated", 0),
        "max_memory_allocated": _statistic("torch.cuda", "max_memory_allocated", 0),
        "memory_reserved": _statistic("torch.cuda", "memory_reserved", 0),
        "max_memory_reserved": _statistic("torch.cuda", "max_memory_reserved", 0),
        "memory_stats": _statistic("torch.cuda", "memory_stats", dict),
        "empty_cache": _nothing,
        "reset_peak_memory_stats": _statistic("torch.cuda", "reset_peak_memory_stats", None),
        "reset_max_memory_allocated": _statistic("torch.cuda", "reset_max_memory_allocated", None),
        "device": _DeviceContext,
        "Event": sim_streams.SimEvent,
        "Stream": sim_streams.SimStream,
        "stream": sim_streams.StreamContext,
        "current_stream": sim_streams.current_stream,
        "default_stream": sim_streams.default_stream,
        "set_stream": sim_streams.set_stream,
        "get_rng_state": _get_rng_state,
        "set_rng_state": _set_rng_state,
        "get_rng_state_all": lambda: [torch.get_rng_state() for _ in range(count)],
        "set_rng_state_all": _set_rng_state_all,
        "initial_seed": torch.initial_seed,
    }


def _accelerator_patches(count: int) -> dict[str, Any]:
    return {
        "is_available": lambda check_fork=False: True,
        "current_accelerator": lambda check_available=False: _RealDevice("cuda"),
        "device_count": lambda: count,
        "current_device_index": lambda: STATE.current,
        "current_device_idx": lambda: STATE.current,
        "set_device_index": _set_device,
        "set_device_idx": _set_device,
        "device_index": _DeviceContext,
        "synchronize": sim_streams.synchronize_device,
        "empty_cache": _nothing,
        "memory_allocated": _statistic("torch.accelerator", "memory_allocated", 0),
        "max_memory_allocated": _statistic("torch.accelerator", "max_memory_allocated", 0),
        "memory_reserved": _statistic("torch.accelerator", "memory_reserved", 0),
        "max_memory_reserved": _statistic("torch.accelerator", "max_memory_reserved", 0),
        "reset_peak_memory_stats": _statistic("torch.accelerator", "reset_peak_memory_stats", None),
        "get_memory_info": lambda device_index=None: (SIM_MEMORY_BYTES, SIM_MEMORY_BYTES),
        "get_device_capability": lambda device=None: {"major": 9, "minor": 0},
        "current_stream": sim_streams.current_stream,
        "set_stream": sim_streams.set_stream,
    }


_MISSING = object()


class Patches:
    """Attribute, environment and context-manager changes, undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        old = vars(owner).get(name, _MISSING)
        self._undo.append(lambda: delattr(owner, name) if old is _MISSING else setattr(owner, name, old))
        setattr(owner, name, value)

    def set_env(self, name: str, value: str) -> None:
        old = os.environ.get(name)
        self._undo.append(lambda: os.environ.pop(name, None) if old is None else os.environ.__setitem__(name, old))
        os.environ[name] = value

    def enter(self, context: Any) -> None:
        context.__enter__()
        self._undo.append(lambda: context.__exit__(None, None, None))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


HUB_KERNELS_ENV = "USE_HUB_KERNELS"
HUB_KERNELS_NOTE = ("transformers' Hub kernels are off under simulated GPUs (USE_HUB_KERNELS=NO): "
                    "they are CUDA binaries a simulated device cannot run")


def patch_torch(patches: Patches, count: int) -> None:
    """Make torch answer as if `count` CUDA devices existed; `patches.undo()` restores it."""
    for name, value in _cuda_patches(count).items():
        patches.set(torch.cuda, name, value)
    for name, value in _accelerator_patches(count).items():
        if hasattr(torch.accelerator, name):
            patches.set(torch.accelerator, name, value)
    patches.set(torch, "device", SimDevice)
    patches.set(torch, "Generator", SimGeneratorType)
    patches.set(torch._C._nn, "_parse_to", _parse_to)
    # DataParallel's scatter/broadcast/gather: absent from a CPU-only torch's torch._C
    for name, value in COLLECTIVES.items():
        patches.set(torch._C, name, value)
    patches.set(torch, "Stream", sim_streams.SimStream)  # DataParallel, transformers' offloaded cache
    patches.set(torch, "Event", sim_streams.SimEvent)
    patches.enter(sim_streams.fresh_run())  # streams, events, pinned memory: per run
    patches.set(torch.version, "cuda", torch.version.cuda or "12.8")
    # transformers (5.25+) swaps layers for Hub kernels when loading onto CUDA: CUDA binaries
    # fetched from the Hub, which a simulated GPU cannot run and a CPU-only CI must not
    # download. Off while simulated (the runner notes it on cases that used transformers).
    patches.set_env(HUB_KERNELS_ENV, "NO")
    # torch.compile cannot trace simulated tensors (transformers compiles static-cache
    # forwards on CUDA): torch.compile reads this variable when called and compiles nothing.
    # Dynamo is not imported for this (seconds); when loaded, its config says so too.
    patches.set_env("TORCHDYNAMO_DISABLE", "1")
    patches.set(torch, "compile", _compile)  # noted: a test through it is not exercised
    dynamo_config = sys.modules.get("torch._dynamo.config")
    if dynamo_config is not None:
        patches.enter(dynamo_config.patch(disable=True))
