"""The four founding bugs, run on simulated GPUs: each fails with PyTorch's own message, op and
devices at the user's line, and each fix runs with the CPU's results."""

from __future__ import annotations

import os
import traceback

import pytest
import torch

from harness.devices import classify_device_error, simulated_gpus
from tests import sim_user_bugs as user

TORCH_DIR = os.path.dirname(torch.__file__)
HARNESS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "harness")


def innermost_user_frame(exc: BaseException) -> traceback.FrameSummary:
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith((TORCH_DIR, HARNESS_DIR))]
    return frames[-1]


def assert_fails_at(excinfo: pytest.ExceptionInfo, marker: str, message: str, op: str, devices: list[str]) -> None:
    assert str(excinfo.value) == message, "the message must be PyTorch's, word for word"
    info = classify_device_error(excinfo.value)
    assert info is not None, "a device mismatch must be recognised as one"
    assert info["op"] == op
    assert info["devices"] == devices
    frame = innermost_user_frame(excinfo.value)
    assert os.path.basename(frame.filename) == "sim_user_bugs.py"
    assert frame.lineno == user.marked_line(marker), "the user frame must be the buggy line"


def test_logit_bias_added_across_devices_fails_like_a_gpu():
    torch.manual_seed(0)
    logits, bias = torch.randn(1, 32), torch.randn(32)
    with simulated_gpus(), pytest.raises(RuntimeError) as excinfo:
        user.apply_logit_bias(logits.to("cuda:0"), bias.to("cuda:0"))
    assert_fails_at(excinfo, "BUG 1",
                    "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
                    "(when checking argument in method wrapper_CUDA_add_Tensor)",
                    "add", ["cuda:0", "cpu"])
    assert type(excinfo.value) is RuntimeError


def test_logit_bias_fixed_matches_cpu():
    torch.manual_seed(0)
    logits, bias = torch.randn(1, 32), torch.randn(32)
    with simulated_gpus():
        out = user.apply_logit_bias(logits.to("cuda:0"), bias.to("cuda:0"), fixed=True)
        assert out.device == torch.device("cuda", 0)
        out = out.cpu()
    torch.testing.assert_close(out, user.apply_logit_bias(logits, bias, fixed=True), rtol=0, atol=0)


def test_cpu_past_cache_concatenated_with_gpu_keys_fails_in_cat():
    keys = torch.randn(1, 2, 3, 8)
    with simulated_gpus(), pytest.raises(RuntimeError) as excinfo:
        user.attend_with_past(keys.to("cuda:0"), past_len=4)
    # torch 2.13's wrapper check (aten/src/ATen/core/adaption.cpp): older releases said
    # "found at least two devices, cpu and cuda:0! (when checking argument for argument
    # tensors in method wrapper_CUDA_cat)", which classify_device_error reads as well.
    assert_fails_at(excinfo, "BUG 2",
                    "Expected all tensors to be on the same device, but got tensors is on cuda:0, different from "
                    "other tensors on cpu (when checking argument in method wrapper_CUDA_cat)",
                    "cat", ["cpu", "cuda:0"])


def test_past_cache_fixed_matches_cpu():
    keys = torch.randn(1, 2, 3, 8)
    with simulated_gpus():
        out = user.attend_with_past(keys.to("cuda:0"), past_len=4, fixed=True)
        assert out.device == torch.device("cuda", 0)
        out = out.cpu()
    assert torch.equal(out, user.attend_with_past(keys, past_len=4, fixed=True))


def test_cpu_beam_index_on_a_cuda1_layer_fails_in_index_select():
    layer = torch.randn(3, 2, 5)
    with simulated_gpus(count=2), pytest.raises(RuntimeError) as excinfo:
        user.reorder_cache([layer.to("cuda:1")], num_beams=3)
    assert_fails_at(excinfo, "BUG 3",
                    "Expected all tensors to be on the same device, but got index is on cpu, different from other "
                    "tensors on cuda:1 (when checking argument in method wrapper_CUDA__index_select)",
                    "index_select", ["cuda:1", "cpu"])


def test_cuda0_beam_index_on_a_cuda1_layer_fails_in_index_select():
    layers = [torch.randn(3, 2, 5), torch.randn(3, 2, 5)]
    with simulated_gpus(count=2), pytest.raises(RuntimeError) as excinfo:
        user.reorder_cache([layers[0].to("cuda:0"), layers[1].to("cuda:1")], num_beams=3, fixed=1)
    assert_fails_at(excinfo, "BUG 3",
                    "Expected all tensors to be on the same device, but got index is on cuda:0, different from other "
                    "tensors on cuda:1 (when checking argument in method wrapper_CUDA__index_select)",
                    "index_select", ["cuda:1", "cuda:0"])


def test_beam_reorder_fixed_per_layer_matches_cpu():
    layers = [torch.randn(3, 2, 5), torch.randn(3, 2, 5)]
    with simulated_gpus(count=2):
        out = user.reorder_cache([layers[0].to("cuda:0"), layers[1].to("cuda:1")], num_beams=3, fixed=2)
        assert [t.device.index for t in out] == [0, 1]
        out = [t.cpu() for t in out]
    for got, want in zip(out, user.reorder_cache(layers, num_beams=3, fixed=2), strict=True):
        assert torch.equal(got, want)


def test_weights_dequantized_to_cpu_fail_in_the_matmul():
    torch.manual_seed(0)
    x, qweight, scale = torch.randn(1, 4, 16), torch.randint(-8, 8, (24, 16), dtype=torch.int8), torch.rand(24, 1)
    with simulated_gpus(), pytest.raises(RuntimeError) as excinfo:
        user.quantized_linear(x.to("cuda:0"), qweight.to("cuda:0"), scale.to("cuda:0"))
    # linear -> matmul -> mm for a 3-D input without bias, as libtorch decomposes it
    assert_fails_at(excinfo, "BUG 4",
                    "Expected all tensors to be on the same device, but got mat2 is on cpu, different from other "
                    "tensors on cuda:0 (when checking argument in method wrapper_CUDA_mm)",
                    "mm", ["cuda:0", "cpu"])


def test_dequantized_on_the_weights_device_matches_cpu():
    torch.manual_seed(0)
    x, qweight, scale = torch.randn(1, 4, 16), torch.randint(-8, 8, (24, 16), dtype=torch.int8), torch.rand(24, 1)
    with simulated_gpus():
        out = user.quantized_linear(x.to("cuda:0"), qweight.to("cuda:0"), scale.to("cuda:0"), fixed=True).cpu()
    torch.testing.assert_close(out, user.quantized_linear(x, qweight, scale, fixed=True), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("message", "op", "devices"),
    [
        ("Expected all tensors to be on the same device, but found at least two devices, cpu and cuda:0! "
         "(when checking argument for argument tensors in method wrapper_CUDA_cat)", "cat", ["cpu", "cuda:0"]),
        ("Expected all tensors to be on the same device, but got index is on cpu, different from other tensors "
         "on cuda:0 (when checking argument in method wrapper_CUDA__index_select)", "index_select", ["cuda:0", "cpu"]),
        ("Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cuda:1!",
         None, ["cuda:0", "cuda:1"]),
        ("device mismatch in add, lhs: Cpu, rhs: Cuda { gpu_id: 0 }", "add", ["cpu", "cuda:0"]),
        ("Expected a 'cuda' device type for generator but found 'cpu'", None, ["cuda", "cpu"]),
        ("indices should be either on cpu or on the same device as the indexed tensor (cuda:1)", "index", ["cuda:1"]),
    ],
)
def test_classify_device_error_reads_pytorch_and_rust_wording(message, op, devices):
    info = classify_device_error(RuntimeError(message))
    assert info == {"op": op, "devices": devices, "message": message}


def test_classify_device_error_ignores_other_errors():
    assert classify_device_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x16 and 8x24)")) is None
