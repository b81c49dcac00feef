"""Engines whose decode loop calls the model's layers itself, as many engines do: the main
model's forward never runs, so the harness records no logits from it. Their teacher forcing is
a plain full forward, the way most scoring code is written, so it agrees with the CPU whatever
generate() did. `layer-loop-divergent` never feeds the last prompt token on a GPU (a device-only
divergence); `layer-loop` is the same loop without that bug; `layer-loop-handing-logits` hands
its logits back through `Generation.step_logits`.
"""

from __future__ import annotations

import torch

from harness.engines import register
from harness.engines.base import Capabilities, Generation, Request
from harness.engines.reference import ReferenceEngine


@register
class LayerLoopEngine(ReferenceEngine):
    name = "layer-loop"
    capabilities = Capabilities(devices=frozenset({"cpu", "cuda", "auto"}), runs_on_torch=True, sampling=False,
                                families=frozenset({"llama"}))
    drops_last_prompt_token_on_gpu = False
    hands_logits_back = False

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The last position's logits [V], through the layers one by one (no cache)."""
        model = self.model
        assert model is not None
        x = model.tok_embeddings(ids)
        for block, device in zip(model.layers, model.block_devices, strict=True):
            x = block(x.to(device), 0)
        return model.output(model.norm(x[:, -1].to(model.output_device)))[0].float()

    @torch.no_grad()
    def generate(self, request: Request) -> Generation:
        assert self.model is not None
        device = self.model.input_device
        tokens, logits = [], []
        for prompt in request.prompt_ids:
            request.on_phase("prefill")
            if self.drops_last_prompt_token_on_gpu and device.type != "cpu":
                prompt = prompt[:-1]  # the bug
            ids = torch.tensor([prompt], device=device)
            out, rows = [], []
            for step in range(request.spec.max_new_tokens):
                if step == 1:
                    request.on_phase("decode")
                row = self._logits(ids)
                rows.append(row)
                chosen = row.argmax().view(1, 1)
                out.append(int(chosen.cpu()))
                ids = torch.cat([ids, chosen.to(ids.device)], dim=1)
            tokens.append(out)
            logits.append(torch.stack(rows).cpu())
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens],
                          step_logits=logits if self.hands_logits_back else None)

    def teacher_forced_logits(self, ids: list[int]) -> torch.Tensor:
        assert self.model is not None
        with torch.no_grad():
            return self.model(torch.tensor([ids], device=self.model.input_device), 0)[0].float().cpu()


@register
class LayerLoopDivergentEngine(LayerLoopEngine):
    name = "layer-loop-divergent"
    drops_last_prompt_token_on_gpu = True


@register
class LayerLoopHandingLogitsEngine(LayerLoopDivergentEngine):
    name = "layer-loop-handing-logits"
    hands_logits_back = True
