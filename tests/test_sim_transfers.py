"""The ledger sees every host/device copy and host sync of a simulated run, with bytes and the
user's call site; `track_transfers` on plain CPU counts host reads; real-CUDA profiler events
are parsed into the same ledger."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import torch

from harness.devices import simulated_gpus, track_transfers
from harness.devices.ledger import Ledger
from harness.devices.tracking import host_read_spans, memcpy_events, replay, timeline_marks
from tests import sim_user_bugs as user

STEPS = 5


def decode_on_sim(stray: bool) -> tuple[list[int], Ledger]:
    torch.manual_seed(0)
    embed, head = torch.randn(16, 8), torch.randn(8, 16)
    ledger = Ledger()
    with simulated_gpus(ledger=ledger):
        embed_gpu, head_gpu = embed.to("cuda:0"), head.to("cuda:0")
        ledger.phase = "decode"
        ledger.decode_tokens = STEPS
        tokens = user.greedy_decode(embed_gpu, head_gpu, first=3, steps=STEPS, stray=stray)
    assert tokens == user.greedy_decode(embed, head, first=3, steps=STEPS, stray=stray), "sim must match CPU"
    return tokens, ledger


def test_a_silent_round_trip_per_step_is_counted_with_bytes_and_site():
    _, ledger = decode_on_sim(stray=True)
    hidden_bytes = 8 * 4  # one float32 row of the embedding
    site = f"sim_user_bugs.py:{user.marked_line('STRAY')}"
    at_site = {(kind, op): n for (_, kind, op, where), n in ledger.sites.items() if where.endswith(site)}
    assert at_site == {("d2h", "cpu"): STEPS, ("h2d", "to"): STEPS}, "one round trip per step, at the stray line"
    assert ledger.per_token("d2h") == 1
    assert ledger.per_token("h2d") == 1 + 1 / STEPS, "plus the first token, built from host data once"
    assert ledger.bytes[("decode", "d2h")] == STEPS * hidden_bytes
    assert ledger.bytes[("decode", "h2d")] == STEPS * hidden_bytes + 8


def test_the_clean_loop_reads_back_one_token_per_step_and_nothing_else():
    _, ledger = decode_on_sim(stray=False)
    assert ledger.count("decode", "d2h") == 0
    assert ledger.count("decode", "h2d") == 1, "only building the first token from host data"
    assert ledger.per_token("sync") == 1, "the .item() per step"
    assert ledger.top_sites("decode", "sync")[0][:1] == ("item",)


def test_host_syncs_of_every_kind_are_counted():
    ledger = Ledger()
    with simulated_gpus(ledger=ledger):
        x = torch.arange(6.0, device="cuda:0")
        x.sum().item()
        x.tolist()
        bool(x[0] > 1)
        int(x[1])
        float(x[2])
        x.nonzero()
        x[x > 2]
        torch.masked_select(x, x > 1)
        torch.cuda.synchronize()
        x.cpu()
    ops = sorted(op for (_, kind, op, _), n in ledger.sites.items() if kind == "sync" for _ in range(n))
    assert ops == sorted(["item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "__getitem__",
                          "masked_select", "synchronize"])
    assert ledger.count("load", "d2h") == 1, ".cpu() is a copy, not also a sync"


def test_cpu_indices_and_host_data_are_copies_to_the_device():
    ledger = Ledger()
    with simulated_gpus(count=2, ledger=ledger):
        x = torch.arange(12.0).reshape(3, 4).to("cuda:0")
        rows = torch.tensor([2, 0])
        picked = x[rows]  # allowed, as on a GPU: the index is copied over
        assert picked.device == torch.device("cuda", 0)
        assert torch.equal(picked.cpu(), torch.arange(12.0).reshape(3, 4)[rows])
        torch.tensor([1, 2, 3], device="cuda:1")
        x.to("cuda:1")
        x[0] = torch.ones(4)  # host value into a device row
    sites = {(kind, op): n for (_, kind, op, _), n in ledger.sites.items()}
    assert sites[("h2d", "__getitem__")] == 1
    assert sites[("h2d", "tensor")] == 1
    assert sites[("d2d", "to")] == 1
    assert sites[("h2d", "__setitem__")] == 1
    assert ledger.bytes[("load", "d2d")] == 12 * 4


def test_track_transfers_on_plain_cpu_counts_host_reads_only():
    ledger = Ledger()
    x = torch.arange(4.0)
    with track_transfers(ledger):
        x.sum().item()
        x.tolist()
        x.nonzero()
        y = x * 2 + 1
        y.cpu()
    assert ledger.count("load", "sync") == 3
    assert ledger.count("load", "d2h") == 0
    assert ledger.count("load", "h2d") == 0
    assert "item" not in torch.Tensor.__dict__, "the wrappers are removed afterwards"


def test_track_transfers_inside_a_simulation_points_it_at_the_ledger():
    outer, inner = Ledger(), Ledger()
    with simulated_gpus(ledger=outer):
        x = torch.ones(3, device="cuda:0")
        with track_transfers(inner):
            x.cpu()
        x.cpu()
    assert inner.count("load", "d2h") == 1
    assert outer.count("load", "d2h") == 1


class FakeKinetoEvent:
    def __init__(self, name: str, start_us: float, nbytes: int = 0, metadata: str = "", correlation: int = 0,
                 duration_us: float = 0.0):
        self._name, self._start, self._nbytes, self._metadata = name, start_us, nbytes, metadata
        self._correlation, self._duration = correlation, duration_us

    def duration_ns(self):
        return int(self._duration * 1000)

    def correlation_id(self):
        return self._correlation

    def name(self):
        return self._name

    def start_ns(self):
        return int(self._start * 1000)

    def nbytes(self):
        return self._nbytes

    def metadata_json(self):
        return self._metadata


def test_profiler_memcpy_events_are_replayed_into_the_ledger_by_phase_and_step():
    calls = [("phase", "prefill"), ("phase", "decode"), ("record", "sync", 0, "cuda sync", "gen.py:7"), ("step",),
             ("phase", "finish")]
    events = [
        FakeKinetoEvent("samedevice::ledger::0", 10.0),
        FakeKinetoEvent("Memcpy HtoD (Pageable -> Device)", 11.0, nbytes=64),
        FakeKinetoEvent("aten::add", 12.0),
        FakeKinetoEvent("samedevice::ledger::1", 20.0),
        FakeKinetoEvent("Memcpy DtoH (Device -> Pageable)", 21.0, metadata='"bytes": 8, "memory bandwidth (GB/s)": 1.0'),
        FakeKinetoEvent("samedevice::ledger::2", 21.5),
        FakeKinetoEvent("Memcpy DtoD (Device -> Device)", 22.0, nbytes=128),
        FakeKinetoEvent("Memcpy PtoP (Device -> Device)", 23.0, nbytes=256),
        FakeKinetoEvent("samedevice::ledger::3", 30.0),
        FakeKinetoEvent("samedevice::ledger::4", 40.0),
        FakeKinetoEvent("Memcpy DtoH (Device -> Pageable)", 41.0, nbytes=8),
        FakeKinetoEvent("Memcpy HtoD (Pinned -> Device)", 5.0, nbytes=4),  # before any marker: load
    ]
    copies = memcpy_events(events)
    assert sorted(copies) == sorted([("h2d", 64, 11.0, True), ("d2h", 8, 21.0, False), ("d2d", 128, 22.0, False),
                                     ("d2d", 256, 23.0, False), ("d2h", 8, 41.0, False), ("h2d", 4, 5.0, False)])
    assert timeline_marks(events) == [(10.0, 0), (20.0, 1), (21.5, 2), (30.0, 3), (40.0, 4)]
    ledger = Ledger()
    sites = {("decode", "d2h"): deque([("cpu", "sampler.py:12", False)])}
    replay(ledger, "load", calls, timeline_marks(events), copies, sites)
    assert ledger.to_json()["counts"] == {"load.h2d": 1, "prefill.h2d": 1, "decode.d2h": 1, "decode.d2d": 2,
                                          "decode.sync": 1, "finish.d2h": 1}
    assert ledger.decode_tokens == 1, "one complete step"
    assert ledger.bytes[("decode", "d2d")] == 384
    assert ledger.top_sites("decode", "d2h") == [("cpu", "sampler.py:12", 1)]
    assert ledger.top_sites("prefill", "h2d") == [("memcpy", "?", 1)]
    assert ledger.top_sites("decode", "sync") == [("cuda sync", "gen.py:7", 1)]


def test_an_asynchronous_copy_counts_where_the_host_launched_it():
    events = [
        FakeKinetoEvent("samedevice::ledger::0", 10.0),
        FakeKinetoEvent("cudaMemcpyAsync", 12.0, correlation=7),
        FakeKinetoEvent("samedevice::ledger::1", 13.0),
        FakeKinetoEvent("samedevice::ledger::2", 13.5),
        FakeKinetoEvent("Memcpy HtoD (Pageable -> Device)", 14.0, nbytes=4, correlation=7),  # ran after decode ended
    ]
    ledger = Ledger()
    calls = [("phase", "decode"), ("step",), ("phase", "finish")]
    replay(ledger, "load", calls, timeline_marks(events), memcpy_events(events), {})
    assert (ledger.count("decode", "h2d"), ledger.count("finish", "h2d")) == (1, 0)


def test_function_events_from_the_profiler_table_are_understood_too():
    event = SimpleNamespace(name="Memcpy DtoH (Device -> Pinned)", time_range=SimpleNamespace(start=7.0), nbytes=None,
                            metadata_json=None)
    assert memcpy_events([event]) == [("d2h", 0, 7.0, False)]


def test_a_pageable_non_blocking_upload_is_a_copy_and_a_sync_on_real_cuda_as_on_the_simulator():
    """The simulator's hidden-stall rule (sim_streams.copy_h2d), replayed from profiler events:
    the memory kind from the event name, non_blocking from the copy hook matched to it. Not
    run on a GPU: the events are fabricated with Kineto's names."""
    from harness.devices.tracking import _copy_hook

    def upload(pageable, pinned):  # the user's code, run on the simulator below
        pageable.to("cuda:0")
        pageable.to("cuda:0", non_blocking=True)
        pinned.to("cuda:0", non_blocking=True)
        pinned.cuda(0, True)
        pageable.cuda(0, non_blocking=True)

    simulated = Ledger()
    with simulated_gpus(ledger=simulated):
        upload(torch.ones(4), torch.ones(4).pin_memory())

    sites: dict = {}
    hooks = {name: _copy_hook(name, lambda self, *args, **kwargs: None,
                              lambda kind, op, nb: sites.setdefault(("load", kind), deque()).append((op, "up.py:1", nb)))
             for name in ("to", "cuda")}
    fake = SimpleNamespace(device=torch.device("cpu"),
                           to=lambda *a, **k: hooks["to"](fake, *a, **k), cuda=lambda *a, **k: hooks["cuda"](fake, *a, **k))
    upload(fake, fake)  # the hooks see the same calls' arguments (memory kinds come from the events)
    assert [entry[2] for entry in sites[("load", "h2d")]] == [False, True, True, True, True]
    events = [FakeKinetoEvent(f"Memcpy HtoD ({memory} -> Device)", float(i), nbytes=16)
              for i, memory in enumerate(("Pageable", "Pageable", "Pinned", "Pinned", "Pageable"))]
    real = Ledger()
    replay(real, "load", [], timeline_marks(events), memcpy_events(events), sites)
    assert real.to_json()["counts"] == simulated.to_json()["counts"] == {"load.h2d": 5, "load.sync": 2}
    assert real.top_sites("load", "sync") == [("to(non_blocking=True) from pageable memory", "up.py:1", 1),
                                              ("cuda(non_blocking=True) from pageable memory", "up.py:1", 1)]
    assert simulated.top_sites("load", "sync")[0][0] == "to(non_blocking=True) from pageable memory"


def test_a_copy_of_no_element_is_no_transfer():
    """libtorch's copy_ returns before any memcpy for an empty tensor, so a real GPU shows
    none (transformers' DynamicCache builds `torch.tensor([], device=...)` per layer)."""
    ledger = Ledger()
    with simulated_gpus(ledger=ledger):
        torch.tensor([], device="cuda:0")
        torch.empty(0).to("cuda:0").cpu()
        torch.ones(2).to("cuda:0")
    assert ledger.to_json()["counts"] == {"load.h2d": 1}


def test_a_host_reads_own_copy_is_part_of_its_sync_not_a_d2h():
    """Real CUDA: `item()` makes a small DtoH memcpy; the simulator counts one sync and no
    copy, and the replay does the same (Python-level reads are marked, C++ ones seen as ops)."""
    events = [
        FakeKinetoEvent("samedevice::ledger::0", 10.0),
        FakeKinetoEvent("samedevice::ledger::1", 11.0),  # item(): its sync...
        FakeKinetoEvent("samedevice::ledger::2", 11.1),  # ...and the read begins
        FakeKinetoEvent("Memcpy DtoH (Device -> Pageable)", 11.5, nbytes=4),
        FakeKinetoEvent("samedevice::ledger::3", 12.0),  # the read ends
        FakeKinetoEvent("aten::_local_scalar_dense", 20.0, duration_us=2.0),  # an item() inside an op
        FakeKinetoEvent("Memcpy DtoH (Device -> Pageable)", 21.0, nbytes=4),
        FakeKinetoEvent("Memcpy DtoH (Device -> Pageable)", 30.0, nbytes=64),  # an explicit .cpu()
    ]
    calls = [("phase", "decode"), ("record", "sync", 0, "item", "loop.py:3"), ("read", True), ("read", False)]
    ledger = Ledger()
    replay(ledger, "load", calls, timeline_marks(events), memcpy_events(events), {}, host_read_spans(events))
    assert ledger.to_json()["counts"] == {"decode.d2h": 1, "decode.sync": 1}
    assert ledger.bytes[("decode", "d2h")] == 64
