"""The reference implementation computes what transformers computes: greedy ids, beams,
logits, on the same generated weights (CPU), for llama and mixtral-style MoE; and its
cache kinds and placements do not change the output."""

from __future__ import annotations

import pytest
import torch

from harness.format.scenario import ModelSpec
from harness.models import tinymodel
from reference_impl import GenerateConfig, beam_search, generate, load_model, teacher_forced_logits

PROMPTS = [[5, 6, 7], [100, 200, 300, 17, 42, 9, 250], list(range(3, 40))]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batch-1 decode gains nothing from threads, and spinning OpenMP threads on a busy
    2-core machine run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["llama", "mixtral"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_dir(family):
    return tinymodel.model_dir(ModelSpec(family=family))


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"], f"transformers found keys missing from the generated checkpoint: {info}"
    assert not info["unexpected_keys"], f"transformers ignored keys of the generated checkpoint: {info}"
    return model.eval()


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             pad_token_id=tinymodel.EOS_ID, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def test_greedy_ids_equal_transformers_on_the_same_weights(model_dir, hf_model, family):
    ours = load_model(model_dir, ["cpu"])
    for prompt in PROMPTS:
        expected = hf_greedy(hf_model, prompt, 20)
        got = generate(ours, prompt, GenerateConfig(max_new_tokens=20))
        assert got == expected, f"{family}: greedy ids differ from transformers for prompt {prompt[:5]}...: {got} vs {expected}"


def test_teacher_forced_logits_equal_transformers_logits(model_dir, hf_model, family):
    ours = load_model(model_dir, ["cpu"])
    ids = PROMPTS[1] + PROMPTS[0]
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0].float()
    got = teacher_forced_logits(ours, ids)
    worst = float((got - expected).abs().max())
    assert worst < 1e-3 * float(expected.abs().max()), f"{family}: logits differ from transformers by up to {worst:.3g}"


def test_beam_search_returns_transformers_beams_and_scores(model_dir, hf_model, family):
    ours = load_model(model_dir, ["cpu"])
    prompt = PROMPTS[1]
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), num_beams=3, num_return_sequences=3, max_new_tokens=12,
                                do_sample=False, pad_token_id=tinymodel.EOS_ID, eos_token_id=tinymodel.EOS_ID,
                                output_scores=True, return_dict_in_generate=True)
    result = beam_search(ours, prompt, GenerateConfig(max_new_tokens=12, eos_id=tinymodel.EOS_ID, num_beams=3, num_return=3))
    got = [b.tokens for b in result.beams]
    expected = [seq[len(prompt):].tolist()[: len(b.tokens)] for seq, b in zip(out.sequences, result.beams, strict=True)]
    assert got == expected, f"{family}: beams differ from transformers' num_beams=3 search"
    assert [b.score for b in result.beams] == pytest.approx(out.sequences_scores.tolist(), abs=1e-4), (
        "beam scores differ from transformers' sequences_scores (sum of log-probs / length ** length_penalty)")


def test_auto_split_over_two_devices_gives_the_same_tokens(model_dir, family):
    one = load_model(model_dir, ["cpu"])
    two = load_model(model_dir, ["cpu", "cpu"])
    assert two.block_devices == [torch.device("cpu")] * 2, "auto over two devices puts one layer on each"
    config = GenerateConfig(max_new_tokens=16)
    assert generate(two, PROMPTS[0], config) == generate(one, PROMPTS[0], config), (
        f"{family}: splitting the layers over two devices changed the output")


@pytest.mark.parametrize("kind", ["offloaded", "external"])
def test_every_kv_cache_kind_gives_the_static_cache_tokens(model_dir, kind):
    model = load_model(model_dir, ["cpu"])
    static = generate(model, PROMPTS[1], GenerateConfig(max_new_tokens=16))
    other = generate(model, PROMPTS[1], GenerateConfig(max_new_tokens=16, kv_cache=kind))
    assert other == static, f"the {kind} cache changed the output: {other} vs {static}"
    beams = beam_search(model, PROMPTS[0], GenerateConfig(max_new_tokens=8, num_beams=3, num_return=3, kv_cache=kind))
    static_beams = beam_search(model, PROMPTS[0], GenerateConfig(max_new_tokens=8, num_beams=3, num_return=3))
    assert [b.tokens for b in beams.beams] == [b.tokens for b in static_beams.beams], (
        f"beam search over the {kind} cache reordered it differently from the static cache")


def test_offloaded_cache_makes_one_fetch_and_one_write_back_per_layer_and_step():
    model = load_model(tinymodel.model_dir(ModelSpec()), ["cpu"])
    generate(model, PROMPTS[0], GenerateConfig(max_new_tokens=10, kv_cache="offloaded"))
    for index, block in enumerate(model.layers):
        copies = block.attention.cache.copies
        # prefill writes back once and fetches nothing; each of the 9 decode steps does one of each
        assert copies == {"h2d": 9, "d2h": 10}, f"layer {index}: offloaded cache copies {dict(copies)}, expected h2d 9, d2h 10"


def test_same_seed_gives_the_same_sampled_tokens_and_another_seed_does_not():
    model = load_model(tinymodel.model_dir(ModelSpec()), ["cpu"])
    config = GenerateConfig(max_new_tokens=16, temperature=40.0, top_k=50, top_p=0.95, seed=3)
    first, again = generate(model, PROMPTS[0], config), generate(model, PROMPTS[0], config)
    other = generate(model, PROMPTS[0], GenerateConfig(max_new_tokens=16, temperature=40.0, top_k=50, top_p=0.95, seed=4))
    assert first == again, "the same seed gave different tokens: the generator is not the only randomness"
    assert first != other, "another seed gave the same 16 sampled tokens: sampling looks greedy"
