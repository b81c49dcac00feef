"""Probes that make a torch upgrade show up: which Tensor methods fail on a bare simulated
tensor before dispatch (those must be rerouted, and only those), which functions need the
dispatch mode, and whether libtorch still carries the error wording the simulation copies."""

from __future__ import annotations

import mmap
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.devices import errors, simulated_gpus
from harness.devices.sim_methods import BEFORE_DISPATCH, REROUTED
from harness.devices.sim_tensor import SimTensor, wrap

BEFORE_DISPATCH_ERROR = re.compile(
    r"not linked with support for cuda|not compiled with CUDA|Cannot access accelerator"
    r"|is not supported for tensor subclasses"
)
INTERNAL_FACTORY_ERROR = re.compile(r"Could not run '[\w:.]+' with arguments from the 'CUDA' backend")


def mat() -> Tensor:
    return wrap(torch.arange(12.0).reshape(3, 4), 0)


def idx() -> Tensor:
    return wrap(torch.tensor([2, 0]), 0)


def scalar() -> Tensor:
    return wrap(torch.tensor(1.5), 0)


# Tensor methods called as T.<method>(...): T=Tensor bypasses SimTensor's reroutes, T=SimTensor
# takes them, as user code does.
METHOD_PROBES = {
    "__getitem__": lambda T: T.__getitem__(mat(), (slice(None), slice(1, 3))),
    "__setitem__": lambda T: T.__setitem__(mat(), 0, 1.0),
    "item": lambda T: T.item(scalar()),
    "tolist": lambda T: T.tolist(mat()),
    "__bool__": lambda T: T.__bool__(scalar()),
    "__int__": lambda T: T.__int__(scalar()),
    "__float__": lambda T: T.__float__(scalar()),
    "__index__": lambda T: T.__index__(wrap(torch.tensor(2), 0)),
    "__complex__": lambda T: T.__complex__(scalar()),
    "__format__": lambda T: T.__format__(scalar(), ""),
    "nonzero": lambda T: T.nonzero(mat()),
    "new_tensor": lambda T: T.new_tensor(mat(), [1.0]),
    "new": lambda T: T.new(mat(), 2),
    "copy_": lambda T: T.copy_(mat(), torch.ones(3, 4)),
    "contiguous": lambda T: T.contiguous(T.t(mat())),
    "to": lambda T: T.to(mat(), torch.float16),
    "cuda": lambda T: T.cuda(mat()),
    "cpu": lambda T: T.cpu(mat()),
    "numpy": lambda T: T.numpy(mat()),
    "__array__": lambda T: T.__array__(mat()),
    "pin_memory": lambda T: T.pin_memory(mat()),
    "data_ptr": lambda T: T.data_ptr(mat()),
    "untyped_storage": lambda T: T.untyped_storage(mat()),
    "clone": lambda T: T.clone(mat()),
    "index_select": lambda T: T.index_select(mat(), 0, idx()),
    "masked_fill": lambda T: T.masked_fill(mat(), mat() > 3, 0.0),
    "masked_select": lambda T: T.masked_select(mat(), mat() > 3),
    "topk": lambda T: T.topk(mat(), 2),
    "sort": lambda T: T.sort(mat()),
    "argmax": lambda T: T.argmax(mat()),
    "cumsum": lambda T: T.cumsum(mat(), 0),
    "split": lambda T: T.split(mat(), 2),
    "unbind": lambda T: T.unbind(mat()),
    "index_copy_": lambda T: T.index_copy_(mat(), 0, idx(), wrap(torch.ones(2, 4), 0)),
    "scatter_": lambda T: T.scatter_(mat(), 1, wrap(torch.zeros(3, 1, dtype=torch.long), 0), 0.0),
    "gather": lambda T: T.gather(mat(), 1, wrap(torch.zeros(3, 1, dtype=torch.long), 0)),
    "multinomial": lambda T: T.multinomial(wrap(torch.ones(4), 0), 2),
    "uniform_": lambda T: T.uniform_(mat()),
    "fill_": lambda T: T.fill_(mat(), 1.0),
    "new_zeros": lambda T: T.new_zeros(mat(), 2),
    "new_full": lambda T: T.new_full(mat(), (2,), 1.0),
    "unique": lambda T: T.unique(mat()),
    "half": lambda T: T.half(mat()),
    "expand": lambda T: T.expand(mat(), 2, 3, 4),
    "view": lambda T: T.view(mat(), -1),
    "transpose": lambda T: T.transpose(mat(), 0, 1),
    "__iter__": lambda T: list(T.__iter__(mat())),
    "equal": lambda T: T.equal(mat(), mat()),
    "allclose": lambda T: T.allclose(mat(), mat()),
    "max": lambda T: T.max(mat(), 0),
    "softmax": lambda T: T.softmax(mat(), -1),
    "matmul": lambda T: T.matmul(mat(), T.t(mat())),
    "index_put_": lambda T: T.index_put_(mat(), (idx(),), wrap(torch.tensor(0.0), 0)),
    "type": lambda T: T.type(mat()),
    "get_device": lambda T: T.get_device(mat()),
}

# Functions that run on simulated tensors through dispatch alone (no function mode).
FUNCTION_PROBES = {
    "F.linear": lambda: F.linear(mat(), mat()),
    "F.embedding": lambda: F.embedding(idx(), mat()),
    "F.scaled_dot_product_attention": lambda: F.scaled_dot_product_attention(
        *(wrap(torch.ones(1, 1, 3, 4), 0) for _ in range(3))),
    "F.softmax": lambda: F.softmax(mat(), -1),
    "F.silu": lambda: F.silu(mat()),
    "F.layer_norm": lambda: F.layer_norm(mat(), (4,)),
    "F.rms_norm": lambda: F.rms_norm(mat(), (4,)),
    "F.pad": lambda: F.pad(mat(), (1, 1)),
    "F.one_hot": lambda: F.one_hot(idx(), 3),
    "torch.cat": lambda: torch.cat([mat(), mat()]),
    "torch.where": lambda: torch.where(mat() > 1, mat(), 0.0),
    "torch.isin": lambda: torch.isin(mat(), mat()),
    "torch.multinomial": lambda: torch.multinomial(wrap(torch.ones(4), 0), 2),
    "torch.einsum": lambda: torch.einsum("ij,kj->ik", mat(), mat()),
    "torch.searchsorted": lambda: torch.searchsorted(wrap(torch.tensor([1.0, 5.0]), 0), mat()),
    "torch.nonzero": lambda: torch.nonzero(mat()),
    "torch.quantile": lambda: torch.quantile(mat(), 0.5),
    "torch.repeat_interleave": lambda: torch.repeat_interleave(idx(), idx()),
    "torch.cdist": lambda: torch.cdist(mat(), mat()),
}

# The functions the simulation reroutes in its function mode because they fail before
# dispatch (none in torch 2.13) and those whose C++ kernels build tensors with a simulated
# tensor's options (run on the inner tensors by the mode, or under SimDispatchMode).
FUNCTIONS_FAILING_BEFORE_DISPATCH: set[str] = {"torch.nonzero"}  # reaches Tensor.nonzero's binding
FUNCTIONS_WITH_INTERNAL_FACTORIES = {"F.one_hot", "torch.where", "torch.quantile"}


def outcome(probe, *args) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe(*args)
    except Exception as exc:
        if BEFORE_DISPATCH_ERROR.search(str(exc)):
            return "before dispatch"
        if INTERNAL_FACTORY_ERROR.search(str(exc)):
            return "internal factory"
        return f"other: {type(exc).__name__}: {exc}"
    return "ok"


def test_the_rerouted_methods_are_exactly_those_failing_before_dispatch():
    results = {name: outcome(probe, Tensor) for name, probe in METHOD_PROBES.items()}
    failing = {name for name, result in results.items() if result == "before dispatch"}
    rerouted = {name for name, (_, why) in REROUTED.items() if why == BEFORE_DISPATCH}
    assert failing - rerouted == set(), f"torch changed: these now fail before dispatch, reroute them: {failing - rerouted}"
    assert rerouted - failing == set(), f"torch changed: these no longer fail before dispatch: {rerouted - failing}"


def test_every_probed_method_is_either_fine_or_rerouted():
    odd = {name: r for name, probe in METHOD_PROBES.items()
           if (r := outcome(probe, Tensor)) not in ("ok", "before dispatch") and name not in REROUTED}
    assert odd == {}, "a Tensor method fails on a simulated tensor in a new way"


def test_function_probes_match_the_known_gaps_of_dispatch_alone():
    results = {name: outcome(probe) for name, probe in FUNCTION_PROBES.items()}
    assert {n for n, r in results.items() if r == "before dispatch"} == FUNCTIONS_FAILING_BEFORE_DISPATCH
    assert {n for n, r in results.items() if r == "internal factory"} == FUNCTIONS_WITH_INTERNAL_FACTORIES
    assert {n: r for n, r in results.items() if r.startswith("other")} == {}


@pytest.mark.parametrize("name", sorted(METHOD_PROBES.keys() - {"numpy", "__array__", "pin_memory"}))
def test_every_probed_method_runs_inside_the_simulation(name):
    with simulated_gpus(count=1):
        assert outcome(METHOD_PROBES[name], SimTensor) == "ok"


@pytest.mark.parametrize("name", sorted(FUNCTION_PROBES))
def test_every_probed_function_runs_inside_the_simulation(name):
    with simulated_gpus(count=1):
        assert outcome(FUNCTION_PROBES[name]) == "ok"


def test_libtorch_still_carries_the_wording_the_simulation_copies():
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not library.exists():
        pytest.skip(f"no {library.name} in this torch build")
    fragments = [
        errors.SAME_DEVICE + "found at least two devices, ",  # TensorIterator
        errors.SAME_DEVICE + "got ",  # the wrapper check (adaption.cpp)
        ", different from other tensors on ",
        " (when checking argument in method ",
        "indices should be either on ",
        " or on the same device as the indexed tensor (",
        " for value tensor",
        "expected self and mask to be on the same device, but got mask on ",
        "Expected query, key, and value to have the same device type, but got query.device: ",
        "' device type for generator but found '",
        "Trying to pass too many CPU scalars to non-CPU kernel!",
    ]
    with library.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        missing = [f for f in fragments if data.find(f.encode()) == -1]
        old_wrapper_wording = data.find(b"(when checking argument for argument ") != -1
    assert missing == [], "libtorch's wording changed: update harness/devices/errors.py"
    assert not old_wrapper_wording, "the pre-2.6 wrapper wording is back: errors.wrapper_message must follow"
