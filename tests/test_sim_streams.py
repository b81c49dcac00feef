"""Streams, events, pinned memory and non-blocking copies on simulated GPUs: what is ordered
runs as on CPU, what is ordered only by luck of CPU timing raises StreamRace naming both
sides, and a non-blocking upload from pageable memory is counted as the sync it is."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from harness.devices import simulated_gpus
from harness.devices.ledger import Ledger
from harness.devices.sim_streams import StreamRace
from tests.tiny_llama import tiny_llama

HERE = "test_sim_streams.py:"


def line_of(marker: str) -> str:
    """`test_sim_streams.py:N` of the line of this file that carries `# <marker>`."""
    for number, text in enumerate(inspect.getsource(inspect.getmodule(line_of)).splitlines(), 1):
        if text.rstrip().endswith(f"# {marker}"):
            return f"{HERE}{number}"
    raise AssertionError(marker)


# --- device-to-host ---------------------------------------------------------------------------


def test_a_host_read_before_the_non_blocking_copy_finished_raises_naming_both_lines():
    with simulated_gpus(count=1):
        logits = torch.arange(6.0, device="cuda").view(2, 3)
        host = logits.to("cpu", non_blocking=True)  # d2h-issued
        assert host.is_pinned(), "PyTorch allocates pinned memory for a non-blocking .to('cpu')"
        with pytest.raises(StreamRace) as caught:
            host.tolist()  # d2h-read
    message = str(caught.value)
    assert line_of("d2h-issued") in message and line_of("d2h-read") in message
    assert "cuda:0 default stream" in message


@pytest.mark.parametrize("order", ["device", "stream", "event", "blocking-read", "query"])
def test_each_ordering_point_makes_the_copy_visible_to_the_host(order):
    with simulated_gpus(count=1):
        x = torch.arange(4.0, device="cuda")
        host = x.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        if order == "device":
            torch.cuda.synchronize()
        elif order == "stream":
            torch.cuda.current_stream().synchronize()
        elif order == "event":
            event.synchronize()
        elif order == "blocking-read":
            x.sum().item()  # the same stream: the host waits for everything before
        else:
            assert event.query()
        assert host.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_indexing_and_cpu_ops_on_a_pending_copy_are_host_reads_too():
    with simulated_gpus(count=1):
        x = torch.arange(4.0, device="cuda")
        for read in (lambda h: h[0], lambda h: h + 1, lambda h: torch.cat([h, h])):
            host = x.to("cpu", non_blocking=True)
            with pytest.raises(StreamRace, match="host read"):
                read(host)
            torch.cuda.synchronize()
            read(host)  # after the sync: fine
        host = x.to("cpu", non_blocking=True)
        assert host.shape == (4,) and host.dim() == 1, "metadata is no read"


def test_copy_into_pinned_memory_is_asynchronous_into_pageable_memory_synchronous():
    with simulated_gpus(count=1):
        x = torch.arange(4.0, device="cuda")
        pageable = torch.empty(4)
        pageable.copy_(x, non_blocking=True)
        assert pageable.tolist() == [0.0, 1.0, 2.0, 3.0]  # the host waited: no race
        pinned = torch.empty(4, pin_memory=True)
        assert pinned.is_pinned() and not pageable.is_pinned()
        pinned.copy_(x, non_blocking=True)
        with pytest.raises(StreamRace):
            pinned.sum()


def test_pinned_memory_outside_a_run_is_forgotten():
    with simulated_gpus(count=1):
        pinned = torch.ones(3).pin_memory()
        assert pinned.is_pinned()
    assert not pinned.is_pinned()


# --- side streams -----------------------------------------------------------------------------


def test_a_side_stream_copy_consumed_without_a_wait_raises_naming_both_streams():
    with simulated_gpus(count=1):
        side = torch.cuda.Stream()
        weights = torch.ones(4).pin_memory()
        with torch.cuda.stream(side):
            on_gpu = weights.to("cuda", non_blocking=True)  # side-copy
        with pytest.raises(StreamRace) as caught:
            on_gpu * 2  # side-read
    message = str(caught.value)
    assert line_of("side-copy") in message and line_of("side-read") in message
    assert "side stream" in message and "cuda:0 default stream" in message


@pytest.mark.parametrize("wait", ["wait_stream", "wait_event", "event.wait", "synchronize"])
def test_a_wait_orders_the_side_stream_before_the_consumer(wait):
    with simulated_gpus(count=1):
        side = torch.cuda.Stream()
        weights = torch.ones(4).pin_memory()
        with torch.cuda.stream(side):
            on_gpu = weights.to("cuda", non_blocking=True) * 3
            done = side.record_event()
        main = torch.cuda.current_stream()
        if wait == "wait_stream":
            main.wait_stream(side)
        elif wait == "wait_event":
            main.wait_event(done)
        elif wait == "event.wait":
            done.wait()
        else:
            side.synchronize()
        assert (on_gpu + 1).tolist() == [4.0] * 4


def test_work_on_the_side_stream_itself_is_ordered():
    with simulated_gpus(count=1):
        side = torch.Stream()  # torch >= 2.7 spelling (transformers' offloaded cache)
        with side:
            x = torch.ones(4).pin_memory().to("cuda", non_blocking=True)
            y = x * 2  # same stream: ordered
        torch.cuda.current_stream().wait_stream(side)
        assert y.sum().item() == 8.0


def test_streams_events_and_timing_answer_like_cuda():
    with simulated_gpus(count=2):
        assert torch.cuda.current_stream() == torch.cuda.default_stream()
        assert torch.cuda.current_stream(1) != torch.cuda.current_stream(0)
        side = torch.cuda.Stream(device=1)
        assert side.device == torch.device("cuda", 1)
        with torch.cuda.stream(side):
            assert torch.cuda.current_stream(1) == side
        assert torch.cuda.current_stream(1) == torch.cuda.default_stream(1)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        end.record()
        with pytest.raises(RuntimeError, match="device not ready"):
            start.elapsed_time(end)
        end.synchronize()
        assert start.elapsed_time(end) >= 0.0
        with pytest.raises(RuntimeError, match="enable_timing"):
            torch.cuda.Event().elapsed_time(torch.cuda.Event())


def test_a_freed_side_stream_tensor_without_record_stream_is_caught_at_the_reuse():
    with simulated_gpus(count=1):
        side, main = torch.cuda.Stream(), torch.cuda.current_stream()
        source = torch.ones(4).pin_memory()

        def prefetch():
            with torch.cuda.stream(side):
                return source.to("cuda", non_blocking=True)  # reuse

        buffer = prefetch()
        main.wait_stream(side)
        (buffer * 2).sum()  # used on the main stream
        del buffer  # freed
        with pytest.raises(StreamRace, match="without record_stream") as caught:
            prefetch()
    assert line_of("freed") in str(caught.value) and line_of("reuse") in str(caught.value)


@pytest.mark.parametrize("fix", ["record_stream", "wait"])
def test_record_stream_or_a_wait_before_reuse_keeps_the_memory_safe(fix):
    with simulated_gpus(count=1):
        side, main = torch.cuda.Stream(), torch.cuda.current_stream()
        source = torch.ones(4).pin_memory()
        for _ in range(3):
            if fix == "wait":
                side.wait_stream(main)
            with torch.cuda.stream(side):
                buffer = source.to("cuda", non_blocking=True)
            main.wait_stream(side)
            (buffer * 2).sum()
            if fix == "record_stream":
                buffer.record_stream(main)
            del buffer


# --- hidden stalls ------------------------------------------------------------------------------


def test_a_non_blocking_upload_from_pageable_memory_counts_a_sync_a_pinned_one_does_not():
    ledger = Ledger()
    with simulated_gpus(count=1, ledger=ledger):
        pageable, pinned = torch.ones(8), torch.ones(8).pin_memory()
        ledger.phase = "decode"
        pageable.to("cuda", non_blocking=True)  # pageable
        pageable.cuda(non_blocking=True)
        torch.empty(8, device="cuda").copy_(pageable, non_blocking=True)
        pinned.to("cuda", non_blocking=True)
        pinned.cuda(non_blocking=True)
        pageable.to("cuda")  # blocking: a copy, as before
    assert ledger.count("decode", "h2d") == 6
    assert ledger.count("decode", "sync") == 3
    sites = [site for (phase, kind, op, site) in ledger.booked.sites if kind == "sync"]
    assert any(site.endswith(line_of("pageable")) for site in sites)


# --- transformers' offloaded cache ----------------------------------------------------------------



@pytest.fixture(scope="module")
def llama():
    pytest.importorskip("transformers")
    return tiny_llama()


def greedy(model, device, **kwargs) -> list[int]:
    ids = torch.tensor([[0, 17, 42, 99, 123, 256, 300, 411]], device=device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, min_new_tokens=10,
                             do_sample=False, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def test_transformers_offloaded_cache_runs_on_a_simulated_gpu_with_the_cpu_tokens(llama):
    expected = greedy(llama, "cpu")
    ledger = Ledger()
    with simulated_gpus(count=1, ledger=ledger):
        model = copy.deepcopy(llama).to("cuda:0")
        ledger.phase = "decode"
        assert greedy(model, "cuda:0", cache_implementation="offloaded") == expected
    assert ledger.count("decode", "d2h") > 0 and ledger.count("decode", "h2d") > 0, "the cache moved layers"
    stalls = [key for key in ledger.booked.sites if "pageable" in key[2]]
    assert stalls == [], "its uploads come from the pinned memory its non-blocking offload allocated"


def test_transformers_offloaded_cache_without_the_prefetch_wait_is_caught(llama, monkeypatch):
    """transformers' Cache.update makes the prefetch stream wait for the default stream ("the
    offloading copies to cpu are not finished yet"); without that wait the prefetch uploads
    host memory its non-blocking offload is still writing."""
    cache_utils = pytest.importorskip("transformers.cache_utils")
    source = inspect.getsource(cache_utils.Cache.update)
    fix = "self.prefetch_stream.wait_stream(torch.cuda.default_stream(key_states.device))"
    if fix not in source:
        pytest.skip("this transformers' Cache.update has no prefetch wait to take out")
    namespace: dict = {}
    exec(compile(inspect.cleandoc("\n" + source).replace(fix, "pass"), cache_utils.__file__, "exec"),
         vars(cache_utils), namespace)
    monkeypatch.setattr(cache_utils.Cache, "update", namespace["update"])
    with simulated_gpus(count=1):
        model = copy.deepcopy(llama).to("cuda:0")
        with pytest.raises(StreamRace, match=r"cache_utils.py:.* is copied to the device at .*cache_utils.py"):
            greedy(model, "cuda:0", cache_implementation="offloaded")


def test_a_host_factory_with_pin_memory_and_an_explicit_cpu_device_is_pinned():
    with simulated_gpus(count=1):
        assert torch.zeros(3, device="cpu", pin_memory=True).is_pinned()
        assert not torch.zeros(3, device="cpu").is_pinned()
