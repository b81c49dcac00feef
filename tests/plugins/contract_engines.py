"""User-style engines written the way README "Writing an engine" shows, each with one breach
of the contract a real plugin was seen to make. The harness must catch every breach, through
`samedevice run` and through `samedevice check-engine`:

- contract-clean: the honest one (greedy over a transformers model, its own cached loop);
- contract-no-marks: never calls request.on_phase, with a stray round trip per step;
- contract-diverge: a bug in its sampler on GPUs only, and a plain full forward as teacher
  forcing, which cannot see it;
- contract-ignores-auto: declares auto but puts the whole model on the first GPU;
- contract-unhookable: hides its model from the harness and marks no phase;
- contract-bad-tf: its teacher forcing scores another model than it generates with.
"""

from __future__ import annotations

import torch

from harness.engines import register
from harness.engines.base import Capabilities, Engine, Generation, Placement, Request


@register
class CleanEngine(Engine):
    name = "contract-clean"
    capabilities = Capabilities(devices=frozenset({"cpu", "cuda", "auto"}), runs_on_torch=True, sampling=False)
    marks_phases = True

    def load(self, request: Request, placement: Placement) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(request.model_dir).eval()
        if placement.kind == "auto":
            from accelerate import dispatch_model

            from harness.engines.hf_transformers import balanced_device_map

            device_map = balanced_device_map(model, placement.devices)
            model = dispatch_model(model, device_map=device_map, main_device=placement.devices[0])
        else:
            model = model.to(placement.devices[0])
        self.model = model
        self.device = model.get_input_embeddings().weight.device

    def generate(self, request: Request) -> Generation:
        tokens = []
        for prompt in request.spec.prompt_ids:
            if self.marks_phases:
                request.on_phase("prefill")
            tokens.append(self.greedy(list(prompt), request.spec.max_new_tokens, request.spec.stop_id))
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens])

    @torch.no_grad()
    def step(self, ids: torch.Tensor, past=None):
        out = self.model(ids, past_key_values=past, use_cache=True)
        return self.sample_scores(out.logits[:, -1]), out.past_key_values

    def sample_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def greedy(self, prompt: list[int], max_new_tokens: int, stop_id: int | None) -> list[int]:
        scores, past = self.step(torch.tensor([prompt], device=self.device))
        out: list[int] = []
        while True:
            token = scores.argmax(-1, keepdim=True)
            out.append(int(token.cpu()[0, 0]))
            if out[-1] == stop_id or len(out) >= max_new_tokens:
                return out
            scores, past = self.step(token.to(self.device), past)

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        given = torch.tensor([ids], device=self.device)
        scores, past = self.step(given[:, :1])
        rows = [scores[0].float().cpu()]
        for position in range(1, len(ids)):
            scores, past = self.step(given[:, position : position + 1], past)
            rows.append(scores[0].float().cpu())
        return torch.stack(rows)


@register
class NoMarksEngine(CleanEngine):
    name = "contract-no-marks"
    marks_phases = False

    def sample_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.cpu().to(logits.device)  # vLLM #3384: a round trip per step


@register
class DivergeEngine(CleanEngine):
    name = "contract-diverge"

    def sample_scores(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.is_cuda:  # a sampler bug on GPUs only: token 100 gets a large boost
            logits = logits + torch.nn.functional.one_hot(torch.tensor(100, device=logits.device), logits.shape[-1]) * 1e4
        return logits

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        """What examples/plugin-engine used to show: a plain forward, not the sampling path."""
        with torch.no_grad():
            return self.model(torch.tensor([ids], device=self.device)).logits[0].float().cpu()


@register
class IgnoresAutoEngine(CleanEngine):
    name = "contract-ignores-auto"

    def load(self, request: Request, placement: Placement) -> None:
        from transformers import AutoModelForCausalLM

        self.device = torch.device(placement.devices[0])  # every GPU but the first is ignored
        self.model = AutoModelForCausalLM.from_pretrained(request.model_dir).eval().to(self.device)


@register
class UnhookableEngine(CleanEngine):
    name = "contract-unhookable"
    marks_phases = False

    def modules(self) -> list[torch.nn.Module]:
        return []  # keeps its model away from the harness


@register
class BadTeacherForcingEngine(CleanEngine):
    name = "contract-bad-tf"

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        logits = super().teacher_forced_logits(ids)
        return logits.flip(-1)  # scores the vocabulary backwards


@register
class OwnDtypeErrorEngine(CleanEngine):
    name = "contract-own-dtype-error"

    def generate(self, request: Request) -> Generation:
        if self.device.type == "cuda":  # the engine's own error, worded like a missing CPU kernel
            raise NotImplementedError("\"addmm_impl_cpu_\" not implemented for 'Half'")
        return super().generate(request)


@register
class CpuBiasEngine(CleanEngine):
    name = "contract-cpu-bias"

    def sample_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + torch.zeros(logits.shape[-1])  # a bias row built on the host: fails on every GPU
