"""The phases and steps of a generation, as the harness sees them.

The harness hooks the forward of the engine's main torch module (`Engine.modules()[0]`):

- `setup`: generate() has been called, no prompt forward yet (one-off work);
- `prefill`: a prompt's first forward. A forward in `setup` starts a prompt; so does the
  engine's `on_phase("prefill")`, and a forward of several positions after single-position
  decode steps (the next prompt of an engine that does not mark its prompts). A further
  `on_phase("prefill")` before any decode step marks another chunk of the same prefill
  (its next forward is prefill too);
- `decode`: from a prompt's second forward on (or the engine's `on_phase("decode")`), each
  forward starts one decode step; a step is complete when the next forward starts;
- `finish`: what follows the start of the last step (its tail and one-off work such as
  reading the result back, finalising beams), booked when the next prompt starts or
  generate() returns.

So per-token counts and decode throughput are the steady state: whole numbers for a clean
engine, the same at 4 tokens and at 64. Where no forward can be hooked (an engine that is
not torch, a compiled step), the engine's own marks are the phases and its `decode_steps`
(or the tokens it returned) the steps.

The hook also keeps the logits the main model returned at each step (the last position),
by reference, without copying: the parity check judges token flips on them.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.devices.ledger import Ledger, Phase

ENGINE_PHASES = ("prefill", "decode")


@dataclass
class PromptTrace:
    """One prompt's forwards, and the logits rows that chose its tokens."""

    prefill_logits: Any = None  # the last prefill forward's [B, V]
    decode_logits: list[Any] = field(default_factory=list)  # one [B, V] per decode forward

    def rows(self) -> list[Any]:
        return ([self.prefill_logits] if self.prefill_logits is not None else []) + self.decode_logits


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _sequence_length(args: tuple, kwargs: dict) -> int | None:
    """Positions in a forward's input: ids [B, S] or embeddings [B, S, C], by position or name."""
    candidates = [kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None]
    for value in candidates:
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[1])
    return None


def _last_logits(output: Any) -> Any:
    """The last position's logits [B, V] of a forward's output, or None."""
    logits = output
    if not isinstance(logits, torch.Tensor):
        logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (2, 3):
        return None
    inner = getattr(logits, "_inner", None)  # a simulated tensor: keep its CPU data, no copy
    if inner is not None:
        logits = inner
    with torch._C.DisableTorchFunction():
        return logits[:, -1] if logits.dim() == 3 else logits


class PhaseTracker:
    """Owns one case's phase: the ledger's phase, the phase clock and the step count."""

    def __init__(self, ledger: Ledger, synchronize: Callable[[], None] | None = None) -> None:
        self.ledger = ledger
        self.synchronize = synchronize  # real GPUs: a phase's time is its kernels' time
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._since = time.perf_counter()
        self.prompts: list[PromptTrace] = []
        self.forwards = 0  # hooked forwards of the main module
        self.decode_forwards = 0  # of those, in decode (0: the steps are the engine's claim)
        self.engine_marks: Counter[str] = Counter()
        self._prompt_forwards = 0  # forwards since the current prompt's prefill began
        self._decode_forwards = 0
        self._last_length: int | None = None
        self._handles: list[Any] = []

    @property
    def phase(self) -> Phase:
        return self.ledger.phase

    # --- the engine's side --------------------------------------------------------------------

    def on_phase(self, phase: str) -> None:
        """`Request.on_phase`: the engine's own marks."""
        if phase not in ENGINE_PHASES:
            raise ValueError(f"on_phase takes 'prefill' or 'decode', got {phase!r}")
        self.engine_marks[phase] += 1
        if phase == "prefill" and self.phase == "prefill":
            self._prompt_forwards = 0  # a further chunk of the same prompt's prefill
        elif phase == "prefill":
            self._start_prompt()
        elif self.phase != "decode":
            self._enter("decode")
            self._decode_forwards = 0

    # --- the harness's side -------------------------------------------------------------------

    def hook(self, module: torch.nn.Module) -> None:
        """Watch `module`'s forwards (the engine's main model) until `unhook()`."""
        self._handles.append(module.register_forward_pre_hook(self._before_forward, with_kwargs=True))
        self._handles.append(module.register_forward_hook(self._after_forward))

    def unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def begin_generate(self) -> None:
        self._enter("setup")

    def end_generate(self) -> None:
        self._close_prompt()
        self._enter("finish")

    # --- transitions --------------------------------------------------------------------------

    def _tick(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self._since
        self._since = now

    def _enter(self, phase: Phase) -> None:
        if phase == self.phase:
            return
        if self.synchronize is not None:
            self.synchronize()
        self._tick(self.phase)
        self.ledger.set_phase(phase)

    def _start_prompt(self) -> None:
        self._close_prompt()
        self._enter("prefill")
        self._prompt_forwards = self._decode_forwards = 0
        self._last_length = None
        self.prompts.append(PromptTrace())

    def _close_prompt(self) -> None:
        """The decode events since the last step began go to finish, with their time. Where
        no decode forward was seen (the engine's marks alone), decode stays as it is."""
        if self.phase != "decode" or not self._decode_forwards:
            return
        if self.synchronize is not None:
            self.synchronize()
        self.ledger.finish_steps()
        self._tick("finish")
        self.ledger.set_phase("finish")

    def _before_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if _compiling():
            return
        self.forwards += 1
        length = _sequence_length(args, kwargs)
        new_prompt = self.phase in ("setup", "finish", "load") or (
            self.phase == "decode" and self._decode_forwards >= 1 and self._last_length == 1
            and length is not None and length > 1)
        if new_prompt:
            self._start_prompt()
        elif self.phase == "prefill" and self._prompt_forwards >= 1:
            self._enter("decode")
            self._decode_forwards = 0
        if self.phase == "decode":
            if self._decode_forwards >= 1:
                self._tick("decode")
                self.ledger.end_step()
            else:  # the engine marked decode before this forward: what came between is prefill's tail
                self.ledger.move_step("prefill")
                self._tick("prefill")
            self._decode_forwards += 1
            self.decode_forwards += 1
        self._prompt_forwards += 1
        self._last_length = length

    def _after_forward(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if _compiling() or not self.prompts:
            return
        row = _last_logits(output)
        if row is None:
            return
        trace = self.prompts[-1]
        if self.phase == "prefill":
            trace.prefill_logits = row
        elif self.phase == "decode":
            trace.decode_logits.append(row)

    # --- after the generation -----------------------------------------------------------------

    def step_logits(self, prompts: int, vocab: int | None = None) -> list[torch.Tensor] | None:
        """Per prompt, the logits [steps, V] that chose each token (float32, CPU), or None
        where the forwards cannot be matched to the prompts one to one (batched prompts,
        beams, an engine whose prompts were not told apart) or their width is below the
        vocabulary (not logits). A padded head (wider than the vocabulary) is kept whole:
        parity compares the width the engine produced."""
        if len(self.prompts) != prompts or not all(t.rows() for t in self.prompts):
            return None
        out = []
        for trace in self.prompts:
            rows = trace.rows()
            if any(r.shape[0] != 1 for r in rows):  # several rows per forward: beams or a batch
                return None
            stacked = torch.cat([r.detach().float().cpu() for r in rows])  # [steps, V]
            if vocab is not None and stacked.shape[-1] < vocab:
                return None
            out.append(stacked)
        return out
