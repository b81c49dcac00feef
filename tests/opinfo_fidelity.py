"""Op-level fidelity of the simulated GPUs, measured against torch's own OpInfo database.

    python -m tests.opinfo_fidelity                     # whole op_db, float32 + int64 + bool
    python -m tests.opinfo_fidelity --dtype float32 --op add --op cat -v

For every op in `torch.testing._internal.common_methods_invocations.op_db` that has a CPU
kernel for the dtype, and every sample of `op.sample_inputs("cpu", dtype)`, the op runs on
the CPU and then, inside `simulated_gpus(count=2)`, on the sample moved to `cuda:0`. The
simulated result must equal the CPU's (assert_close defaults, dtype, shape) and every tensor
it returns must report `cuda:0`: a plain CPU tensor is an output left on the host. Where
OpInfo lists no CUDA kernel for the dtype (torch's test_ops.py::test_dtypes checks those
lists on real GPUs: int64 matmul raises there), the simulation must fail too. Binary
ufuncs also run mixed (one operand on `cuda:0`, the other on the CPU): a CPU operand with
dimensions must raise libtorch's device mismatch, a 0-dim one rides along as a scalar
(unless the op's generated wrapper checks devices, which refuses any CPU tensor).

Why here and not in harness/devices/: this is a fidelity tool for the simulator's authors,
not part of what a run needs. It imports torch's test internals (slow to import, ~10 s, and
they want `expecttest`), it runs for minutes, and it judges the simulator from outside,
through the public `simulated_gpus()` only. `nox -s opinfo` runs it over the whole database
and writes results/opinfo/opinfo.md; tests/test_sim_opinfo.py runs a fixed subset in CI.

Each (op, dtype) runs in a forked child with a time limit per sample (SIGALRM) and per op
(the parent kills the child), so a hang or a crash (an abort inside libtorch) is recorded as
such and the run goes on.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import multiprocessing
import signal
import sys
import time
import traceback
import types
import unittest
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from harness.devices import SimTensor, classify_device_error, is_kernel_gap, simulated_gpus

# Failure classes, in the order the table lists them.
CLASSES = (
    "wrong_values", "wrong_dtype_shape", "left_on_cpu", "wrong_device_index", "missing_error",
    "spurious_error", "kernel_gap", "timeout", "crash",
)
DTYPES = {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}
SAMPLE_SECONDS = 20  # one sample's limit
OP_SECONDS = 240  # one (op, dtype)'s limit, all samples together
DEVICE = "cuda:0"
UNINITIALIZED = {"empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided", "empty_permuted"}


def load_op_db() -> list:
    """torch's OpInfo list. Its module imports `expecttest` for a TestCase base class only;
    where that package is absent a stand-in module lets the database import."""
    try:
        import expecttest  # noqa: F401
    except ImportError:
        sys.modules["expecttest"] = types.ModuleType("expecttest")
        sys.modules["expecttest"].TestCase = unittest.TestCase  # type: ignore[attr-defined]
    with warnings.catch_warnings():  # it warns on import (no hypothesis, beta sparse layouts)
        warnings.simplefilter("ignore")
        from torch.testing._internal.common_methods_invocations import op_db
    return op_db


@dataclass
class Outcome:
    op: str  # OpInfo name, with variant_test_name after a dot
    dtype: str
    sample: int  # index in sample_inputs; -1: the op as a whole (crash, timeout)
    check: str  # "same" (all on cuda:0) or "mixed:<what>"
    result: str  # "pass", "random" (values not compared), "cpu_error" (not run), or a failure class
    detail: str = ""


def op_name(op) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


class _SampleTimeout(BaseException):  # not an Exception: an op's own `except Exception` must not swallow it
    pass


def _alarm(signum, frame):
    raise _SampleTimeout()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _moved(sample, device: str) -> tuple[Any, tuple, dict, bool]:
    """The sample's input, args and kwargs with every tensor copied to `device` (to "cpu": a
    copy too, the CPU's reference gets what a GPU would: fresh storage, only the view's
    elements), a `device=` kwarg naming the CPU (factory-like ops) naming `device` instead,
    and whether anything was placed on `device` at all (`torch.arange(2)` stays on the host)."""
    placed = False

    def one(t: Any) -> Any:
        nonlocal placed
        if not isinstance(t, torch.Tensor):
            return t
        placed = True
        return t.to(device, copy=True)

    def target(value: Any) -> Any:  # a device argument naming the CPU: `x.to("cpu")`, `device="cpu"`
        nonlocal placed
        if (isinstance(value, torch.device) and value.type == "cpu") or (isinstance(value, str) and value == "cpu"):
            placed = True
            return device
        return value

    move = lambda v: tree_map(one, v)  # noqa: E731
    kwargs = {k: move(v) for k, v in sample.kwargs.items()}
    if "device" in kwargs:
        kwargs["device"] = target(kwargs["device"])
    return move(sample.input), tuple(target(move(a)) for a in sample.args), kwargs, placed


def _on_host(value: Any) -> Any:
    """Every simulated tensor in `value` copied to the CPU (as user code would: `.cpu()`)."""
    return tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, value)


def _compare(expected: Any, actual_host: Any) -> tuple[str, str]:
    """(result, detail) for a simulated result brought back to the host against the CPU's."""
    exp_leaves, exp_spec = tree_flatten(expected)
    act_leaves, act_spec = tree_flatten(actual_host)
    if exp_spec != act_spec:
        return "wrong_dtype_shape", f"structure {act_spec} != {exp_spec}"[:300]
    for e, a in zip(exp_leaves, act_leaves, strict=True):
        if isinstance(e, torch.Tensor):
            if not isinstance(a, torch.Tensor):
                return "wrong_dtype_shape", f"{type(a).__name__} where the CPU returned a tensor"
            if e.dtype != a.dtype or e.shape != a.shape:
                return "wrong_dtype_shape", f"{a.dtype} {tuple(a.shape)} != CPU's {e.dtype} {tuple(e.shape)}"
            try:
                torch.testing.assert_close(a, e, equal_nan=True, check_device=False, check_layout=False)
            except AssertionError as exc:
                return "wrong_values", " ".join(str(exc).split())[:200]
        elif e != a and not (isinstance(e, float) and e != e and a != a):
            return "wrong_values", f"{a!r} != CPU's {e!r}"[:200]
    return "pass", ""


def _placement(value: Any, index: int) -> tuple[str, str]:
    """Every tensor in a simulated result must be a simulated tensor on cuda:`index`
    (`index` -1: nothing was placed on a device, every tensor must stay a host one)."""
    for leaf in tree_flatten(value)[0]:
        if not isinstance(leaf, torch.Tensor):
            continue
        if index == -1:
            if type(leaf) is SimTensor:
                return "wrong_device_index", f"result on {leaf.device}, nothing was placed on a device"
            continue
        if type(leaf) is not SimTensor:
            return "left_on_cpu", f"a {type(leaf).__name__} on {leaf.device} in the result"
        if leaf.device != torch.device("cuda", index):
            return "wrong_device_index", f"result on {leaf.device}, inputs on cuda:{index}"
    return "pass", ""


def _seeded(fn):
    torch.manual_seed(1234)
    return fn()


def _call(op, inputs: tuple) -> Any:
    x, args, kwargs = inputs[:3]
    return _seeded(lambda: op(x, *args, **kwargs))


def _random(op, sample) -> bool:
    """Whether the op's CPU result depends on the RNG (dropout, bernoulli, ...)."""
    first = _call(op, _moved(sample, "cpu"))
    torch.manual_seed(99)
    x, args, kwargs, _ = _moved(sample, "cpu")
    return _compare(_on_host(first), op(x, *args, **kwargs))[0] != "pass"


def _simulated(op, sample, which: str | None = None) -> tuple[Any, str, str, bool]:
    """(result on the host, placement result, detail, whether anything was on the device) of
    the op on the sample moved to cuda:0, but for the operand `which` ("input" or "other"),
    left on the CPU."""
    with simulated_gpus(count=2):
        x, args, kwargs, placed = _moved(sample, DEVICE)
        if which == "input":
            x = sample.input
        elif which == "other":
            args = (sample.args[0], *args[1:])
        out = _call(op, (x, args, kwargs))
        placement = _placement(out, 0 if placed else -1)
        host = _on_host(out)
    return host, *placement, placed


def _expected(op, sample) -> Any:
    """The CPU's result on copies of the sample (ops that write their input leave it be)."""
    return _on_host(_call(op, _moved(sample, "cpu")))


def run_sample(op, sample, dtype: str, number: int) -> Outcome:
    """One sample, all on cuda:0, against the CPU."""
    name = op_name(op)
    try:
        expected = _expected(op, sample)
    except Exception as exc:  # the CPU refuses the sample itself: nothing to compare against
        return Outcome(name, dtype, number, "same", "cpu_error", _first_line(exc))
    # OpInfo's CUDA dtypes are checked by torch's own test_ops.py::test_dtypes: a dtype not
    # listed raises on a GPU (int64 matmul: "addmm_cuda" not implemented for 'Long').
    gpu_kernel = op.supports_dtype(DTYPES[dtype], "cuda")
    try:
        host, placed, where, moved = _simulated(op, sample)
    except _SampleTimeout:
        return Outcome(name, dtype, number, "same", "timeout", f"over {SAMPLE_SECONDS} s")
    except Exception as exc:
        if not gpu_kernel and is_kernel_gap(exc):
            return Outcome(name, dtype, number, "same", "pass", "refused as on a GPU: " + _first_line(exc))
        kind = "kernel_gap" if is_kernel_gap(exc) else "spurious_error"
        return Outcome(name, dtype, number, "same", kind, _first_line(exc))
    if not gpu_kernel and moved:
        return Outcome(name, dtype, number, "same", "missing_error",
                       f"ran, where a GPU has no {dtype} kernel for it (OpInfo's CUDA dtypes)")
    result, detail = _compare(expected, host)
    if result == "wrong_values" and op.name in UNINITIALIZED:
        result, detail = "random", "uninitialized memory"
    elif result == "wrong_values" and _random(op, sample):
        result, detail = "random", "the CPU's own result changes with the seed"
    if result in ("pass", "random") and placed != "pass":
        result, detail = placed, where
    return Outcome(name, dtype, number, "same", result, detail)


def _mixed_cases(sample) -> list[tuple[str, bool]]:
    """(which operand stays on the CPU, whether it is a 0-dim scalar) for a binary sample
    with two tensor operands."""
    if not sample.args or not isinstance(sample.args[0], torch.Tensor) or not isinstance(sample.input, torch.Tensor):
        return []
    return [("other", sample.args[0].dim() == 0), ("input", sample.input.dim() == 0)]


# libtorch's generated wrapper check (an op without `device_check: NoCheck` in
# native_functions.yaml) refuses any CPU tensor, 0-dim or not; only TensorIterator lets a
# 0-dim CPU operand ride along as a scalar.
WRAPPER_CHECK = "(when checking argument in method wrapper_CUDA"


def run_mixed(op, sample, dtype: str, number: int, which: str, scalar: bool) -> Outcome:
    """The sample with one operand (`which`) left on the CPU, the rest on cuda:0. A CPU
    operand with dimensions must fail with libtorch's device mismatch; a 0-dim one must run
    and equal the CPU's result, unless libtorch's wrapper check refuses it (see WRAPPER_CHECK)."""
    name, check = op_name(op), f"mixed:cpu {which}{' (0-dim)' if scalar else ''}"
    try:
        expected = _expected(op, sample)
    except Exception as exc:
        return Outcome(name, dtype, number, check, "cpu_error", _first_line(exc))
    try:
        host, placed, where, _ = _simulated(op, sample, which)
    except _SampleTimeout:
        return Outcome(name, dtype, number, check, "timeout", f"over {SAMPLE_SECONDS} s")
    except Exception as exc:
        if classify_device_error(exc) is not None and (not scalar or WRAPPER_CHECK in str(exc)):
            return Outcome(name, dtype, number, check, "pass", "refused by the wrapper check" if scalar else "")
        kind = "kernel_gap" if is_kernel_gap(exc) else "spurious_error"
        return Outcome(name, dtype, number, check, kind, _first_line(exc))
    if not scalar:
        return Outcome(name, dtype, number, check, "missing_error", "ran where PyTorch raises a device mismatch")
    result, detail = _compare(expected, host)
    if result == "pass" and placed != "pass":
        result, detail = placed, where
    return Outcome(name, dtype, number, check, result, detail)


def run_op(op, dtype: str, max_samples: int | None = None, mixed: bool = True) -> list[Outcome]:
    """All checks of one op for one dtype, in this process (SIGALRM bounds each sample)."""
    from torch.testing._internal.opinfo.core import BinaryUfuncInfo

    outcomes: list[Outcome] = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    caught = warnings.catch_warnings()  # samples call deprecated forms (cross without dim, ...)
    caught.__enter__()
    warnings.simplefilter("ignore")
    try:
        torch.manual_seed(0)
        samples = op.sample_inputs("cpu", DTYPES[dtype])
        for number, sample in enumerate(samples):
            if max_samples is not None and number >= max_samples:
                break
            signal.alarm(SAMPLE_SECONDS)
            try:
                outcomes.append(run_sample(op, sample, dtype, number))
                if mixed and isinstance(op, BinaryUfuncInfo):
                    for which, scalar in _mixed_cases(sample):
                        outcomes.append(run_mixed(op, sample, dtype, number, which, scalar))
            except _SampleTimeout:
                outcomes.append(Outcome(op_name(op), dtype, number, "same", "timeout", f"over {SAMPLE_SECONDS} s"))
            except Exception as exc:  # the harness itself (sample generation, comparing) failed
                outcomes.append(Outcome(op_name(op), dtype, number, "same", "crash", _first_line(exc)))
            finally:
                signal.alarm(0)
    except Exception as exc:  # sample_inputs itself failed
        outcomes.append(Outcome(op_name(op), dtype, -1, "same", "cpu_error", "sample_inputs: " + _first_line(exc)))
    finally:
        signal.signal(signal.SIGALRM, previous)
        caught.__exit__(None, None, None)
    return outcomes


def _child(conn, op, dtype: str, max_samples: int | None) -> None:
    # A child that dies (an op aborting in C++) is an outcome the parent records: the stack
    # pytest's faulthandler would print onto the shared terminal is not news.
    faulthandler.disable()
    try:
        torch.set_num_threads(1)
        conn.send([asdict(o) for o in run_op(op, dtype, max_samples)])
    except BaseException:
        conn.send([asdict(Outcome(op_name(op), dtype, -1, "same", "crash", traceback.format_exc(limit=1)[-300:]))])
    finally:
        conn.close()


def run_isolated(op, dtype: str, max_samples: int | None) -> list[Outcome]:
    """run_op in a forked child: a hang past OP_SECONDS or a dead child is an outcome too."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, op, dtype, max_samples), daemon=True)
    child.start()
    send.close()
    try:
        if receive.poll(OP_SECONDS):
            return [Outcome(**o) for o in receive.recv()]
        child.kill()
        return [Outcome(op_name(op), dtype, -1, "same", "timeout", f"over {OP_SECONDS} s for the op")]
    except EOFError:  # the child died before it answered (abort, segfault)
        child.join(5)
        return [Outcome(op_name(op), dtype, -1, "same", "crash", f"the process died (exit code {child.exitcode})")]
    finally:
        child.join(5)
        receive.close()


def supported(op, dtype: str) -> bool:
    return op.supports_dtype(DTYPES[dtype], "cpu")


# --- the table --------------------------------------------------------------------------------


def table(outcomes: list[Outcome], ops_total: int, dtypes: list[str], seconds: float, note: str = "") -> str:
    ran = [o for o in outcomes if o.result != "cpu_error"]
    failed = [o for o in ran if o.result in CLASSES]
    by_class = collections.Counter(o.result for o in failed)
    covered = {(o.op, o.dtype) for o in ran if o.sample >= 0}
    ops = {o.op for o in ran if o.sample >= 0}
    lines = [
        "# Simulated GPUs against torch's OpInfo database",
        "",
        f"torch {torch.__version__}; dtypes {', '.join(dtypes)}; {ops_total} OpInfos in op_db; "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; {seconds:.0f} s. Written by `python -m tests.opinfo_fidelity` "
        "(`nox -s opinfo`).",
        "",
        f"- ops covered: **{len(ops)}** ({len(covered)} op/dtype pairs)",
        f"- samples run: **{len(ran)}** (mixed-device checks included: "
        f"{sum(o.check != 'same' for o in ran)}); pass **{sum(o.result == 'pass' for o in ran)}**, "
        f"random or uninitialized (placement checked, values not compared) {sum(o.result == 'random' for o in ran)}",
        f"- not run: {sum(o.result == 'cpu_error' for o in outcomes)} samples the CPU itself refuses",
        f"- failures: **{len(failed)}**" + "".join(f", {k} {by_class[k]}" for k in CLASSES if by_class[k]),
    ]
    if note:
        lines += ["", note]
    lines += ["", "| class | count |", "|---|---|"] + [f"| {k} | {by_class[k]} |" for k in CLASSES]
    grouped: dict[tuple[str, str, str, str], list[Outcome]] = collections.defaultdict(list)
    for o in failed:
        grouped[(o.op, o.result, o.check, o.detail.split(" != ")[0][:120])].append(o)
    lines += ["", "## Failing ops", "", "| op | class | check | dtypes | samples | reason |", "|---|---|---|---|---|---|"]
    for (name, result, check, _), group in sorted(grouped.items()):
        dts = ",".join(sorted({o.dtype for o in group}))
        reason = group[0].detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {result} | {check} | {dts} | {len(group)} | {reason} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="default: all three")
    parser.add_argument("--op", action="append", help="OpInfo name (repeatable); default: every op")
    parser.add_argument("--max-samples", type=int, default=None, help="samples per op and dtype")
    parser.add_argument("--out", type=Path, default=Path("results/opinfo"))
    parser.add_argument("-v", "--verbose", action="store_true", help="print each failure as it comes")
    args = parser.parse_args(argv)
    dtypes = args.dtype or list(DTYPES)
    op_db = load_op_db()
    ops = [op for op in op_db if not args.op or op.name in args.op or op_name(op) in args.op]
    if not ops:
        parser.error(f"no OpInfo named {args.op}")
    started = time.monotonic()
    outcomes: list[Outcome] = []
    jobs = [(op, dtype) for dtype in dtypes for op in ops if supported(op, dtype)]
    for n, (op, dtype) in enumerate(jobs, 1):
        got = run_isolated(op, dtype, args.max_samples)
        outcomes += got
        bad = [o for o in got if o.result in CLASSES]
        if args.verbose:
            for o in bad:
                print(f"  {o.op} {o.dtype} #{o.sample} {o.check}: {o.result} {o.detail[:150]}", flush=True)
        if n % 50 == 0 or n == len(jobs):
            print(f"[{n}/{len(jobs)}] {time.monotonic() - started:.0f} s, {len(outcomes)} outcomes", flush=True)
    seconds = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "opinfo.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=0))
    text = table(outcomes, len(op_db), dtypes, seconds)
    (args.out / "opinfo.md").write_text(text)
    print(text.split("\n| class")[0])
    print(f"table: {args.out / 'opinfo.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
