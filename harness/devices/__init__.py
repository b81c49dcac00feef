"""Devices for samedevice: simulated CUDA GPUs on a CPU-only machine, and transfer tracking.

    from harness.devices import simulated_gpus, track_transfers, SimulationUnavailable
    with simulated_gpus(count=2, ledger=ledger):   # torch.cuda.* answers as if 2 GPUs existed
        model.to("cuda:0"); model(ids.to("cuda:0"))
    with track_transfers(ledger):                   # plain CPU or real CUDA
        ...

Modules, one concern each: `sim_tensor` (the wrapper tensor and its dispatch rules),
`sim_methods` (Tensor methods rerouted before dispatch), `sim_modes` (the torch-function
layer), `sim_comm` (DataParallel's scatter / gather / broadcast), `cuda_patch` (torch.cuda /
accelerator / device / Generator), `simulate` (the context manager, and threads started in it), `tracking` (call sites, real-CUDA and CPU tracking), `errors` (PyTorch's wording).
"""

from __future__ import annotations

import importlib
from typing import Any

# The public names, each from its module, imported on first use: the ledger (harness.devices.ledger)
# is read by results and reports that must not import torch (the CLI starts without it).
_EXPORTS = {
    "SimTensor": "sim_tensor",
    "Simulation": "simulate",
    "SimulationUnavailable": "simulate",
    "classify_device_error": "errors",
    "is_kernel_gap": "errors",
    "simulated_gpus": "simulate",
    "track_transfers": "tracking",
    "unavailable_reason": "simulate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.devices' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"harness.devices.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
