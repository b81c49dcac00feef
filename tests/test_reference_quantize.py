"""Quantized weights are GGUF's blocks byte for byte, dequantize to what gguf dequantizes,
and stay quantized in the model until forward needs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.format.scenario import ModelSpec
from harness.models import tinymodel
from reference_impl import GenerateConfig, generate, load_model, teacher_forced_logits
from reference_impl.quantize import (
    BLOCK_BYTES,
    QuantizedLinear,
    QuantizedWeight,
    dequantize_blocks,
    dequantize_int8,
    quantize_blocks,
    quantize_int8,
)

gguf = pytest.importorskip("gguf")
GGML = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}


def weights(*shape: int, seed: int = 0) -> torch.Tensor:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    w[..., 0, :32] = 0.0  # an all-zero block: scale 0 must not divide by zero
    return w


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_blocks_are_the_bytes_gguf_writes(fmt):
    w = weights(3, 64, 96)  # [E, O, I]: stacked experts quantize row by row
    blocks = quantize_blocks(w, fmt)
    expected = gguf.quants.quantize(w.numpy(), GGML[fmt])
    assert blocks.dtype == torch.uint8, f"{fmt} blocks are raw bytes, got {blocks.dtype}"
    assert tuple(blocks.shape) == (3, 64, 96 // 32 * BLOCK_BYTES[fmt]), (
        f"{fmt} rows must hold {BLOCK_BYTES[fmt]}-byte blocks of 32 weights, got shape {tuple(blocks.shape)}")
    assert np.array_equal(blocks.numpy(), expected), f"{fmt} bytes differ from gguf.quants.quantize"


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_torch_dequantize_equals_gguf_dequantize_exactly(fmt):
    w = weights(2, 48, 64, seed=1)
    raw = gguf.quants.quantize(w.numpy(), GGML[fmt])
    expected = torch.from_numpy(gguf.quants.dequantize(raw, GGML[fmt]).copy())
    got = dequantize_blocks(torch.from_numpy(raw.copy()), fmt, torch.float32)
    assert got.shape == w.shape, f"dequantized shape {tuple(got.shape)} is not the weight's {tuple(w.shape)}"
    assert torch.equal(got, expected), f"{fmt}: torch dequantization differs from gguf's by up to {(got - expected).abs().max():.3g}"


@pytest.mark.parametrize(("fmt", "step"), [("q8_0", 1 / 127), ("q4_0", 1 / 8)])
def test_block_round_trip_error_is_within_one_quantization_step(fmt, step):
    w = weights(32, 64, seed=2)
    back = dequantize_blocks(quantize_blocks(w, fmt), fmt, torch.float32)
    absmax = w.view(32, 2, 32).abs().amax(-1, keepdim=True)  # per block
    error = (back - w).view(32, 2, 32).abs()
    assert bool((error <= absmax * step * 1.01 + 1e-3).all()), f"{fmt} round trip error beyond one step of the block's scale"


def test_int8_round_trip_error_is_within_half_a_step_per_channel():
    w = weights(64, 96, seed=3)
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8, f"int8 weights are int8, got {q.dtype}"
    assert scales.shape == (64,), f"int8: one scale per output channel, got {tuple(scales.shape)}"
    error = (dequantize_int8(q, scales, torch.float32) - w).abs()
    assert bool((error <= scales[:, None] * 0.5 + 1e-6).all()), "int8 round trip error beyond half a step"


@pytest.mark.parametrize("fmt", ["int8", "q8_0", "q4_0"])
def test_quantized_linear_is_a_matmul_with_the_dequantized_weight(fmt):
    w, x = weights(32, 64, seed=4), torch.randn(2, 3, 64)
    layer = QuantizedLinear(64, 32, fmt)
    for name, value in QuantizedWeight.quantize(w, fmt).items():
        setattr(layer, name, value)
    got = layer(x)
    expected = F.linear(x, layer.dequantize(torch.float32))
    assert torch.allclose(got, expected), f"{fmt}: forward is not x @ dequantized(W).T"
    assert not any(b.is_floating_point() for n, b in layer.named_buffers() if n != "scales"), (
        "the weight must stay quantized in the module's buffers")


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_loaded_model_keeps_block_weights_quantized_and_the_head_float(family):
    model = load_model(tinymodel.model_dir(ModelSpec(family=family)), ["cpu"], quantization="q4_0")
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantizedWeight)]
    per_layer = 5 if family == "mixtral" else 4  # wqkv, wo, w13, w2 (stacked experts for MoE), router
    assert len(quantized) == per_layer * model.args.num_layers, f"quantized modules: {quantized}"
    assert not isinstance(model.output, QuantizedWeight), "the output head stays float"
    if family == "mixtral":
        assert isinstance(model.layers[0].feed_forward.gate, QuantizedWeight), "router quantized by default"
        plain = load_model(tinymodel.model_dir(ModelSpec(family=family)), ["cpu"], quantization="q4_0", quantize_router=False)
        assert not isinstance(plain.layers[0].feed_forward.gate, QuantizedWeight), "router: false keeps the router float"


@pytest.mark.parametrize(("fmt", "tolerance"), [("int8", 0.03), ("q8_0", 0.03), ("q4_0", 0.3)])
def test_quantized_model_logits_track_the_float_model(fmt, tolerance):
    directory = tinymodel.model_dir(ModelSpec())
    ids = [5, 17, 42, 99, 123, 7]
    exact = teacher_forced_logits(load_model(directory, ["cpu"]), ids)
    approx = teacher_forced_logits(load_model(directory, ["cpu"], quantization=fmt), ids)
    relative = float((approx - exact).norm() / exact.norm())
    assert relative < tolerance, f"{fmt}: logits moved {relative:.3f} (relative norm) from the float model's"
    tokens = generate(load_model(directory, ["cpu", "cpu"], quantization=fmt), ids, GenerateConfig(max_new_tokens=8))
    assert len(tokens) == 8, "a quantized model split over two devices generates"
