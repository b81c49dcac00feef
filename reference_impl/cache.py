"""KV caches, one per layer, chosen by the scenario's `features.kv_cache.kind`.

    static     preallocated [B, K, S_max, D] buffers on the layer's device (gpt-fast); written
               and read through `narrow` views.
    offloaded  kept in host memory between steps; each step brings the layer's past to the
               device in one explicit host-to-device copy and writes the new entries back in
               one device-to-host copy. Those are its only transfers, counted in `copies`.
               The host buffer is pinned for a GPU layer: the upload is non-blocking, and
               from pageable memory the host would wait for it (a hidden sync per layer).
    external   a past built by the caller and handed in (the Petals path): converted with
               `.to(dtype=..., device=...)` onto the layer's device, then grown by `torch.cat`
               as Petals' llama block does (`torch.cat([past_key_value[0], key_states])`).

Every cache answers `update(start, k, v) -> (k, v)` for positions [0, start + S) and
`reorder(index, length)` for beam search (row i becomes row index[i]). The static cache also
takes a [1] position tensor for `start` (the compiled decode step, see `compiled`): it writes
there with `index_copy_` and hands back the whole cache, so no shape depends on the
position; the other kinds run eagerly only. `on_host` says which index a reorder needs: a
host index for the offloaded cache, else one on the layer's device.

Axes: B batch (beams), K kv heads, S sequence, D head dim.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import torch
from torch import Tensor, nn

KINDS = ("static", "offloaded", "external")
Past = list[tuple[Tensor, Tensor]]  # per layer: keys and values [B, K, S, D]


class Cache(Protocol):
    on_host: bool

    def update(self, start: int | Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...

    def reorder(self, index: Tensor, length: int) -> None: ...

    def past(self, length: int) -> tuple[Tensor, Tensor]: ...


def eager_only(start: int | Tensor, kind: str) -> int:
    if not isinstance(start, int):
        raise TypeError(f"the {kind} KV cache follows the position in its shapes: it takes a host int, not a tensor")
    return start


class KVCache(nn.Module):
    """Static: keys and values preallocated on the layer's device, written in place."""

    on_host = False
    k: Tensor
    v: Tensor

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int | Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(start, Tensor):  # the compiled decode step: fixed shapes, the whole cache
            self.k.index_copy_(2, start, k)
            self.v.index_copy_(2, start, v)
            return self.k, self.v
        length = k.shape[2]
        self.k.narrow(2, start, length).copy_(k)
        self.v.narrow(2, start, length).copy_(v)
        return self.k.narrow(2, 0, start + length), self.v.narrow(2, 0, start + length)

    def reorder(self, index: Tensor, length: int) -> None:
        self.k[:, :, :length] = self.k[:, :, :length].index_select(0, index)
        self.v[:, :, :length] = self.v[:, :, :length].index_select(0, index)

    def past(self, length: int) -> tuple[Tensor, Tensor]:
        return self.k[:, :, :length], self.v[:, :, :length]


class OffloadedKVCache(nn.Module):
    """Keys and values in host memory ([2, B, K, S_max, D] on the CPU) between steps.

    Not a buffer on purpose: `model.to(device)` must not pull it onto the device.
    """

    on_host = True
    faults: frozenset[str] = frozenset()

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, pinned: bool = False) -> None:
        super().__init__()
        self.kv = torch.zeros((2, *shape), dtype=dtype, device="cpu", pin_memory=pinned)
        self.copies: Counter[str] = Counter()  # "h2d" / "d2h": the explicit transfers made
        self._side_streams: dict[torch.device, torch.cuda.Stream] = {}  # prefetch_without_wait only

    def update(self, start: int | Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start = eager_only(start, "offloaded")
        new = torch.stack((k, v))  # [2, B, K, S, D] on the layer's device
        end = start + k.shape[2]
        if start:
            past = self.kv[:, :, :, :start]
            if "prefetch_without_wait" in self.faults and k.device.type == "cuda":
                past = self._prefetch_on_side_stream(past, k.device)
                self.copies["h2d"] += 1
            elif "kv_cache_on_cpu" not in self.faults:  # Petals #570 left it on the host
                past = past.to(k.device, non_blocking=True)  # the one H2D of this layer's step
                self.copies["h2d"] += 1
            new_full = torch.cat((past, new), dim=3)
        else:
            new_full = new
        self.kv[:, :, :, start:end].copy_(new)  # the one D2H of this layer's step
        self.copies["d2h"] += 1
        return new_full[0], new_full[1]

    def _prefetch_on_side_stream(self, past: Tensor, device: torch.device) -> Tensor:
        """The fault `prefetch_without_wait`: the upload issued on a side stream (to overlap
        with compute) and consumed on the current one with no wait_stream between them."""
        stream = self._side_streams.get(device)
        if stream is None:
            stream = self._side_streams[device] = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            past = past.to(device, non_blocking=True)
        # the fix: torch.cuda.current_stream(device).wait_stream(stream)
        return past

    def reorder(self, index: Tensor, length: int) -> None:
        self.kv[:, :, :, :length] = self.kv[:, :, :, :length].index_select(1, index)

    def past(self, length: int) -> tuple[Tensor, Tensor]:
        return self.kv[0, :, :, :length], self.kv[1, :, :, :length]


class ExternalKVCache(nn.Module):
    """A past supplied by the caller, grown by concatenation."""

    on_host = False

    def __init__(self, k: Tensor, v: Tensor) -> None:
        super().__init__()
        self.k, self.v = k, v

    def update(self, start: int | Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start = eager_only(start, "external")
        if start != self.k.shape[2]:
            raise ValueError(f"external past holds {self.k.shape[2]} positions, update starts at {start}")
        self.k = torch.cat((self.k, k), dim=2)  # Petals: torch.cat([past_key_value[0], key_states])
        self.v = torch.cat((self.v, v), dim=2)
        return self.k, self.v

    def reorder(self, index: Tensor, length: int) -> None:
        self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)

    def past(self, length: int) -> tuple[Tensor, Tensor]:
        return self.k[:, :, :length], self.v[:, :, :length]


def import_past(k: Tensor, v: Tensor, dtype: torch.dtype, device: torch.device, faults: frozenset[str]) -> ExternalKVCache:
    """Hand a caller's past to a layer on `device` (Petals #574's fix: dtype *and* device)."""
    if "kv_cache_on_cpu" in faults:
        return ExternalKVCache(k.to(dtype), v.to(dtype))  # Petals #570: .to(dtype) only
    return ExternalKVCache(k.to(dtype=dtype, device=device), v.to(dtype=dtype, device=device))
