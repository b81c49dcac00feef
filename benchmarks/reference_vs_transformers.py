"""Decode throughput on the CPU, batch 1, greedy: the reference implementation, eager and
compiled (`GenerateConfig(compile=True)`), vs transformers' `generate`, on the same
generated weights. A script, not an asv benchmark:

    python benchmarks/reference_vs_transformers.py [--sizes tiny bench] [--tokens 64] [--repeats 7] [--threads 1] [--no-compile]

Decode tokens/s = (new tokens - 1) / (time of the whole generate - time of a 1-token
generate), so prefill and setup are left out the same way for all three. The engines take
turns, one run each per round, and each figure is the best of --repeats rounds: the machine
is shared, best-of is the least noisy, and taking turns spreads a busy spell over all
three. The load average (os.getloadavg: 1, 5, 15 minutes) is printed before each size.

Before timing, every engine's greedy ids are checked equal to transformers' (the compiled
reference's included); any difference exits non-zero, as the comparison would not be of
equal work. `compile s` is the one-off cost of the compiled reference: its first generate
(which compiles the decode step) minus a warm one, with inductor's on-disk caches off, so
it is what a first run on a fresh machine pays (the first size also pays for loading the
compiler; a warm cache makes later processes much faster to start).

`matmuls only` runs just the reference's weight matmuls, the same shapes a decode step
runs, in the same turns: its ratio is the ceiling for any float32 reference built on these
kernels (at hidden 512 they are most of a step, and they are bound by memory bandwidth).
`GB/s` is the weights' bytes over that column's time per token: the rate they stream at,
to set beside the machine's read bandwidth (one core of this machine kind read about
28 GB/s, two about 53).

`llama.cpp` (printed where llama-cpp-python is installed: `nox -s llamacpp` builds it) is
llama.cpp on an f32 GGUF file of the same weights, the same thread count, its greedy ids
checked equal to transformers' too: an outside engine written for speed, to show what
float32 reaches on this machine at each size.

Targets: eager reference >= 2x transformers at hidden 64 and 512 ("tiny", "bench");
compiled >= 4x at hidden 512.

One thread by default: at batch 1 the matmuls are too small to gain from more, and on a
shared machine OpenMP threads that spin-wait for a busy core run 10-40x slower.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

import torch

PROMPT = [5, 17, 42, 99, 123, 7, 300, 211]
Generate = Callable[[int], list[int]]


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def decode_tokens_per_s(engines: dict[str, Generate], tokens: int, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` decode rate per engine, the engines taking turns each round."""
    full = dict.fromkeys(engines, float("inf"))
    first = dict.fromkeys(engines, float("inf"))
    for _ in range(repeats):
        for name, generate_n in engines.items():
            full[name] = min(full[name], _seconds(lambda g=generate_n: g(tokens)))
            first[name] = min(first[name], _seconds(lambda g=generate_n: g(1)))
    return {name: (tokens - 1) / max(full[name] - first[name], 1e-9) for name in engines}


def bench_size(size: str, tokens: int, repeats: int, compile_too: bool,
               threads: int = 1) -> tuple[dict[str, float], float | None, int]:
    """Decode tokens/s per engine, the compiled reference's one-off compile seconds, and
    the bytes of weights its matmuls read per token."""
    from transformers import AutoModelForCausalLM

    from harness.format.scenario import ModelSpec
    from harness.models import tinymodel
    from reference_impl import GenerateConfig, generate, load_model

    directory = tinymodel.model_dir(ModelSpec(size=size))  # type: ignore[arg-type]
    reference = load_model(directory, ["cpu"])
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = torch.tensor([PROMPT])

    def run_transformers(n: int) -> list[int]:
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=tinymodel.EOS_ID, eos_token_id=None)
        return out[0, len(PROMPT):].tolist()

    engines: dict[str, Generate] = {
        "reference": lambda n: generate(reference, PROMPT, GenerateConfig(max_new_tokens=n)),
        "transformers": run_transformers,
    }
    if compile_too:
        engines["compiled"] = lambda n: generate(reference, PROMPT, GenerateConfig(max_new_tokens=n, compile=True))
    if llama_cpp_available():
        engines["llama.cpp"] = llama_cpp_greedy(directory, threads)

    expected = run_transformers(tokens)
    compile_seconds = None
    for name, generate_n in engines.items():
        start = time.perf_counter()
        got = generate_n(tokens)  # the compiled reference compiles here
        if name == "compiled":
            compile_seconds = time.perf_counter() - start - _seconds(lambda g=generate_n: g(tokens))
        if got != expected:
            raise SystemExit(f"{size}: {name} chose other tokens than transformers ({got[:8]}... vs {expected[:8]}...); "
                             "the comparison would be unfair")
    engines["matmuls"] = weight_matmuls_only(reference)
    return decode_tokens_per_s(engines, tokens, repeats), compile_seconds, weight_bytes(reference)


def table_line(columns: list[str], cells: list[str]) -> str:
    """One line of the results table: each cell right-aligned under its column, at least two
    spaces apart (cells never hold spaces, an empty one is "-"), so a wide figure cannot run
    into its neighbour and readers split a row on whitespace, the header on two spaces."""
    return "  ".join(f"{cell:>{max(len(column), 8)}}" for column, cell in zip(columns, cells, strict=True))


def llama_cpp_available() -> bool:
    from harness.engines.llamacpp_engine import LlamaCppEngine

    return LlamaCppEngine.unavailable_reason() is None


def llama_cpp_greedy(directory, threads: int) -> Generate:
    """Greedy decode with llama.cpp on the f32 GGUF file of the model in `directory`:
    one `eval` per token and the argmax of its logits (`scores` holds them only with
    logits_all), as `generate` with top_k=1 does without the sampler chain."""
    import numpy as np
    from llama_cpp import Llama

    from harness.models.gguf import gguf_file

    # n_ctx=0: the model's own context length
    llm = Llama(model_path=str(gguf_file(directory)), n_ctx=0, n_threads=threads, n_threads_batch=threads,
                logits_all=True, verbose=False)

    def run(n: int) -> list[int]:
        llm.reset()
        llm.eval(PROMPT)
        out: list[int] = []
        for _ in range(n):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if len(out) < n:
                llm.eval(out[-1:])
        return out

    return run


def linear_weights(reference) -> list[torch.Tensor]:
    """The weights of the reference's projections: what a decode step's matmuls read."""
    from reference_impl.quantize import Linear

    return [m.weight for m in reference.modules() if isinstance(m, Linear)]


def weight_bytes(reference) -> int:
    """Bytes of the weights a decode step's matmuls read once per token."""
    return sum(w.numel() * w.element_size() for w in linear_weights(reference))


def weight_matmuls_only(reference) -> Generate:
    """n rounds of only the reference's weight matmuls (each projection's `x @ weight`, as a
    decode step runs them, on fixed inputs): the time a float32 decode step cannot go below
    with these kernels, whatever else is removed or compiled."""
    weights = linear_weights(reference)
    inputs = [torch.randn(1, 1, w.shape[0]) for w in weights]

    def run(n: int) -> list[int]:
        with torch.inference_mode():
            for _ in range(n):
                for x, w in zip(inputs, weights, strict=True):
                    x @ w
        return []

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "bench"], choices=["tiny", "parity", "bench"])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per run (default: 64)")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per figure, best kept (default: 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled reference")
    args = parser.parse_args()
    for flag, value, least in (("--tokens", args.tokens, 2), ("--repeats", args.repeats, 1), ("--threads", args.threads, 1)):
        if value < least:  # a decode rate needs a second token: the first one is prefill's
            parser.error(f"{flag} must be at least {least}, got {value}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if not args.no_compile:
        from torch._inductor import config as inductor_config

        inductor_config.force_disable_caches = True  # measure the cold compile
    from harness.models.tinymodel import PRESETS

    print(f"decode tokens/s, CPU, batch 1, greedy, {args.tokens} new tokens, {torch.get_num_threads()} thread(s), "
          f"best of {args.repeats}, torch {torch.__version__}; greedy ids equal transformers' in every column")
    columns = ["size", "hidden", "load avg", "transformers", "eager", "eager x", "compiled", "compiled x",
               "compile s", "matmuls only", "matmuls x", "GB/s"]
    if llama_cpp_available():
        columns += ["llama.cpp", "llama.cpp x"]
    print(table_line(columns, columns))
    for size in args.sizes:
        load = "/".join(f"{v:.2f}" for v in os.getloadavg())
        rates, compile_seconds, streamed_bytes = bench_size(size, args.tokens, args.repeats, not args.no_compile,
                                                            args.threads)
        theirs = rates["transformers"]
        cells = {"size": size, "hidden": str(PRESETS[size].hidden_size), "load avg": load,
                 "transformers": f"{theirs:.1f}", "GB/s": f"{streamed_bytes * rates['matmuls'] / 1e9:.1f}"}
        for column, rate in (("eager", "reference"), ("compiled", "compiled"), ("matmuls only", "matmuls"),
                             ("llama.cpp", "llama.cpp")):
            if rate in rates:
                cells[column] = f"{rates[rate]:.1f}"
                cells[column.split()[0] + " x"] = f"{rates[rate] / theirs:.2f}x"
        if "compiled" in rates:
            cells["compile s"] = f"{compile_seconds:.1f}"
        print(table_line(columns, [cells.get(column, "-") for column in columns]), flush=True)
    print(f"load avg after: {'/'.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
