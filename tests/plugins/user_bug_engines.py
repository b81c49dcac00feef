"""A user-style toy engine around tests/sim_user_bugs.py, so the four founding bugs and the
silent round trip run through the whole harness (runner, checks, results) on simulated
GPUs. The scenario's tags pick the bug (`bug:1`..`bug:4`, `stray`) and `fixed` applies
the upstream fix."""

from __future__ import annotations

import torch

from harness.engines import register
from harness.engines.base import Capabilities, Engine, Generation, Placement, Request
from tests import sim_user_bugs as user

VOCAB, HIDDEN, BEAMS = 64, 32, 3


@register
class UserBugsEngine(Engine):
    name = "user-bugs"
    capabilities = Capabilities(devices=frozenset({"cpu", "cuda", "auto"}), runs_on_torch=True)

    def load(self, request: Request, placement: Placement) -> None:
        g = torch.Generator().manual_seed(0)
        self.devices = [torch.device(d) for d in placement.devices]
        first, last = self.devices[0], self.devices[-1]
        self.embed = torch.randn(VOCAB, HIDDEN, generator=g).to(first)
        self.head = (torch.randn(HIDDEN, VOCAB, generator=g) * 10).to(last)
        self.bias = torch.zeros(VOCAB).to(last)
        self.tags: set[str] = set(request.scenario.tags)
        if "near-tie" in self.tags:  # token 7 ties token 3 exactly; a 1e-3 nudge on the GPU flips it
            self.head[:, 7] = self.head[:, 3]
            self.embed = (self.embed.cpu() * 0 + self.head.cpu()[:, 3]).to(first)  # every step picks 3 or 7
        self.qweight = torch.randint(-127, 127, (HIDDEN, HIDDEN), generator=g, dtype=torch.int8).to(first)
        self.scale = torch.full((HIDDEN, 1), 0.01).to(first)
        # Two cache layers, split over the devices like device_map="auto".
        self.cache = [torch.randn(BEAMS, 4, 8, generator=g).to(self.devices[i % len(self.devices)]) for i in range(2)]

    def generate(self, request: Request) -> Generation:
        tags = set(request.scenario.tags)
        fixed = "fixed" in tags
        request.on_phase("prefill")
        if "stray" in tags:  # the toy loop has no prefill: every step is a decode step
            tokens = [user.greedy_decode(self.embed, self.head, request.prompt_ids[0][0] % VOCAB,
                                         request.scenario.max_new_tokens, stray=not fixed,
                                         on_start=lambda: request.on_phase("decode"))]
            return Generation(tokens=tokens, texts=[""], decode_steps=len(tokens[0]))
        token = torch.tensor([request.prompt_ids[0][0] % VOCAB], device=self.devices[0])
        out: list[int] = []
        rows: list[torch.Tensor] = []  # handed back for parity (Generation.step_logits): no module to record
        for step in range(request.scenario.max_new_tokens):
            if step == 1:
                request.on_phase("decode")
            hidden = self.embed[token]  # [1, HIDDEN]
            if "gpu-only-path" in tags and hidden.device.type == "cuda":
                half = hidden[0, :2].half()
                torch.polar(half, half)  # a CUDA kernel exists for float16; the CPU's does not
            if "bug:4" in tags:
                hidden = user.quantized_linear(hidden, self.qweight, self.scale, fixed=fixed)
            if "bug:2" in tags:
                user.attend_with_past(hidden.view(1, 1, 1, HIDDEN), past_len=4, fixed=fixed)
            if "bug:3" in tags:
                self.cache = user.reorder_cache(self.cache, BEAMS, fixed=2 if fixed else 0)
            logits = self._logits(hidden)
            if "bug:1" in tags:
                logits = user.apply_logit_bias(logits, self.bias, fixed=fixed)
            token = logits.argmax(-1)
            out.append(int(token.cpu()[0]))
            token = token.to(self.devices[0])
            if "near-tie" in tags:  # a flip is judged on the CPU run's own logits: hand them back
                rows.append(logits[0].float().cpu())
        return Generation(tokens=[out], texts=[""], step_logits=[torch.stack(rows)] if rows else None)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = hidden.to(self.head.device) @ self.head  # [S, VOCAB]
        on_gpu = logits.device.type == "cuda"
        if "diverge" in self.tags and on_gpu:  # llama.cpp #5137: partial offload, silently wrong
            logits = logits + torch.nn.functional.one_hot(torch.tensor(VOCAB - 1, device=logits.device), VOCAB) * 500
        if "near-tie" in self.tags and on_gpu:  # rounding on another device: a harmless flip
            logits = logits + torch.nn.functional.one_hot(torch.tensor(7, device=logits.device), VOCAB) * 1e-3
        if "suppress" in self.tags:  # a token suppressed on every device: -inf in every row
            logits = logits.index_fill(-1, torch.tensor([0], device=logits.device), float("-inf"))
        return logits

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        """The toy model has no context: position i's logits depend on token i alone."""
        tokens = torch.tensor([i % VOCAB for i in ids], device=self.devices[0])
        return self._logits(self.embed[tokens]).cpu()
