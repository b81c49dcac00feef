"""Simulated GPUs under torch.vmap: transformers 4.5x builds its attention masks with
`torch.vmap` (masking_utils.py), where model code sees functorch's wrappers around the
simulated tensors. The devices they report, the copies they make and the mismatches they
hit must be those of a real GPU, as outside vmap."""

from __future__ import annotations

import inspect

import pytest
import torch

from harness.devices import simulated_gpus
from harness.devices.ledger import Ledger


def _mask(q_idx, kv_idx):
    """transformers 4.57's `and_masks` shape: a result built from the index, and each mask
    function's output moved to the result's device before it is combined."""
    result = q_idx.new_ones((), dtype=torch.bool)
    return result & (kv_idx <= q_idx).to(result.device)


def _vmapped(fn):
    return torch.vmap(torch.vmap(fn, in_dims=(None, 0)), in_dims=(0, None))


def test_a_mask_built_under_vmap_stays_on_its_gpu_and_equals_the_cpu_one():
    expected = _vmapped(_mask)(torch.arange(4), torch.arange(6))
    ledger = Ledger()
    with simulated_gpus(ledger=ledger):
        mask = _vmapped(_mask)(torch.arange(4, device="cuda:1"), torch.arange(6, device="cuda:1"))
        assert mask.device == torch.device("cuda", 1) and mask.shape == (4, 6)
        assert sum(ledger.counts.values()) == 0, "moving to the device it is on copies nothing"
        assert torch.equal(mask.cpu(), expected)


def test_copies_under_vmap_are_counted_in_every_direction():
    ledger = Ledger()
    with simulated_gpus(ledger=ledger):
        x = torch.arange(6.0, device="cuda:0")
        host = torch.arange(6.0)
        on_host = torch.vmap(lambda t: t.to("cpu") * 2)(x)
        on_other = torch.vmap(lambda t: t.to("cuda:1"))(x)
        uploaded = torch.vmap(lambda t: t.to("cuda:0"))(host)
        assert on_host.device.type == "cpu" and torch.equal(on_host, torch.arange(6.0) * 2)
        assert on_other.device == torch.device("cuda", 1) and uploaded.device == torch.device("cuda", 0)
    assert {kind: n for (_, kind), n in ledger.counts.items()} == {"d2h": 1, "d2d": 1, "h2d": 1}


@pytest.mark.parametrize("other", ["cpu", "cuda:1"])
def test_a_device_mismatch_under_vmap_raises_as_on_a_gpu(other):
    with simulated_gpus():
        x = torch.arange(6.0, device="cuda:0")
        stray = torch.ones(6, device=other)  # a whole tensor, not a 0-dim scalar: no exception for it
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            torch.vmap(lambda t: t + stray)(x)


def _padding_mask(padding):
    """transformers 4.57's `padding_mask_function`: the 2D mask indexed by the vmapped indices."""
    return lambda batch_idx, kv_idx: padding[batch_idx, kv_idx]


def test_indexing_with_vmapped_indices_reads_the_mask_on_its_gpu():
    from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex

    padding = torch.tensor([[True, True, False], [False, True, True]])
    with TransformGetItemToIndex():
        expected = _vmapped(_padding_mask(padding))(torch.arange(2), torch.arange(3))
    with simulated_gpus():
        with TransformGetItemToIndex():
            got = _vmapped(_padding_mask(padding.to("cuda:1")))(torch.arange(2, device="cuda:1"),
                                                                 torch.arange(3, device="cuda:1"))
        assert got.device == torch.device("cuda", 1)
        assert torch.equal(got.cpu(), expected)
        # Without the context manager the indexing is Tensor.__getitem__ itself.
        plain = torch.vmap(lambda i: padding.to("cuda:1")[i])(torch.arange(2, device="cuda:1"))
        assert plain.device == torch.device("cuda", 1) and torch.equal(plain.cpu(), padding)


@pytest.mark.parametrize("mask_device", ["cuda:0", "cpu"])
def test_a_vmapped_index_on_another_device_fails_as_on_a_gpu(mask_device):
    with simulated_gpus():
        padding = torch.ones(2, 3, dtype=torch.bool, device=mask_device)  # left on the host: the bug class
        message = f"indices should be either on cpu or on the same device as the indexed tensor \\({mask_device}\\)"
        with pytest.raises(IndexError, match=message):
            torch.vmap(lambda i: padding[i])(torch.arange(2, device="cuda:1"))
        with pytest.raises(IndexError, match=message):  # aten.index itself, as TransformGetItemToIndex calls it
            torch.ops.aten.index.Tensor(padding, [torch.arange(2, device="cuda:1")])


BASIC_KEYS = [1, -1, slice(1, None), slice(None, None, 2), None, Ellipsis, (Ellipsis, 1), (slice(None), None, slice(None, None, 2)),
              (-1, Ellipsis, None), (Ellipsis, slice(1, 3), None), (1, 2)]


@pytest.mark.parametrize("key", BASIC_KEYS, ids=repr)
def test_basic_indexing_under_vmap_gives_the_cpu_views_on_the_gpu(key):
    x = torch.arange(48.0).reshape(2, 2, 3, 4)
    expected = torch.vmap(lambda t: t[key])(x)
    with simulated_gpus():
        got = torch.vmap(lambda t: t[key])(x.to("cuda:0"))
        assert got.device == torch.device("cuda", 0)
        assert torch.equal(got.cpu(), expected)


def test_transformers_vmapped_sdpa_mask_on_a_simulated_gpu_equals_the_cpu_one():
    """The library path itself: transformers builds the sdpa mask under vmap for custom mask
    functions (5.x: `use_vmap=True` when an and/or mask function is given; 4.57: always)."""
    masking = pytest.importorskip("transformers.masking_utils")
    if not hasattr(masking, "sliding_window_overlay"):
        pytest.skip("this transformers has no vmapped sdpa masks (before 4.53)")
    padding = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    window = masking.and_masks(masking.causal_mask_function, masking.sliding_window_overlay(3))

    params = inspect.signature(masking.sdpa_mask).parameters

    def mask(attention_mask, device):
        if "q_length" in params:  # 5.x
            where = {"q_length": 5, "use_vmap": True, "device": device}
        else:  # 4.5x: positions as a tensor
            where = {"cache_position": torch.arange(5, device=device)}
        return masking.sdpa_mask(batch_size=2, kv_length=5, mask_function=window, attention_mask=attention_mask,
                                 allow_is_causal_skip=False, **where)

    expected = mask(padding, "cpu")
    with simulated_gpus():
        got = mask(padding.to("cuda:1"), "cuda:1")
        assert got.device == torch.device("cuda", 1)
        assert torch.equal(got.cpu(), expected)


def _positions(x):
    """A vmapped body that makes tensors on its device: factories by `device=`, a Python
    scalar that `where` turns into a tensor on x's device (in C++, below the batching rule)."""
    device = x.device
    kept = torch.where(x > 2, x, 7)
    return kept + torch.arange(3, device=device) + torch.ones(3, dtype=x.dtype, device=device.type)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_factories_and_scalars_under_nested_vmap_land_on_the_gpu(levels):
    x = torch.arange(2 * 2 * 2 * 3).reshape(2, 2, 2, 3)[(0,) * (3 - levels)]
    fn = _positions
    for _ in range(levels):
        fn = torch.vmap(fn)
    expected = fn(x)
    with simulated_gpus():
        got = fn(x.to("cuda:0"))
        assert got.device == torch.device("cuda", 0)
        assert torch.equal(got.cpu(), expected)


def _dense(rows, cols):
    """flex attention's `_ordered_to_dense` step: write ones at vmapped indices, then copy."""
    dense = cols.new_zeros(3, 5, dtype=torch.int32)
    row_index = torch.arange(3, device=cols.device).unsqueeze(-1)
    dense[row_index, torch.where(cols < rows.unsqueeze(-1), cols, 4)] = dense.new_ones(())
    return dense[:, :4].contiguous()


def test_writes_and_copies_under_nested_vmap_stay_on_the_gpu():
    rows = torch.tensor([[[1, 2, 0], [2, 2, 1]]])
    cols = torch.tensor([[[[0, 1], [1, 3], [2, 0]], [[3, 2], [0, 1], [1, 2]]]])
    fn = torch.vmap(torch.vmap(_dense))
    expected = fn(rows, cols)
    with simulated_gpus(count=2):
        got = fn(rows.to("cuda:1"), cols.to("cuda:1"))
        assert got.device == torch.device("cuda", 1)
        assert torch.equal(got.cpu(), expected)


def test_flex_attention_block_mask_on_a_simulated_gpu_equals_the_cpu_one():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")

    def sliding_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < 200)

    def block_mask(device):
        return flex.create_block_mask(sliding_causal, B=2, H=None, Q_LEN=512, KV_LEN=512, device=device)

    expected = block_mask("cpu")
    with simulated_gpus():
        got = block_mask("cuda")
        assert got.kv_num_blocks.device == torch.device("cuda", 0)
        for mine, theirs in zip(got.as_tuple(), expected.as_tuple(), strict=True):
            if isinstance(theirs, torch.Tensor):
                assert torch.equal(mine.cpu(), theirs)
            else:
                assert mine == theirs
