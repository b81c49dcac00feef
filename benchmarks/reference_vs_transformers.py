"""Decode throughput on the CPU, batch 1, greedy: the reference implementation vs
transformers' `generate`, on the same generated weights. A script, not an asv benchmark:

    python benchmarks/reference_vs_transformers.py [--sizes tiny bench] [--tokens 64] [--threads 1]

Decode tokens/s = (new tokens - 1) / (time of the whole generate - time of a 1-token
generate), so prefill and setup are left out the same way for both. Each figure is the best
of --repeats runs (the machine is shared: best-of is the least noisy). Both engines are
checked to produce the same tokens first, so the comparison is of equal work. Target: the
reference at least 2x transformers at hidden 512 ("bench").

One thread by default: at batch 1 the matmuls are too small to gain from more, and on a
shared machine OpenMP threads that spin-wait for a busy core run 10-40x slower.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

PROMPT = [5, 17, 42, 99, 123, 7, 300, 211]


def _best_seconds(run, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def decode_tokens_per_s(generate_n, tokens: int, repeats: int) -> float:
    generate_n(tokens)  # warm-up
    full = _best_seconds(lambda: generate_n(tokens), repeats)
    first = _best_seconds(lambda: generate_n(1), repeats)
    return (tokens - 1) / max(full - first, 1e-9)


def bench_size(size: str, tokens: int, repeats: int) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM

    from harness import tinymodel
    from harness.scenario import ModelSpec
    from reference_impl import GenerateConfig, generate, load_model

    directory = tinymodel.model_dir(ModelSpec(size=size))  # type: ignore[arg-type]
    reference = load_model(directory, ["cpu"])
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = torch.tensor([PROMPT])

    def run_reference(n: int) -> list[int]:
        return generate(reference, PROMPT, GenerateConfig(max_new_tokens=n))

    def run_transformers(n: int) -> list[int]:
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=tinymodel.EOS_ID, eos_token_id=None)
        return out[0, len(PROMPT):].tolist()

    if run_reference(tokens) != run_transformers(tokens):
        raise SystemExit(f"{size}: the two engines chose different tokens; the comparison would be unfair")
    return decode_tokens_per_s(run_reference, tokens, repeats), decode_tokens_per_s(run_transformers, tokens, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "bench"], choices=["tiny", "parity", "bench"])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per run (default: 64)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure, best kept (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"decode tokens/s, CPU, batch 1, greedy, {args.tokens} new tokens, {torch.get_num_threads()} thread(s), best of {args.repeats}")
    print(f"{'size':<8}{'hidden':>8}{'reference':>12}{'transformers':>14}{'ratio':>8}")
    from harness.tinymodel import PRESETS

    for size in args.sizes:
        ours, theirs = bench_size(size, args.tokens, args.repeats)
        print(f"{size:<8}{PRESETS[size].hidden_size:>8}{ours:>12.1f}{theirs:>14.1f}{ours / theirs:>7.2f}x")


if __name__ == "__main__":
    main()
