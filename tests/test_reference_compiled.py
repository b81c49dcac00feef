"""The compiled decode step (`GenerateConfig(compile=True)`, `reference_impl.compiled`):
under torch.compile it chooses transformers' greedy ids with one graph for every step and
for requests of similar length; the position-tensor path it traces gives the eager ids for
every model kind, and stays device-clean on simulated GPUs, where dynamo is off and runs it
eagerly; requests it cannot compile say why and run eagerly."""

from __future__ import annotations

import pytest
import torch

from harness.devices.ledger import Ledger
from harness.format.scenario import ModelSpec
from harness.models import tinymodel
from reference_impl import GenerateConfig, compiled, generate, load_model
from reference_impl.generate import EagerDecode, decoder

PROMPTS = [[5, 6, 7], [100, 200, 300, 17, 42, 9, 250]]


# inductor imports torch.utils.mkldnn, which warns about its own torch.jit.script_method
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_decode_chooses_transformers_greedy_ids_with_one_graph():
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    directory = tinymodel.model_dir(ModelSpec())
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    model = load_model(directory, ["cpu"])
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):  # a position baked into the graph would recompile
        for prompt in PROMPTS:  # both need a 64-position cache: the same graph
            got = generate(model, prompt, GenerateConfig(max_new_tokens=20, compile=True))
            with torch.no_grad():
                out = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                  pad_token_id=tinymodel.EOS_ID, eos_token_id=None)
            assert got == out[0, len(prompt):].tolist(), f"compiled decode left transformers' greedy ids for {prompt}"
    assert counters["stats"]["unique_graphs"] == 1, f"expected one compiled graph, saw {dict(counters['stats'])}"
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"


@pytest.mark.parametrize(("family", "dtype", "quantization"), [
    ("llama", torch.float32, None), ("llama", torch.bfloat16, None), ("llama", torch.float32, "q4_0"),
    ("mixtral", torch.float32, None), ("mixtral", torch.float16, "int8"),
])
def test_the_position_tensor_path_gives_the_eager_ids(family, dtype, quantization, monkeypatch):
    model = load_model(tinymodel.model_dir(ModelSpec(family=family)), ["cpu"], dtype, quantization=quantization)
    eager = generate(model, PROMPTS[1], GenerateConfig(max_new_tokens=16))
    monkeypatch.setattr(compiled, "compiled_step", lambda device_type: compiled._decode_step)  # as written
    traced = generate(model, PROMPTS[1], GenerateConfig(max_new_tokens=16, compile=True))
    assert traced == eager, f"{family} {dtype} {quantization}: the position-tensor path chose other tokens"
    assert model.layers[0].attention.cache.k.shape[2] == 64, "the compiled step's cache is sized to the request"


def test_compiled_mode_stays_device_clean_on_simulated_gpus():
    try:
        from harness.devices import simulated_gpus, unavailable_reason
    except ImportError as exc:
        pytest.skip(f"simulated GPUs unavailable: {exc}")
    if unavailable_reason():
        pytest.skip(f"simulated GPUs unavailable: {unavailable_reason()}")
    directory = tinymodel.model_dir(ModelSpec())
    expected = generate(load_model(directory, ["cpu"]), PROMPTS[0], GenerateConfig(max_new_tokens=9))
    ledger = Ledger()
    with simulated_gpus(count=1, ledger=ledger), torch.no_grad():
        model = load_model(directory, ["cuda:0"])
        got = generate(model, PROMPTS[0], GenerateConfig(max_new_tokens=9, compile=True), ledger.set_phase)
    ledger.decode_tokens = 8
    assert got == expected, "the position-tensor path on a simulated GPU chose other tokens than the CPU"
    assert (ledger.per_token("d2h"), ledger.per_token("h2d"), ledger.per_token("sync")) == (1, 0, 0), (
        f"decode must read back one token and nothing else: {ledger.to_json()['per_token']}")
    with simulated_gpus(count=2), torch.no_grad():
        model = load_model(directory, ["cuda:0", "cuda:1"])
        config = GenerateConfig(max_new_tokens=9, compile=True)
        assert "spans 2 devices" in (compiled.unsupported_reason(model, config) or "")
        assert isinstance(decoder(model, config, 3), EagerDecode), "auto placement decodes eagerly"
        assert generate(model, PROMPTS[0], config) == expected, "auto placement with compile asked chose other tokens"


@pytest.mark.parametrize(("config", "reason"), [
    (GenerateConfig(compile=True, kv_cache="offloaded"), "offloaded KV cache"),
    (GenerateConfig(compile=True, kv_cache="external"), "external KV cache"),
    (GenerateConfig(compile=True, num_beams=2), "beam search"),
])
def test_requests_that_cannot_compile_say_why_and_run_eagerly(config, reason):
    model = load_model(tinymodel.model_dir(ModelSpec()), ["cpu"])
    assert compiled.unsupported_reason(model, GenerateConfig(compile=True)) is None
    assert reason in (compiled.unsupported_reason(model, config) or ""), compiled.unsupported_reason(model, config)
    if config.num_beams == 1:
        assert isinstance(decoder(model, config, 3), EagerDecode), f"{reason}: expected the eager decode step"


def test_the_compiled_cache_is_a_power_of_two_of_at_least_64_positions_within_max_seq_len():
    assert [compiled.cache_length(n, 512) for n in (1, 64, 65, 200, 600)] == [64, 64, 128, 256, 512]
