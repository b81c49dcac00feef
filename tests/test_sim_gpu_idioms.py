"""GPU test idioms of engine projects, on simulated GPUs: each must do what it does on a real
GPU, never leave the work on the CPU while the test passes (a false pass)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.devices import simulated_gpus


@pytest.mark.parametrize("move", [
    pytest.param(lambda m: m.to("cuda:0"), id="positional"),
    pytest.param(lambda m: m.to(device="cuda:0"), id="keyword"),
    pytest.param(lambda m: m.to(device=torch.device("cuda", 0)), id="keyword-device"),
    pytest.param(lambda m: m.to(device="cuda:0", dtype=torch.float16), id="keyword-with-dtype"),
    pytest.param(lambda m: m.to(torch.float16).to(device=0), id="keyword-int"),
])
def test_a_module_moved_to_a_gpu_lands_there_however_the_call_is_written(move):
    with simulated_gpus(count=1):
        model = nn.Linear(4, 4)
        move(model)
        assert {p.device for p in model.parameters()} == {torch.device("cuda", 0)}
        # the bug a GPU test exists for: inputs left on the CPU fail as on a GPU
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            model(torch.ones(2, 4, dtype=model.weight.dtype))


def test_a_moved_parameter_rebuilt_through_its_own_type_stays_a_parameter():
    """accelerate's offload hooks rebuild parameters with `type(param)(value, requires_grad=...)`."""
    with simulated_gpus(count=2):
        param = nn.Linear(4, 4).to("cuda:0").weight
        assert isinstance(param, nn.Parameter)
        on_gpu = type(param)(torch.ones(4, 4, device="cuda:1"), requires_grad=False)
        on_cpu = type(param)(torch.ones(4, 4), requires_grad=False)
        assert isinstance(on_gpu, nn.Parameter) and on_gpu.device == torch.device("cuda", 1)
        assert type(on_cpu) is nn.Parameter and on_cpu.device == torch.device("cpu")


transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
                                      tie_word_embeddings=False, pad_token_id=2)
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    ids = torch.tensor([[0, 17, 42, 99]])
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False).tolist()
    return path, ids, expected


@pytest.mark.parametrize("offloaded", [{"model.layers.1": "cpu"}, {"model.layers.0": "disk", "model.layers.1": "cpu"}],
                         ids=["cpu-offload", "disk-offload"])
def test_offloaded_layers_run_on_the_gpu_and_give_the_cpu_tokens(tiny_llama, offloaded, tmp_path):
    path, ids, expected = tiny_llama
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 0,
                  "model.norm": 0, "lm_head": 0, **offloaded}
    with simulated_gpus(count=1):
        model = transformers.LlamaForCausalLM.from_pretrained(path, device_map=device_map, offload_folder=tmp_path)
        out = model.generate(ids.to("cuda:0"), max_new_tokens=6, do_sample=False)
        assert out.device == torch.device("cuda", 0)
        assert out.cpu().tolist() == expected
