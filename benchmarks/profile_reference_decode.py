"""Where a reference decode step spends its time (a script, not an asv benchmark):

    python benchmarks/profile_reference_decode.py [--size bench] [--tokens 33] [--threads 1] [--compile]

Greedy, batch 1, CPU. Prints, per decode token: the aten ops dispatched (counted by a
TorchDispatchMode, so views and in-place ops count too), by name; then torch.profiler's
top ops by self CPU time over the decode steps, and the wall time per token. Per-token
figures are the difference between an N-token and a 1-token generate, divided by N - 1,
so prefill and setup drop out. `--compile` profiles the compiled decode step instead; it
skips the dispatch count (dynamo does not trace under a dispatch mode, so the count would
be of the eager path): the profiler table shows the graph's kernels and what runs outside.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PROMPT = [5, 17, 42, 99, 123, 7, 300, 211]


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


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

    from harness import tinymodel
    from harness.scenario import ModelSpec
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

    walls = []
    for n in (args.tokens, 1):
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            run(n)
            best = min(best, time.perf_counter() - start)
        walls.append(best)
    print(f"size {args.size}{' (compiled)' if args.compile else ''}: wall per decode token "
          f"{(walls[0] - walls[1]) / steps * 1e6:.0f} us (best of 5), load average {os.getloadavg()[0]:.2f}")

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(args.tokens)
    print(f"torch.profiler, one {args.tokens}-token generate (prefill included), top {args.top} by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
