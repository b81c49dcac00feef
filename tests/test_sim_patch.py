"""torch.cuda, torch.accelerator, torch.device and torch.Generator answer as if GPUs existed
inside `simulated_gpus()`, and are exactly restored afterwards."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from torch import nn

from harness.devices import SimulationUnavailable, simulated_gpus
from harness.devices.ledger import Ledger

PATCHED = [
    (torch.cuda, name) for name in (
        "is_available", "device_count", "current_device", "set_device", "synchronize", "get_device_properties",
        "get_device_name", "mem_get_info", "is_initialized", "device", "Event", "Stream", "current_stream",
    )
] + [
    (torch.accelerator, name) for name in (
        "is_available", "current_accelerator", "device_count", "current_device_index", "set_device_index",
        "synchronize", "device_index",
    )
] + [(torch, "device"), (torch, "Generator"), (torch._C._nn, "_parse_to"), (torch.version, "cuda")] + [
    (torch._C, name) for name in ("_scatter", "_gather", "_broadcast_coalesced", "_broadcast")
] + [(torch, "Stream"), (torch.accelerator, "current_stream"), (threading.Thread, "start"), (torch.nn.Module, "_apply")]


def snapshot() -> dict:
    return {
        "attributes": {(owner.__name__, name): getattr(owner, name, None) for owner, name in PATCHED},
        "env": {k: os.environ.get(k) for k in ("HF_DEACTIVATE_ASYNC_LOAD", "TORCHDYNAMO_DISABLE")},
        "swap": torch.__future__.get_swap_module_params_on_conversion(),
        "grad": torch.is_grad_enabled(),
    }


def test_torch_cuda_answers_as_if_gpus_existed():
    ledger = Ledger()
    with simulated_gpus(count=3, ledger=ledger):
        assert torch.cuda.is_available()
        assert torch.cuda.device_count() == 3
        assert torch.cuda.current_device() == 0
        torch.cuda.set_device(2)
        assert torch.cuda.current_device() == 2
        assert torch.ones(1, device="cuda").device == torch.device("cuda", 2), "'cuda' means the current device"
        with torch.cuda.device(1):
            assert torch.cuda.current_device() == 1
        assert torch.cuda.current_device() == 2
        torch.cuda.synchronize()
        assert torch.cuda.get_device_properties(0).total_memory > 0
        free, total = torch.cuda.mem_get_info(1)
        assert 0 < free <= total
        assert torch.version.cuda
    assert ledger.count("load", "sync") == 1, "torch.cuda.synchronize is a host sync"


def test_torch_accelerator_answers_as_if_gpus_existed():
    with simulated_gpus(count=2):
        assert torch.accelerator.is_available()
        assert torch.accelerator.current_accelerator() == torch.device("cuda")
        assert torch.accelerator.device_count() == 2
        torch.accelerator.set_device_index(1)
        assert torch.accelerator.current_device_index() == 1
        with torch.accelerator.device_index(0):
            assert torch.cuda.current_device() == 0


def test_devices_generators_and_ints_resolve_to_simulated_gpus():
    with simulated_gpus(count=2):
        assert torch.device(1) == torch.device("cuda", 1)
        assert isinstance(torch.device("cpu"), torch.device)
        assert isinstance(torch.ones(1).device, torch.device)
        generator = torch.Generator(device="cuda:1")
        assert generator.device == torch.device("cuda", 1)
        assert isinstance(generator, torch.Generator)
        assert isinstance(torch.Generator(), torch.Generator)
        layer = nn.Linear(4, 2).to(1)
        assert layer.weight.device == torch.device("cuda", 1)
        assert nn.Linear(4, 2).cuda().weight.is_cuda
        assert torch.zeros(2, device=0).device == torch.device("cuda", 0)
        assert torch.ones(2).to(1).device.index == 1
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.ones(2).to("cuda:2")


def test_inside_gradients_are_off_and_nothing_requires_grad():
    with simulated_gpus():
        assert not torch.is_grad_enabled()
        weight = nn.Linear(4, 2).to("cuda:0").weight
        assert not weight.requires_grad, "a simulated tensor never requires grad (autograd would abort)"
        assert weight.requires_grad_().requires_grad is False


def test_transformers_settings_are_set_inside():
    with simulated_gpus():
        assert os.environ["TORCHDYNAMO_DISABLE"] == "1"
        assert torch.__future__.get_swap_module_params_on_conversion()


def test_everything_is_restored_on_exit_even_after_an_error():
    before = snapshot()
    inside = {}

    def fail_inside():
        with simulated_gpus(count=2):
            inside.update(snapshot())
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fail_inside()
    assert inside != before
    assert snapshot() == before
    assert not torch.cuda.is_available()
    with pytest.raises(RuntimeError, match="accelerator"):
        torch.device(0)


def test_contexts_do_not_nest_and_count_is_checked():
    with simulated_gpus(), pytest.raises(SimulationUnavailable, match="nest"), simulated_gpus():
        pass
    with pytest.raises(ValueError, match="count"):
        simulated_gpus(count=0).__enter__()


def test_torch_compile_runs_eagerly_inside():
    with simulated_gpus():
        doubled = torch.compile(lambda x: x * 2)(torch.ones(2, device="cuda:0"))
        assert doubled.device == torch.device("cuda", 0)
        assert doubled.cpu().tolist() == [2.0, 2.0]


def test_meta_device_factories_pass_through_untouched():
    with simulated_gpus():
        meta = torch.empty(3, 4, device="meta")
        assert type(meta) is torch.Tensor
        assert meta.is_meta
        with torch.device("meta"):
            layer = nn.Linear(4, 2)
        assert layer.weight.is_meta
        assert layer.to_empty(device="cuda:0").weight.device == torch.device("cuda", 0)


def test_default_device_contexts_place_factories_on_simulated_gpus():
    with simulated_gpus(count=2):
        with torch.device("cuda:1"):
            assert torch.zeros(2).device == torch.device("cuda", 1)
        torch.set_default_device("cuda:0")
        try:
            assert torch.arange(3).device == torch.device("cuda", 0)
            assert torch.tensor([1.0]).device == torch.device("cuda", 0)
        finally:
            torch.set_default_device(None)


def test_nothing_leaks_into_cuda_initialisation_after_the_context():
    with simulated_gpus():
        torch.zeros(1, device="cuda")
        torch.set_default_device("cuda")
        torch.ones(1)
        torch.set_default_device(None)
    # libtorch remembers a successful torch.cuda._lazy_init for the life of the process:
    # the simulation must never let one succeed
    with pytest.raises(AssertionError, match="Torch not compiled with CUDA enabled"):
        torch.zeros(1, device="cuda")


def test_pinned_host_memory_is_plain_host_memory_inside():
    with simulated_gpus():
        staged = torch.full((4,), 1.0, pin_memory=True)  # a CPU-only torch refuses this outside
        assert staged.device == torch.device("cpu")
        assert torch.ones(2).pin_memory().to("cuda:0", non_blocking=True).is_cuda
