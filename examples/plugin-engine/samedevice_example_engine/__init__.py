"""An example engine plugin: greedy decoding written by hand over a transformers model,
with its own KV-cache loop, the way a small inference engine would do it.

What the harness needs from it (README "Writing an engine"): `load` puts the model on the
placement's device; `generate` runs every prompt of `request.spec` and marks each prompt's
prefill; `teacher_forced_logits` scores given tokens through the same cached decode step
that generation uses. The harness finds the model (an `nn.Module` attribute) by itself,
checks where its weights live, and hooks its forward for the phases and the logits.
"""

from __future__ import annotations

import torch

from harness.engines import Capabilities, Engine, Generation, Placement, Request


class ExampleGreedyEngine(Engine):
    name = "example-greedy"
    capabilities = Capabilities(
        features=frozenset(),  # greedy only: scenarios with features are skipped with a reason
        devices=frozenset({"cpu", "cuda"}),
        runs_on_torch=True,  # runs on torch, so simulated GPUs apply
        sampling=False,  # sampled scenarios are skipped with a reason
    )

    def load(self, request: Request, placement: Placement) -> None:
        from transformers import AutoModelForCausalLM

        self.device = torch.device(placement.devices[0])
        self.model = AutoModelForCausalLM.from_pretrained(request.model_dir).eval().to(self.device)

    def generate(self, request: Request) -> Generation:
        spec = request.spec
        tokens = []
        for prompt in spec.prompt_ids:
            request.on_phase("prefill")  # the harness counts from here: prefill, then decode steps
            tokens.append(self._greedy(list(prompt), spec.max_new_tokens, spec.stop_id))
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens])

    @torch.no_grad()
    def _step(self, ids: torch.Tensor, past=None):
        """One forward of ids [1, S] on the model's device (the prompt, or one token with the
        cache): the last position's logits [1, V] and the cache."""
        out = self.model(ids, past_key_values=past, use_cache=True)
        return out.logits[:, -1], out.past_key_values

    def _greedy(self, prompt: list[int], max_new_tokens: int, stop_id: int | None) -> list[int]:
        logits, past = self._step(torch.tensor([prompt], device=self.device))  # the prompt: one host-to-device copy
        generated: list[int] = []
        while True:
            token = logits.argmax(-1, keepdim=True)  # [1, 1], stays on the device
            generated.append(int(token.cpu()[0, 0]))  # the one read-back per step
            if generated[-1] == stop_id or len(generated) >= max_new_tokens:
                return generated
            logits, past = self._step(token, past)

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        """Row j scores ids[j + 1], through the cached step generation uses."""
        given = torch.tensor([ids], device=self.device)
        logits, past = self._step(given[:, :1])
        rows = [logits[0].float().cpu()]
        for position in range(1, len(ids)):
            logits, past = self._step(given[:, position : position + 1], past)
            rows.append(logits[0].float().cpu())
        return torch.stack(rows)

    def close(self) -> None:
        self.model = None
