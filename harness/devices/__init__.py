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

from harness.devices.errors import classify_device_error, is_kernel_gap
from harness.devices.sim_tensor import SimTensor
from harness.devices.simulate import (
    Simulation,
    SimulationUnavailable,
    simulated_gpus,
    unavailable_reason,
)
from harness.devices.tracking import track_transfers

__all__ = [
    "SimTensor",
    "Simulation",
    "SimulationUnavailable",
    "classify_device_error",
    "is_kernel_gap",
    "simulated_gpus",
    "track_transfers",
    "unavailable_reason",
]
