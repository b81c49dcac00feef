"""llama.cpp on GGUF files written from the same weights: f32 greedy ids equal the
reference's; Q8_0 is compared by teacher-forced logits, never by exact ids.

The GGUF export is tested everywhere; llama.cpp itself only where llama-cpp-python is
installed (`nox -s llamacpp` builds it)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from harness.format.scenario import ModelSpec
from harness.models.gguf import gguf_file, permute_for_rope
from harness.models.tinymodel import model_dir
from tests.test_engines import _cpu_case


def test_gguf_files_hold_every_tensor_in_llamacpp_names() -> None:
    directory = model_dir(ModelSpec())
    for qtype, expected in (("f32", "F32"), ("q8_0", "Q8_0")):
        reader = gguf.GGUFReader(str(gguf_file(directory, qtype)))
        names = {t.name: t.tensor_type.name for t in reader.tensors}
        assert len(names) == 3 + 9 * 2
        assert names["blk.1.attn_q.weight"] == expected and names["output_norm.weight"] == "F32"


def test_rope_permutation_interleaves_each_head_and_loses_nothing() -> None:
    weights = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)  # 4 heads of dim 8
    permuted = permute_for_rope(weights, heads=4)
    assert sorted(permuted.ravel()) == sorted(weights.ravel())
    # head 0, rows 0..7: transformers keeps halves [0..3 | 4..7]; llama.cpp interleaves pairs
    assert permuted[:8, 0].tolist() == weights[[0, 4, 1, 5, 2, 6, 3, 7], 0].tolist()


def test_llamacpp_greedy_ids_equal_the_reference_on_f32() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (nox -s llamacpp)")
    from harness.execute.case import RunOptions, run_case

    llamacpp = run_case(_cpu_case("llamacpp"), RunOptions(), None)
    reference = run_case(_cpu_case("reference"), RunOptions(), None)
    assert llamacpp.status == "passed", llamacpp.summary_line()
    assert llamacpp.tokens == reference.tokens


def test_llamacpp_q8_0_logits_stay_close_to_f32() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (nox -s llamacpp)")
    from harness.engines.llamacpp_engine import LlamaCppEngine
    from harness.engines.reference import ReferenceEngine
    from harness.execute.case import build_request

    ids = [458, 223, 83, 87, 75, 328, 272, 463]
    reference = ReferenceEngine()
    case = _cpu_case("reference")
    request = build_request(case, lambda phase: None)
    reference.load(request, case.target.requested_placement())
    exact = reference.teacher_forced_logits(ids)
    quantized_case = _cpu_case("llamacpp", features={"quantization": {"format": "q8_0"}})
    engine = LlamaCppEngine()
    engine.load(build_request(quantized_case, lambda phase: None), quantized_case.target.requested_placement())
    approx = engine.teacher_forced_logits(ids)
    scale = float(exact.abs().max())
    assert float((approx - exact).abs().max()) < 0.05 * scale, "Q8_0 logits drift more than 5% of the logit range"
    assert torch.equal(approx.argmax(-1), exact.argmax(-1))
