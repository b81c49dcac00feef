"""A simulated tensor behaves like a CUDA tensor: data and aliasing as on the CPU, devices and
errors as on a GPU, and CPU kernel gaps reported as such."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from harness.devices import SimTensor, is_kernel_gap, simulated_gpus


def test_views_and_in_place_ops_share_data_as_on_a_gpu():
    with simulated_gpus():
        x = torch.zeros(3, 4, device="cuda:0")
        row = x[1]
        row.add_(2)
        x[:, 0] = 7
        x.t().contiguous()
        assert x.add_(1) is x, "an in-place op returns its receiver"
        assert x.is_cuda
        assert x.device == torch.device("cuda", 0)
        result = x.cpu()
    expected = torch.zeros(3, 4)
    expected[1] += 2
    expected[:, 0] = 7
    assert torch.equal(result, expected + 1)


def test_metadata_changing_in_place_ops_update_the_wrapper():
    with simulated_gpus():
        x = torch.arange(6.0, device="cuda:0").reshape(2, 3)
        assert x.unsqueeze_(0) is x
        assert x.shape == (1, 2, 3)
        y = torch.ones(2, 3, device="cuda:0")
        y.t_()
        assert y.shape == (3, 2)
        assert y.stride() == (1, 3)
        assert torch.equal(x.cpu(), torch.arange(6.0).reshape(1, 2, 3))


def test_a_zero_dim_cpu_tensor_rides_along_as_a_scalar_but_only_one():
    with simulated_gpus():
        x = torch.ones(3, device="cuda:0")
        assert torch.equal((x * torch.tensor(2.0)).cpu(), torch.full((3,), 2.0))
        with pytest.raises(RuntimeError, match="Trying to pass too many CPU scalars to non-CPU kernel!"):
            torch.where(x > 0, torch.tensor(1.0), torch.tensor(0.0))
        with pytest.raises(RuntimeError, match="found at least two devices, cuda:0 and cpu!"):
            x * torch.ones(3)


def test_two_simulated_gpus_do_not_mix():
    with simulated_gpus(count=2):
        a, b = torch.ones(2, device="cuda:0"), torch.ones(2, device="cuda:1")
        with pytest.raises(RuntimeError, match=r"found at least two devices, cuda:0 and cuda:1! \(when checking"):
            a + b
        with pytest.raises(IndexError, match=r"same device as the indexed tensor \(cuda:0\)"):
            a[torch.tensor([0], device="cuda:1")]
        with pytest.raises(IndexError, match="expected device cuda:0 but got device cuda:1 for value tensor"):
            a[torch.tensor([0, 1], device="cuda:0")] = b
        with pytest.raises(RuntimeError, match="expected self and mask to be on the same device, but got mask on cpu"):
            a.masked_fill(torch.tensor([True, False]), 0.0)
        q = torch.ones(1, 1, 2, 4, device="cuda:0")
        with pytest.raises(RuntimeError, match=r"query\.device: cuda:0 key\.device: cuda:1 and value\.device: cuda:0"):
            F.scaled_dot_product_attention(q, q.to("cuda:1"), q)


def test_generators_on_the_wrong_device_fail_as_in_libtorch():
    with simulated_gpus():
        gpu_generator = torch.Generator(device="cuda:0").manual_seed(0)
        probs = torch.ones(4, device="cuda:0")
        sampled = torch.multinomial(probs, 2, generator=gpu_generator)
        assert sampled.device == torch.device("cuda", 0)
        with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator but found 'cpu'"):
            torch.multinomial(probs, 2, generator=torch.Generator().manual_seed(0))
        with pytest.raises(RuntimeError, match="Expected a 'cpu' device type for generator but found 'cuda'"):
            torch.randn(3, generator=gpu_generator)


def test_a_simulated_generator_draws_what_the_cpu_one_draws():
    expected = torch.randn(4, generator=torch.Generator().manual_seed(5))
    with simulated_gpus():
        drawn = torch.randn(4, device="cuda:0", generator=torch.Generator(device="cuda:0").manual_seed(5))
        assert torch.equal(drawn.cpu(), expected)


def test_a_missing_cpu_kernel_is_reported_as_a_kernel_gap():
    with simulated_gpus() as sim:
        half = torch.tensor([1.0, 2.0], dtype=torch.float16, device="cuda:0")
        with pytest.raises(RuntimeError) as excinfo:
            torch.polar(half, half)  # CUDA's polar takes float16; the CPU kernel does not
    assert is_kernel_gap(excinfo.value)
    assert len(sim.kernel_gaps) == 1
    assert sim.kernel_gaps[0].startswith("polar")
    assert not sim.stand_ins
    assert not is_kernel_gap(RuntimeError("Expected all tensors to be on the same device, but found at least two"
                                          " devices, cuda:0 and cpu!"))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_integer_histc_a_gpu_kernel_the_cpu_lacks_is_computed_exactly_and_noted(dtype):
    # transformers' MoE routing counts tokens per expert with an integer histc on GPUs
    # (integrations/moe.py): without a stand-in, every MoE model would skip on simulated GPUs.
    values = [0, 3, 1, 1, 3, 3, 2, 7]
    expected = torch.histc(torch.tensor(values, dtype=torch.float32), bins=4, min=0, max=3)
    with simulated_gpus() as sim:
        counts = torch.histc(torch.tensor(values, dtype=dtype, device="cuda:0"), bins=4, min=0, max=3)
        assert counts.device == torch.device("cuda", 0) and counts.dtype == dtype
        assert counts.cpu().tolist() == expected.long().tolist()
    assert not sim.kernel_gaps
    assert len(sim.stand_ins) == 1 and sim.stand_ins[0].startswith(f"histc: the CPU has no {dtype} kernel; counted in float32")


def test_host_facing_methods_answer_as_for_a_cuda_tensor():
    with simulated_gpus():
        x = torch.tensor([1.5, 2.5], device="cuda:0")
        assert repr(x) == "tensor([1.5000, 2.5000], device='cuda:0')"
        assert f"{x[0]:.1f}" == "1.5"
        assert x.type() == "torch.cuda.FloatTensor"
        assert x.get_device() == 0
        assert x.data_ptr() != 0
        with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
            x.numpy()
        with pytest.raises(RuntimeError, match="only dense CPU tensors can be pinned"):
            x.pin_memory()
        assert torch.as_tensor(x) is x
        assert x.new_tensor([3.0]).device == x.device
        assert x.new(2).shape == (2,)
        assert x.new(2).is_cuda
        copied = copy.deepcopy(x)
        assert type(copied) is SimTensor
        assert copied.data_ptr() != x.data_ptr()
        host = torch.empty(2)
        host.copy_(x)
        assert host.tolist() == [1.5, 2.5]


def test_simulated_tensors_keep_working_after_the_context():
    with simulated_gpus():
        x = torch.ones(2, device="cuda:0")
    y = x * 3  # no mode outside: dispatch alone
    assert y.device == torch.device("cuda", 0)
    assert y.cpu().tolist() == [3.0, 3.0]


def test_mm_with_an_output_dtype_a_cuda_only_kernel_is_computed_in_that_dtype_and_noted():
    a = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    b = torch.randn(8, 2, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.mm(a, b, out_dtype=torch.float32)  # the CPU build has no kernel for it
    with simulated_gpus() as sim:
        out = torch.mm(a.to("cuda:0"), b.to("cuda:0"), out_dtype=torch.float32)
        assert out.device == torch.device("cuda", 0) and out.dtype == torch.float32
        assert torch.equal(out.cpu(), a.float() @ b.float())
    assert not sim.kernel_gaps and sim.stand_ins[0].startswith("mm: the CPU has no mm with out_dtype")
