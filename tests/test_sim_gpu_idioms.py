"""GPU test idioms of engine projects, on simulated GPUs: each must do what it does on a real
GPU, never leave the work on the CPU while the test passes (a false pass)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from harness.devices import simulated_gpus
from harness.devices.ledger import Ledger


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


class _PerDevice(nn.Module):
    """A forward that makes tensors on its device, as models do (positions, masks): under
    DataParallel each replica runs in a thread of its own, on its GPU."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.seen: list = []  # shared by the replicas (DataParallel copies __dict__)

    def forward(self, x):
        if x.is_cuda:
            self.seen.append((x.device, torch.cuda.current_device()))
        return self.linear(x) + torch.arange(3, device=x.device)


@pytest.mark.parametrize("on", ["cuda:0", "cpu"])
def test_data_parallel_over_two_gpus_gives_the_cpu_result_and_counts_its_copies(on):
    torch.manual_seed(0)
    model, x = _PerDevice(), torch.randn(6, 4)
    with torch.no_grad():
        expected = model(x)
    ledger = Ledger()
    with simulated_gpus(count=2, ledger=ledger):
        parallel = nn.DataParallel(model.to("cuda:0"))
        out = parallel(x.to(on))
        assert out.device == torch.device("cuda", 0)
        assert torch.equal(out.cpu(), expected)
        assert sorted(model.seen, key=str) == [(torch.device("cuda", 0), 0), (torch.device("cuda", 1), 1)]
    copies = {(kind, op): n for (_, kind, op, _), n in ledger.booked.sites.items() if op not in ("to", "cpu")}
    # half the batch goes to cuda:1 (a host input: both halves go up), the weights once in one
    # coalesced buffer, cuda:1's half of the result back to cuda:0
    scattered = {("d2d", "scatter"): 1} if on == "cuda:0" else {("h2d", "scatter"): 2}
    assert copies == {**scattered, ("d2d", "broadcast_coalesced"): 1, ("d2d", "gather"): 1}
    weights = sum(p.nbytes for p in model.parameters())
    assert ledger.booked.bytes[("load", "d2d")] == weights + 3 * 3 * 4 + (3 * 4 * 4 if on == "cuda:0" else 0)


def test_scatter_gather_and_broadcast_follow_their_devices_and_chunk_sizes():
    from torch.nn.parallel import comm

    x = torch.arange(24.0).reshape(2, 12)
    with simulated_gpus(count=2):
        first, second = comm.scatter(x.to("cuda:0"), devices=[0, 1], chunk_sizes=[4, 8], dim=1)
        assert (first.device, second.device) == (torch.device("cuda", 0), torch.device("cuda", 1))
        assert torch.equal(second.cpu(), x[:, 4:])
        back = comm.gather([first, second], dim=1, destination="cpu")
        assert back.device.type == "cpu" and torch.equal(back, x)
        on_current = comm.gather([first, second], dim=1)
        assert on_current.device == torch.device("cuda", 0) and torch.equal(on_current.cpu(), x)
        here, there = comm.broadcast(first, devices=[0, 1])
        assert here is first and there.device == torch.device("cuda", 1) and torch.equal(there.cpu(), x[:, :4])
        with pytest.raises(RuntimeError, match="don't sum up to the tensor's size"):
            comm.scatter(x.to("cuda:0"), devices=[0, 1], chunk_sizes=[4, 4], dim=1)
        with pytest.raises(RuntimeError, match="All tensors must be on devices\\[0\\]: 1"):
            comm.broadcast_coalesced([first], devices=[1, 0])


def test_threads_started_on_a_simulated_gpu_run_on_it_and_leave_when_it_ends():
    with simulated_gpus(count=2):
        torch.cuda.set_device(1)
        pool = ThreadPoolExecutor(max_workers=1)
        out = pool.submit(lambda: torch.ones(2, device="cuda:1") * 2).result()
        assert out.device == torch.device("cuda", 1) and torch.equal(out.cpu(), torch.full((2,), 2.0))
        assert pool.submit(torch.cuda.current_device).result() == 0, "a new thread starts on device 0, as CUDA's"
        assert torch.cuda.current_device() == 1
    # the pool's thread outlived the run: a CUDA tensor is refused there, as on a CPU-only torch
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        pool.submit(torch.ones, 2, device="cuda").result()
    pool.shutdown()


def test_moving_a_module_an_autograd_graph_still_holds_says_why():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
    reference = model(torch.randn(2, 4))  # gradients on: the graph saves the second weight
    with simulated_gpus(count=1):
        with pytest.raises(RuntimeError, match=r"Couldn't swap Linear.weight: an autograd graph still holds it"):
            model.to("cuda:0")
        del reference
        model.to("cuda:0")  # once the graph is gone the move works
        assert {p.device for p in model.parameters()} == {torch.device("cuda", 0)}


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


def test_transformers_async_weight_loading_lands_on_the_gpu_as_sync_loading_does(tiny_llama, monkeypatch):
    """transformers loads weights in a thread pool unless HF_DEACTIVATE_ASYNC_LOAD is set: its
    threads run inside the simulation, with the copies a synchronous load makes."""
    loading = pytest.importorskip("transformers.core_model_loading")
    if not hasattr(loading, "ThreadPoolExecutor"):
        pytest.skip("this transformers loads weights on the calling thread only")
    submitted = []

    class Pool(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            submitted.append(args[0])
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(loading, "ThreadPoolExecutor", Pool)
    path, ids, expected = tiny_llama
    sites = {}
    for mode in ("sync", "async"):
        if mode == "sync":
            monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "1")
        else:
            monkeypatch.delenv("HF_DEACTIVATE_ASYNC_LOAD")
        ledger = Ledger()
        with simulated_gpus(count=1, ledger=ledger):
            model = transformers.LlamaForCausalLM.from_pretrained(path, device_map={"": 0})
            assert {p.device for p in model.parameters()} == {torch.device("cuda", 0)}
            sites[mode] = dict(ledger.booked.sites)
            out = model.generate(ids.to("cuda:0"), max_new_tokens=6, do_sample=False)
            assert out.cpu().tolist() == expected
            assert bool(submitted) == (mode == "async"), "the async load ran its weights in the pool"
    assert sites["async"] == sites["sync"] and sites["sync"]
