"""Where a reference decode step spends its time (a script, not an asv benchmark):

    python benchmarks/profile_reference_decode.py [--size bench] [--tokens 33] [--threads 1] [--compile]

Greedy, batch 1, CPU. Prints, per decode token: the aten ops dispatched (counted by a
TorchDispatchMode, so views and in-place ops count too), by name; then torch.profiler's
top ops by self CPU time over the decode steps, and the wall time per token. Per-token
figures are the difference between an N-token and a 1-token generate, divided by N - 1,
so prefill and setup drop out.

Eagerly, it also splits a token's time: the weight matmuls alone (the same weights streamed,
as in reference_vs_transformers.py's `matmuls only`), the other ops as the difference, and
those other ops alone with the matmuls stubbed out. On the bench model (hidden 512) the
other ops cost about twice as much inside the step as alone: each matmul streams up to 4 MB
of weights through a 2 MB L2, so the interpreter and dispatcher behind the next op run cold.
Fewer ops help a little; what is left is bound by the weights' bandwidth and these misses.

`--compile` profiles the compiled decode step instead; it
skips the dispatch count (dynamo does not trace under a dispatch mode, so the count would
be of the eager path): the profiler table shows the graph's kernels and what runs outside.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

try:  # imported as a module of the benchmarks package
    from benchmarks.reference_vs_transformers import (
        decode_tokens_per_s,
        weight_bytes,
        weight_matmuls_only,
    )
except ModuleNotFoundError:  # run as a script: its own directory is sys.path[0]
    from reference_vs_transformers import (  # type: ignore[no-redef]
        decode_tokens_per_s,
        weight_bytes,
        weight_matmuls_only,
    )

PROMPT = [5, 17, 42, 99, 123, 7, 300, 211]


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def _per_token(run: Callable[[int], object], tokens: int) -> float:
    """Seconds per decode token: best-of-5 of an N-token run minus a 1-token run, over N - 1."""
    return 1 / decode_tokens_per_s({"run": run}, tokens, repeats=5)["run"]  # type: ignore[dict-item]


def time_split(model, run: Callable[[int], object], tokens: int, whole: float) -> str:
    """Where an eager decode token's time goes: the weight matmuls alone (streaming the same
    weights), and everything else alone with the matmuls stubbed out (so its code and data
    stay in the caches). When the whole step costs more than the two apart, the other ops
    pay for cache misses: each matmul streams megabytes of weights through L2 before them."""
    from reference_impl.quantize import Linear

    matmuls = _per_token(weight_matmuls_only(model), tokens)
    real_forward = Linear.forward
    Linear.forward = lambda self, x: x.new_zeros(*x.shape[:-1], self.weight.shape[1])  # type: ignore[method-assign]
    try:
        rest_hot = _per_token(run, tokens)
    finally:
        Linear.forward = real_forward  # type: ignore[method-assign]
    us = 1e6
    return (f"where a decode token's time goes: whole step {whole * us:.0f} us = weight matmuls alone "
            f"{matmuls * us:.0f} us ({weight_bytes(model) / matmuls / 1e9:.1f} GB/s) + the other ops "
            f"{(whole - matmuls) * us:.0f} us; the other ops alone, caches hot, {rest_hot * us:.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bench", choices=["tiny", "parity", "bench"])
    parser.add_argument("--tokens", type=int, default=33)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="profile the compiled decode step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    from harness.format.scenario import ModelSpec
    from harness.models import tinymodel
    from reference_impl import GenerateConfig, generate, load_model

    model = load_model(tinymodel.model_dir(ModelSpec(size=args.size)), ["cpu"])  # type: ignore[arg-type]
    config = {"compile": True} if args.compile else {}

    def run(n: int) -> None:
        generate(model, PROMPT, GenerateConfig(max_new_tokens=n, **config))

    run(args.tokens)  # warm-up (and compile)
    steps = args.tokens - 1

    if not args.compile:
        counts = []
        for n in (args.tokens, 1):
            with OpCounter() as counter:
                run(n)
            counts.append(counter.ops)
        per_token = {name: (counts[0][name] - counts[1][name]) / steps for name in counts[0]}
        per_token = {name: value for name, value in per_token.items() if value}
        print(f"size {args.size}: {sum(per_token.values()):.1f} aten ops dispatched per decode token")
        for name, value in sorted(per_token.items(), key=lambda item: (-item[1], item[0])):
            print(f"  {value:6.2f}  {name}")

    whole = _per_token(run, args.tokens)
    print(f"size {args.size}{' (compiled)' if args.compile else ''}: wall per decode token "
          f"{whole * 1e6:.0f} us (best of 5), load average {os.getloadavg()[0]:.2f}")
    if not args.compile:
        print(time_split(model, run, args.tokens, whole))

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(args.tokens)
    print(f"torch.profiler, one {args.tokens}-token generate (prefill included), top {args.top} by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
