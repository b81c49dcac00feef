"""Dimensions of the generated tiny models, in plain Python (no torch).

The scenario format checks a model spec with these (heads that divide, a model that fits in
memory) before anything is built; the model factory (`harness.models.tinymodel`) builds with the
same numbers, so the two never disagree.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

VOCAB_SIZE = 512  # every generated model: byte-level BPE trained on harness/data/corpus.txt
MIXTRAL_EXPERTS = {"num_experts": 4, "experts_per_token": 2}  # defaults of family: mixtral
CHECKPOINT_BYTES_PER_PARAM = 4  # the factory generates and saves float32, whatever the dtype
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FALLBACK_MEMORY_BYTES = 16 * 2**30  # where the platform does not say how much memory it has


@dataclass(frozen=True)
class Dims:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    num_experts: int = 0
    experts_per_token: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


PRESETS = {
    "tiny": Dims(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128),
    "parity": Dims(hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=4, intermediate_size=512),
    "bench": Dims(hidden_size=512, num_layers=2, num_heads=8, num_kv_heads=4, intermediate_size=1024),
}


def resolve_dims(spec: Any) -> Dims:
    """The preset's dimensions (`spec.size`) with the spec's explicit fields laid over them.

    `spec` is a `harness.format.scenario.ModelSpec` (typed loosely: the format imports this module).
    No consistency check here: `ModelSpec` refuses impossible combinations where it is defined.
    """
    base = asdict(PRESETS[spec.size])
    if spec.family == "mixtral":
        base.update(MIXTRAL_EXPERTS)
    for name in base:
        value = getattr(spec, name, None)
        if value is not None:
            base[name] = value
    return Dims(**base)


def parameter_count(family: str, dims: Dims) -> int:
    """Parameters of the generated model (the shapes of `tinymodel._shapes`, counted)."""
    h, i = dims.hidden_size, dims.intermediate_size
    kv = dims.num_kv_heads * dims.head_dim
    attention = 2 * h + 2 * h * h + 2 * kv * h  # two norms, q and o, k and v
    if family == "mixtral":
        feed_forward = dims.num_experts * h + dims.num_experts * 3 * i * h  # router + experts
    else:
        feed_forward = 3 * i * h
    return 2 * VOCAB_SIZE * h + h + dims.num_layers * (attention + feed_forward)


def kv_cache_bytes(dims: Dims, max_seq_len: int, batch: int, dtype: str) -> int:
    """The reference's static KV cache: keys and values for `max_seq_len` positions per layer."""
    return 2 * dims.num_layers * batch * dims.num_kv_heads * max_seq_len * dims.head_dim * DTYPE_BYTES[dtype]


@lru_cache(maxsize=1)
def host_memory_bytes() -> int:
    """Physical memory of this machine (sysconf on Linux and macOS; a fixed guess elsewhere)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_MEMORY_BYTES
    return pages * page_size if pages > 0 and page_size > 0 else FALLBACK_MEMORY_BYTES


def memory_limit_bytes() -> int:
    """What one case may need: half the machine, leaving room for the harness and the OS."""
    return host_memory_bytes() // 2
