"""transformers beam search with beam indices tracked, on simulated GPUs, with whatever
transformers is installed (nox -s compat runs it on 4.44 to 5.x). On 4.44-4.48 generate()
finalises beams in BeamSearchScorer, whose `torch.tensor(best_idx)` over 0-d GPU index
tensors (generation/beam_search.py:404) once failed on simulated GPUs only."""

from __future__ import annotations

import pytest
import torch

from harness.devices import simulated_gpus
from harness.engines.hf_compat import dtype_argument
from harness.format.scenario import ModelSpec
from harness.models import tinymodel

transformers = pytest.importorskip("transformers")

PROMPT = [[5, 6, 7, 8]]
BEAMS = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 8, "early_stopping": True,
         "output_scores": True, "return_dict_in_generate": True, "eos_token_id": tinymodel.EOS_ID,
         "pad_token_id": tinymodel.EOS_ID}


@pytest.fixture(scope="module")
def model():
    directory = tinymodel.model_dir(ModelSpec())
    return transformers.AutoModelForCausalLM.from_pretrained(directory, **dtype_argument(torch.float32)).eval()


def beams(model, device: str) -> tuple[list, list, list]:
    ids = torch.tensor(PROMPT, device=device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **BEAMS)
    return out.sequences.tolist(), out.sequences_scores.tolist(), out.beam_indices.tolist()


def test_beam_search_with_beam_indices_on_a_simulated_gpu_equals_the_cpu(model):
    expected = beams(model, "cpu")
    with simulated_gpus():
        simulated = beams(model.to("cuda:0"), "cuda:0")
        model.to("cpu")
    assert simulated[0] == expected[0]
    assert simulated[2] == expected[2], "beam indices as on the CPU"
    assert simulated[1] == pytest.approx(expected[1], abs=1e-5)


def test_beam_search_scorer_finalize_on_a_simulated_gpu():
    """beam_search.py:404 itself, on the releases that still ship BeamSearchScorer."""
    scorer_module = pytest.importorskip(
        "transformers.generation.beam_search",
        reason=f"transformers {transformers.__version__} no longer ships BeamSearchScorer "
               "(removed in 5.0; nox -s compat runs this on 4.44-4.57)")
    with simulated_gpus():
        device = torch.device("cuda:0")
        scorer = scorer_module.BeamSearchScorer(batch_size=1, num_beams=2, device=device, length_penalty=1.0,
                                                do_early_stopping=True, num_beam_hyps_to_keep=1)
        input_ids = torch.tensor([[3, 4, 9], [3, 4, 11]], device=device)
        steps = torch.tensor([0, 1], device=device)
        beam_indices = ((steps[0],), (steps[1],))  # 0-d GPU tensors, as generate() records them
        out = scorer.finalize(input_ids, torch.tensor([-0.5, -0.1], device=device), None, None,
                              max_length=3, pad_token_id=1, eos_token_id=1, beam_indices=beam_indices,
                              decoder_prompt_len=2)
        sequences, indices = out["sequences"].cpu(), out["beam_indices"].cpu()
    assert sequences.tolist() == [[3, 4, 11]]
    assert indices.tolist() == [[1, -1, -1]], "the best beam's index row, -1 padded"
