"""Beam search, with every layer's cache reordered by the beams' ancestors on that layer's
device (Outlines #651 / #660, transformers #9200).

Each step, on the logits' device: log-probabilities of the processed logits (bias, penalty,
grammar mask) are added to each beam's score; the best 2N candidates over all beams are
taken, and the best N that do not end the sequence continue (their rows, `ancestors`, and
their tokens). One device-to-host copy brings the 2N candidates and the N kept positions
back, packed in one float64 tensor: the host keeps each beam's tokens, finishes the
hypotheses that chose EOS (if ranked within the first N, as transformers does), advances
and reorders the grammar matchers, and decides when to stop. Nothing goes host-to-device
(except the grammar's mask, see `constrained`).

Scores: a hypothesis scores sum(log p) / length ** length_penalty, length counting the
generated tokens (EOS included). Search stops at max_new_tokens, or once N hypotheses are
finished and no running beam can beat the worst of them (transformers' early_stopping=False
rule). Returned best first.

Beam search decodes eagerly: `GenerateConfig.compile` applies to `generate` only.

Axes: N beams, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from reference_impl.generate import (
    GenerateConfig,
    _noop,
    build_pipeline,
    prefill,
    prompt_tensor,
    to_input_device,
)
from reference_impl.model import Transformer

NEG_INF = float("-inf")


@dataclass
class Beam:
    tokens: list[int]
    score: float


@dataclass
class BeamSearchResult:
    beams: list[Beam]  # best first
    steps: int  # tokens chosen per beam: the prefill's, then one per decode forward pass


class Hypotheses:
    """The best `size` finished beams so far."""

    def __init__(self, size: int, length_penalty: float) -> None:
        self.size, self.length_penalty = size, length_penalty
        self.beams: list[Beam] = []

    def score(self, total_logprob: float, length: int) -> float:
        return total_logprob / length**self.length_penalty

    def add(self, tokens: list[int], total_logprob: float) -> None:
        if total_logprob == NEG_INF:
            return
        self.beams.append(Beam(tokens, self.score(total_logprob, len(tokens))))
        self.beams.sort(key=lambda beam: -beam.score)
        del self.beams[self.size :]

    def cannot_improve(self, best_running: float, length: int) -> bool:
        if len(self.beams) < self.size:
            return False
        return self.beams[-1].score >= self.score(best_running, length)


@torch.inference_mode()
def beam_search(
    model: Transformer,
    prompt_ids: list[int],
    config: GenerateConfig,
    on_phase: Callable[[str], None] = _noop,
) -> BeamSearchResult:
    """The best `config.num_return` beams for one prompt, best first."""
    if config.temperature > 0:
        raise ValueError("beam search is deterministic here: sampling with beams is not implemented")
    n, vocab, eos = config.num_beams, model.args.vocab_size, config.stop_id
    on_phase("prefill")
    ids = prompt_tensor(model, [prompt_ids] * n)  # [N, S]: every beam starts from the prompt
    pipeline = build_pipeline(model, ids, config)
    device = model.output_device
    scores = torch.zeros(n, device=device)
    scores[1:] = NEG_INF  # step 1: only beam 0 proposes, so the beams start distinct
    logits = prefill(model, ids, config.kv_cache, on_phase=on_phase)  # [N, V]

    finished = Hypotheses(n, config.length_penalty)
    histories: list[list[int]] = [[] for _ in range(n)]
    position = len(prompt_ids)
    while True:
        candidates = (scores[:, None] + pipeline(logits).log_softmax(dim=-1)).view(-1)  # [N * V]
        top_scores, top_ids = candidates.topk(2 * n)  # [2N]
        top_tokens, top_rows = top_ids % vocab, top_ids // vocab
        running = top_scores if eos is None else top_scores.masked_fill(top_tokens == eos, NEG_INF)
        keep = running.topk(n).indices  # [N]: positions among the 2N
        scores, tokens, ancestors = running.gather(0, keep), top_tokens.gather(0, keep), top_rows.gather(0, keep)
        host = torch.cat((top_scores.double(), top_ids.double(), keep.double())).cpu().tolist()  # the read-back

        cand_scores, cand_ids, kept = host[: 2 * n], [int(i) for i in host[2 * n : 4 * n]], [int(k) for k in host[4 * n :]]
        if eos is not None:
            for rank in range(n):  # an EOS ranked within the first N finishes its beam
                if cand_ids[rank] % vocab == eos:
                    finished.add(histories[cand_ids[rank] // vocab] + [eos], cand_scores[rank])
        host_rows = [cand_ids[k] // vocab for k in kept]
        host_tokens = [cand_ids[k] % vocab for k in kept]
        host_scores = [cand_scores[k] if cand_ids[k] % vocab != eos else NEG_INF for k in kept]
        histories = [histories[row] + [token] for row, token in zip(host_rows, host_tokens, strict=True)]
        if pipeline.constraint is not None:  # a dead row (score -inf) keeps its matcher as is
            pipeline.constraint.reorder(host_rows)
            alive = [row for row, score in enumerate(host_scores) if score != NEG_INF]
            pipeline.constraint.advance([host_tokens[row] for row in alive], rows=alive)

        steps = len(histories[0])
        if steps >= config.max_new_tokens or finished.cannot_improve(max(host_scores), steps):
            break
        if steps == 1:
            on_phase("decode")
        pipeline.reorder(ancestors)
        pipeline.observe(tokens)
        host_index = torch.tensor(host_rows)  # built on the host: for host caches only
        model.reorder_caches(host_index if "ancestors_on_cpu" in model.faults else ancestors, host_index, position)
        logits = model(to_input_device(model, tokens), position, last_only=True)
        position += 1

    if not finished.beams or steps >= config.max_new_tokens:
        for tokens_so_far, total in zip(histories, host_scores, strict=True):
            finished.add(tokens_so_far, total)
    return BeamSearchResult(finished.beams[: min(config.num_return, n)], steps)
