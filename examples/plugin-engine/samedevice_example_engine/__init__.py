"""An example engine plugin: greedy decoding written by hand over a transformers model,
with its own KV-cache loop, the way a small inference engine would do it."""

from __future__ import annotations

import torch

from harness.engines import Capabilities, Engine, Generation, Placement, Request


class ExampleGreedyEngine(Engine):
    name = "example-greedy"
    capabilities = Capabilities(
        features=frozenset(),  # greedy only: scenarios with features are skipped with a reason
        devices=frozenset({"cpu", "cuda"}),
        simulated=True,  # runs on torch, so simulated GPUs apply
    )

    def load(self, request: Request, placement: Placement) -> None:
        from transformers import AutoModelForCausalLM

        self.device = torch.device(placement.devices[0])
        self.model = AutoModelForCausalLM.from_pretrained(request.model_dir).eval().to(self.device)

    def generate(self, request: Request) -> Generation:
        if request.scenario.sampling.mode != "greedy":
            raise NotImplementedError("example-greedy only decodes greedily")
        tokens = [self._greedy(ids, request) for ids in request.prompt_ids]
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens])

    @torch.no_grad()
    def _greedy(self, prompt: list[int], request: Request) -> list[int]:
        request.on_phase("prefill")
        ids = torch.tensor([prompt], device=self.device)
        out = self.model(ids, use_cache=True)
        generated: list[int] = []
        while True:
            token = out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1] on the model's device
            generated.append(int(token.cpu()[0, 0]))
            done = generated[-1] == request.eos_id and request.scenario.stop_at_eos
            if done or len(generated) >= request.scenario.max_new_tokens:
                return generated
            if len(generated) == 1:
                request.on_phase("decode")
            out = self.model(token, past_key_values=out.past_key_values, use_cache=True)

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.tensor([ids], device=self.device)).logits[0].float().cpu()

    def close(self) -> None:
        self.model = None
