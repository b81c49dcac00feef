import pytest
import torch
import transformers
from conftest import torch_device
from engine import greedy

require_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="test requires CUDA")
require_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="test requires two GPUs")
PROMPT = [[5, 17, 42, 99]]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cpu_tokens(llama_dir):
    model = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval()
    return greedy(model, torch.tensor(PROMPT), steps=6)


def test_greedy_on_the_default_device(llama_dir, cpu_tokens):
    model = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval().to(torch_device)
    assert greedy(model, torch.tensor(PROMPT, device=torch_device), steps=6) == cpu_tokens


def test_the_cpu_reference_is_deterministic(llama_dir, cpu_tokens):
    model = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval()
    assert greedy(model, torch.tensor(PROMPT), steps=6) == cpu_tokens


@require_gpu
def test_greedy_on_the_gpu(llama_dir, cpu_tokens):
    model = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval().to(device="cuda:0")
    assert model.device.type == "cuda"
    assert greedy(model, torch.tensor(PROMPT, device="cuda:0"), steps=6) == cpu_tokens


@require_gpu
def test_half_precision_weights_on_the_gpu(llama_dir):
    model = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval().to(device=torch.device("cuda", 0),
                                                                               dtype=torch.float16)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert len(greedy(model, torch.tensor(PROMPT, device="cuda:0"), steps=2)) == 2


@require_two_gpus
def test_device_map_auto_over_two_gpus(llama_dir, cpu_tokens):
    model = transformers.LlamaForCausalLM.from_pretrained(llama_dir, device_map="auto",
                                                          max_memory={0: "400KB", 1: "10GB"}).eval()
    assert {p.device.index for p in model.parameters()} == {0, 1}, "layers on both GPUs"
    assert greedy(model, torch.tensor(PROMPT, device="cuda:0"), steps=6) == cpu_tokens
