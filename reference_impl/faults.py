"""Fault switches: each puts one real device bug (docs/bug-classes.md) back into the reference
implementation, so the harness can prove it catches that bug class.

A switch is off unless named, in the scenario's `faults:` list or in the environment
(`SAMEDEVICE_FAULTS=logit_bias_on_cpu,mask_on_cpu`). With every switch off, each code path
below is the clean one. The switches live where the bug lived: the sampler, the beam-search
reorder, the cache import, the dequantizer, the loader, the input placement.

    switch                     where                         upstream bug
    logit_bias_on_cpu          generate: bias + logits       mistral.rs #398 (fixed by #454)
    ancestors_on_cpu           beam: reorder index           Outlines #651
    ancestors_on_first_device  model: per-layer reorder      Outlines #660, transformers #9200
    kv_cache_on_cpu            cache: external past import   Petals #570 (fixed by #574)
    dequantize_to_cpu          quantize: dequantize          Candle #1823
    router_on_cpu              placement: MoE router         mistral.rs #1447
    stray_roundtrip_per_step   generate: every decode step   vLLM #3384 (a .cpu() per step)
    mask_on_cpu                constrained: token mask       transformers PR #38558
    input_on_first_device      generate: prompt ids          lm-evaluation-harness #1575
    padding_mask_on_cpu        batched: rows' slot mask      a padded batch's attention_mask built on the host, never moved
    position_ids_on_cpu        batched: rows' positions      per-row position_ids built on the host, never moved
    token_read_non_blocking    generate: token read-back     flashinfer PR #564, PyTorch #182190
    prefetch_without_wait      cache: offloaded prefetch     transformers' offloaded cache (wait_stream)
    pageable_upload_per_step   generate: next input          vLLM PR #54660 (pageable H2D stalls)
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from harness.format.faults import FAULTS  # the one list, read by the scenario format too

ENV_VAR = "SAMEDEVICE_FAULTS"


def resolve(names: Iterable[str] = ()) -> frozenset[str]:
    """The switches that are on: `names` plus those in $SAMEDEVICE_FAULTS, all known."""
    wanted = set(names)
    wanted.update(n.strip() for n in os.environ.get(ENV_VAR, "").split(",") if n.strip())
    unknown = sorted(wanted.difference(FAULTS))
    if unknown:
        raise ValueError(f"unknown fault switch {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    return frozenset(wanted)
