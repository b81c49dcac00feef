"""`simulated_gpus()`: run code as if CUDA GPUs existed, on a CPU-only machine."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from harness.devices import sim_methods  # noqa: F401  (installs SimTensor's rerouted methods)
from harness.devices.cuda_patch import Patches, patch_torch
from harness.devices.ledger import Ledger
from harness.devices.sim_modes import SimFunctionMode
from harness.devices.sim_tensor import MAX_DEVICES
from harness.devices.state import STATE


class SimulationUnavailable(RuntimeError):
    """Simulated GPUs cannot run here (or are already running)."""


@dataclass
class Simulation:
    count: int
    ledger: Ledger | None
    kernel_gaps: list[str] = field(default_factory=list)  # CPU kernels a GPU-only path lacked
    stand_ins: list[str] = field(default_factory=list)  # GPU kernels computed another way (exactly)
    # GPU paths the simulation answers without running them (torch.compile, memory statistics)
    not_exercised: list[str] = field(default_factory=list)


def unavailable_reason() -> str | None:
    """None when simulated GPUs can run here, else why not (the runner skips with it)."""
    if not hasattr(torch.Tensor, "_make_wrapper_subclass"):
        return f"torch {torch.__version__} has no wrapper tensor subclasses"
    return None


class _ThreadMode(SimFunctionMode):
    """The function mode of a thread started inside a simulated run. A pooled thread may
    outlive its run: from then on it passes every call through."""

    def __init__(self, run: int):
        super().__init__()
        self.run = run

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if STATE.run != self.run or not STATE.active:
            return func(*args, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


_in_run = threading.local()  # .run: the simulated run this thread takes part in
_real_start = threading.Thread.start


def _start(thread: threading.Thread) -> None:
    """Thread.start while simulated: a thread started from a simulated thread runs inside the
    simulation too (modes and grad mode are per thread). DataParallel runs its replicas in
    threads, transformers loads weights in a thread pool."""
    run = STATE.run
    if STATE.active and getattr(_in_run, "run", None) == run:
        target = thread.run

        def simulated_run() -> None:
            _in_run.run = run
            with torch.no_grad(), _ThreadMode(run):
                target()

        thread.run = simulated_run  # type: ignore[method-assign]
    _real_start(thread)


_real_apply = torch.nn.Module._apply
HELD_PARAMETER = ("an autograd graph still holds it (a forward run with gradients on, e.g. a CPU reference, "
                  "whose outputs are alive): simulated GPUs move parameters with torch.utils.swap_tensors, which "
                  "then fails; run that forward under torch.no_grad() or delete its outputs before moving")


def _apply(module: torch.nn.Module, fn, recurse: bool = True):
    """Module._apply (`.to()`, `.cuda()`, `.half()`) saying why a parameter could not be swapped."""
    try:
        return _real_apply(module, fn, recurse)
    except RuntimeError as exc:
        cause = exc.__cause__
        held = isinstance(cause, RuntimeError) and str(cause).startswith("Expected use_count of t1")
        if not held or HELD_PARAMETER in str(exc):
            raise
        raise RuntimeError(f"{exc}: {HELD_PARAMETER}") from cause


@contextmanager
def simulated_gpus(count: int = 2, ledger: Ledger | None = None) -> Iterator[Simulation]:
    """Inside, torch answers as if `count` CUDA GPUs existed: tensors placed on `cuda:<i>` are
    CPU tensors that report `cuda:<i>`, ops across devices fail with PyTorch's own error, and
    every host/device copy and host sync is recorded into `ledger` with its call site.

    Inference only: gradients are off inside (an autograd node with a simulated output aborts
    the process). Threads started inside (from the calling thread or from such a thread)
    run inside the simulation too; threads started before it do not.
    """
    reason = unavailable_reason()
    if reason:
        raise SimulationUnavailable(reason)
    if STATE.active:
        raise SimulationUnavailable("simulated GPUs are already active: contexts do not nest")
    if not 1 <= count <= MAX_DEVICES:
        raise ValueError(f"`count` must be between 1 and {MAX_DEVICES}, but got {count}")
    simulation = Simulation(count, ledger)
    swap = torch.__future__.get_swap_module_params_on_conversion()
    patches = Patches()
    try:
        patch_torch(patches, count)
        patches.set(threading.Thread, "start", _start)
        patches.set(torch.nn.Module, "_apply", _apply)
        STATE.run += 1
        _in_run.run = STATE.run
        STATE.active, STATE.count, STATE.current = True, count, 0
        STATE.ledger, STATE.kernel_gaps, STATE.stand_ins = ledger, simulation.kernel_gaps, simulation.stand_ins
        STATE.not_exercised = simulation.not_exercised
        torch.__future__.set_swap_module_params_on_conversion(True)  # wrappers need swap_tensors
        with torch.no_grad(), SimFunctionMode():
            yield simulation
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
        patches.undo()
        STATE.active, STATE.count, STATE.current, STATE.ledger = False, 0, 0, None
        _in_run.run = None
        STATE.kernel_gaps, STATE.stand_ins, STATE.not_exercised = [], [], []
