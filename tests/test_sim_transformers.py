"""A transformers llama on simulated GPUs: greedy tokens equal the CPU's, on one device, split
over two (D2D copies counted), and loaded straight onto them with `device_map`."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from harness.devices import classify_device_error, simulated_gpus
from harness.devices.ledger import Ledger
from tests.tiny_llama import tiny_llama

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

PROMPT = [[0, 17, 42, 99, 123, 256, 300, 411]]
NEW_TOKENS = 12
SPLIT = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 1,
         "model.norm": 1, "lm_head": 1}


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def greedy(model, device) -> list[int]:
    ids = torch.tensor(PROMPT, device=device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False)
    assert out.device == ids.device
    return out[0, len(PROMPT[0]):].tolist()


@pytest.fixture(scope="module")
def cpu_tokens(llama):
    return greedy(llama, "cpu")


def test_llama_on_simulated_cuda0_gives_the_cpu_tokens(llama, cpu_tokens):
    ledger = Ledger()
    with simulated_gpus(count=1, ledger=ledger) as sim:
        model = copy.deepcopy(llama).to("cuda:0")
        assert model.device == torch.device("cuda", 0)
        ledger.phase = "decode"
        assert greedy(model, "cuda:0") == cpu_tokens
    assert sim.kernel_gaps == []
    assert ledger.count("decode", "d2d") == 0, "one device: nothing crosses between GPUs"
    assert ledger.count("decode", "d2h") == 0, "generate keeps the tokens on the device"


def test_llama_split_over_two_simulated_gpus_counts_device_to_device_copies(llama, cpu_tokens):
    ledger = Ledger()
    with simulated_gpus(count=2, ledger=ledger):
        model = accelerate.dispatch_model(copy.deepcopy(llama), device_map=SPLIT)
        assert model.model.layers[0].mlp.up_proj.weight.device == torch.device("cuda", 0)
        assert model.model.layers[1].mlp.up_proj.weight.device == torch.device("cuda", 1)
        ledger.phase = "decode"
        assert greedy(model, "cuda:0") == cpu_tokens
    crossings = ledger.count("decode", "d2d")
    assert crossings >= NEW_TOKENS, "activations cross from cuda:0 to cuda:1 at least once per forward"
    assert all(site != "?" for _, site, _ in ledger.top_sites("decode", "d2d"))


def test_from_pretrained_with_device_map_auto_loads_onto_simulated_gpus(llama, cpu_tokens, tmp_path):
    llama.save_pretrained(tmp_path)
    with simulated_gpus(count=2):
        model = transformers.LlamaForCausalLM.from_pretrained(tmp_path, device_map="auto")
        model.generation_config.pad_token_id = 2
        assert {p.device.type for p in model.parameters()} == {"cuda"}
        assert greedy(model, "cuda:0") == cpu_tokens


def test_hub_kernels_are_off_while_simulated_and_restored_after(monkeypatch):
    """transformers 5.25+ fetches CUDA kernels from the Hub when loading onto CUDA: a simulated
    GPU cannot run them and CPU CI must not download them."""
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")
    with simulated_gpus(count=2):
        assert os.environ["USE_HUB_KERNELS"] == "NO"
    assert os.environ["USE_HUB_KERNELS"] == "YES"
    monkeypatch.delenv("USE_HUB_KERNELS")
    with simulated_gpus(count=1):
        pass
    assert "USE_HUB_KERNELS" not in os.environ


def test_input_ids_left_on_the_cpu_fail_in_the_embedding_as_on_a_gpu(llama):
    with simulated_gpus(count=1):
        model = copy.deepcopy(llama).to("cuda:0")
        with pytest.raises(RuntimeError) as excinfo:
            model(input_ids=torch.tensor(PROMPT))
    assert str(excinfo.value) == (
        "Expected all tensors to be on the same device, but got index is on cpu, different from other tensors on "
        "cuda:0 (when checking argument in method wrapper_CUDA__index_select)"
    )
    assert classify_device_error(excinfo.value)["op"] == "index_select"
