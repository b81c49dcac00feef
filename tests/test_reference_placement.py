"""Under `auto`, activations hop once per device boundary and the chosen token hops back
once: the device-to-device count per token is exactly that, on simulated GPUs."""

from __future__ import annotations

import pytest
import torch

from harness.devices.ledger import Ledger
from harness.format.scenario import ModelSpec
from harness.models import tinymodel
from reference_impl import GenerateConfig, beam_search, generate, load_model
from reference_impl.loading import split_layers


def test_layers_are_split_into_contiguous_balanced_groups():
    plan = [d.index for d in split_layers(5, ["cuda:0", "cuda:1"])]
    assert plan == [0, 0, 0, 1, 1], f"5 layers on 2 devices: {plan}"


@pytest.mark.parametrize(("family", "gpus"), [("llama", 3), ("mixtral", 3), ("llama", 2)])
def test_auto_copies_between_devices_once_per_boundary_and_once_back(family, gpus):
    try:
        from harness.devices import simulated_gpus, unavailable_reason
    except ImportError as exc:
        pytest.skip(f"simulated GPUs unavailable: {exc}")
    if unavailable_reason():
        pytest.skip(f"simulated GPUs unavailable: {unavailable_reason()}")
    directory = tinymodel.model_dir(ModelSpec(family=family, num_layers=gpus))
    devices = [f"cuda:{i}" for i in range(gpus)]
    ledger = Ledger()
    with simulated_gpus(count=gpus, ledger=ledger), torch.no_grad():
        model = load_model(directory, devices, quantization="q8_0" if family == "mixtral" else None)
        generate(model, [5, 17, 42], GenerateConfig(max_new_tokens=9), ledger.set_phase)
    ledger.decode_tokens = 8
    assert ledger.per_token("d2d") == gpus, (
        f"{gpus} devices: {gpus - 1} boundaries + the token's hop back = {gpus} copies per token, "
        f"saw {ledger.per_token('d2d')} from {ledger.top_sites('decode', 'd2d')}")
    assert (ledger.per_token("d2h"), ledger.per_token("h2d"), ledger.per_token("sync")) == (1, 0, 0), (
        f"decode must read back one token and nothing else: {ledger.to_json()['per_token']}")


def test_beam_search_moves_the_ancestors_once_per_other_device():
    try:
        from harness.devices import simulated_gpus, unavailable_reason
    except ImportError as exc:
        pytest.skip(f"simulated GPUs unavailable: {exc}")
    if unavailable_reason():
        pytest.skip(f"simulated GPUs unavailable: {unavailable_reason()}")
    directory = tinymodel.model_dir(ModelSpec(num_layers=3))
    ledger = Ledger()
    with simulated_gpus(count=3, ledger=ledger), torch.no_grad():
        model = load_model(directory, ["cuda:0", "cuda:1", "cuda:2"])
        result = beam_search(model, [5, 17, 42], GenerateConfig(max_new_tokens=9, num_beams=3), ledger.set_phase)
    ledger.decode_tokens = result.steps - 1
    # 2 boundaries + the tokens' hop back + the ancestors to cuda:0 and cuda:1 (cuda:2 holds them)
    assert ledger.per_token("d2d") == 5, f"saw {ledger.per_token('d2d')} D2D per step: {ledger.top_sites('decode', 'd2d')}"
    assert ledger.per_token("d2h") == 1, "one packed read-back of the beam candidates per step"


def test_host_weights_go_into_one_aligned_buffer_unchanged_and_device_tensors_stay():
    from reference_impl.hostmem import pack_host_tensors

    state = {"w": torch.randn(3, 5), "q": torch.arange(7, dtype=torch.int8), "elsewhere": torch.empty(4, device="meta")}
    packed = pack_host_tensors(state)
    assert packed["elsewhere"] is state["elsewhere"], "a tensor off the host must be left alone"
    for name in ("w", "q"):
        assert torch.equal(packed[name], state[name]) and packed[name].dtype == state[name].dtype, f"{name} changed"
        assert packed[name].data_ptr() % 64 == 0, f"{name} is not 64-byte aligned in the buffer"
    assert packed["w"].untyped_storage().data_ptr() == packed["q"].untyped_storage().data_ptr(), "not one buffer"

    model = load_model(tinymodel.model_dir(ModelSpec()), ["cpu"])
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == 1, f"the loaded weights live in {len(storages)} buffers, expected one"
