"""`simulated_gpus()`: run code as if CUDA GPUs existed, on a CPU-only machine."""

from __future__ import annotations

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


def unavailable_reason() -> str | None:
    """None when simulated GPUs can run here, else why not (the runner skips with it)."""
    if not hasattr(torch.Tensor, "_make_wrapper_subclass"):
        return f"torch {torch.__version__} has no wrapper tensor subclasses"
    return None


@contextmanager
def simulated_gpus(count: int = 2, ledger: Ledger | None = None) -> Iterator[Simulation]:
    """Inside, torch answers as if `count` CUDA GPUs existed: tensors placed on `cuda:<i>` are
    CPU tensors that report `cuda:<i>`, ops across devices fail with PyTorch's own error, and
    every host/device copy and host sync is recorded into `ledger` with its call site.

    Inference only: gradients are off inside (an autograd node with a simulated output aborts
    the process). Not thread-safe: run model code on the calling thread.
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
        STATE.active, STATE.count, STATE.current = True, count, 0
        STATE.ledger, STATE.kernel_gaps, STATE.stand_ins = ledger, simulation.kernel_gaps, simulation.stand_ins
        torch.__future__.set_swap_module_params_on_conversion(True)  # wrappers need swap_tensors
        with torch.no_grad(), SimFunctionMode():
            yield simulation
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
        patches.undo()
        STATE.active, STATE.count, STATE.current, STATE.ledger = False, 0, 0, None
        STATE.kernel_gaps, STATE.stand_ins = [], []
