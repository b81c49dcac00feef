"""Engines for the per-token transfer profiles (Capabilities.transfers): the reference engine
with a stray host round trip on every forward (the logits copied to the CPU and back, as
vLLM #3384's sampler did), and the same engine without it. Neither declares a profile, so
both are judged by the default: the reference engine's.
"""

from __future__ import annotations

from harness.engines import register
from harness.engines.base import Capabilities, Placement, Request
from harness.engines.reference import ReferenceEngine


@register
class StrayRoundTripEngine(ReferenceEngine):
    name = "stray-round-trip"
    capabilities = Capabilities(devices=frozenset({"cpu", "cuda", "auto"}), runs_on_torch=True, families=frozenset({"llama"}))
    stray = True

    def load(self, request: Request, placement: Placement) -> None:
        super().load(request, placement)
        if self.stray:
            assert self.model is not None
            self.model.register_forward_hook(lambda module, args, logits: logits.cpu().to(logits.device))


@register
class NoStrayRoundTripEngine(StrayRoundTripEngine):
    name = "no-stray-round-trip"
    stray = False
