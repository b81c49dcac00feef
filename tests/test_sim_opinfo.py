"""A representative slice of torch's OpInfo database run on simulated GPUs (float32): every
sample equals the CPU's, stays on cuda:0, and binary ops mixed with a CPU operand fail or
pass as libtorch does. The whole database: `nox -s opinfo` (tests/opinfo_fidelity.py)."""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch

from tests import opinfo_fidelity as fidelity

# ~50 ops a model's forward pass is made of, by family; max samples per op keeps this fast.
OPS = [
    # elementwise
    "add", "sub", "mul", "div.no_rounding_mode", "abs", "exp", "log", "rsqrt", "tanh", "sigmoid", "pow",
    "clamp", "where", "maximum", "eq", "lt", "logical_not", "nn.functional.gelu", "nn.functional.silu",
    "nn.functional.relu",
    # reductions and scans
    "sum", "mean", "amax", "argmax", "max.reduction_with_dim", "var", "logsumexp", "cumsum", "any", "gradient",
    # indexing
    "index_select", "gather", "scatter", "index_add", "index_put", "masked_fill", "take_along_dim", "nonzero",
    "__getitem__",
    # matmul
    "matmul", "mm", "bmm", "addmm", "nn.functional.linear", "einsum",
    # shapes
    "cat", "stack", "reshape", "permute", "transpose", "split", "tril", "flip", "repeat",
    # nn
    "softmax", "log_softmax", "nn.functional.embedding", "nn.functional.layer_norm", "topk", "sort",
    "nn.functional.dropout", "multinomial",
    # factories and copies
    "arange", "zeros_like", "full_like", "to",
]
MAX_SAMPLES = 8  # gradient's tensor spacings (a tensor list passed by keyword) are its samples 6 and 7


@pytest.fixture(scope="module")
def op_db() -> dict:
    return {fidelity.op_name(op): op for op in fidelity.load_op_db()}


def failures(outcomes: list[fidelity.Outcome]) -> list[str]:
    return [f"#{o.sample} {o.check}: {o.result} {o.detail}" for o in outcomes if o.result in fidelity.CLASSES]


@pytest.mark.parametrize("name", OPS)
def test_op_on_simulated_gpu_equals_cpu(op_db, name):
    outcomes = fidelity.run_op(op_db[name], "float32", MAX_SAMPLES)
    assert [o for o in outcomes if o.result == "pass"], f"{name}: no sample ran: {outcomes[:3]}"
    assert not failures(outcomes), f"{name}: {failures(outcomes)}"


# --- the checker catches each kind of infidelity (a bug injected into the op or the simulator) ---


def _buggy(op, on_gpu):
    """`op` whose result, when its input is on a simulated GPU, goes through `on_gpu` (the
    injected bug); on the CPU it is the op itself."""

    def call(x, *args, **kwargs):
        out = op.op(x, *args, **kwargs)
        return on_gpu(out, x, args) if x.is_cuda else out

    return _with_op(op, call)


def _with_op(op, call):
    buggy = copy.copy(op)
    buggy.op = call
    return buggy


def _refusing(x, args):
    raise RuntimeError("a simulator bug")


BUGS = {
    "left_on_cpu": lambda out, x, args: out.cpu(),
    "wrong_device_index": lambda out, x, args: out.to("cuda:1"),
    "wrong_values": lambda out, x, args: out + 1,
    "wrong_dtype_shape": lambda out, x, args: out.double(),
    "spurious_error": lambda out, x, args: _refusing(x, args),
}


@pytest.mark.parametrize("expected", BUGS)
def test_each_injected_bug_is_classified(op_db, expected):
    bug = BUGS[expected]
    outcomes = fidelity.run_op(_buggy(op_db["add"], bug), "float32", 3, mixed=False)
    assert {o.result for o in outcomes} == {expected}, outcomes


def test_a_mixed_call_that_runs_instead_of_failing_is_a_missing_error(op_db):
    def call(x, other, **kwargs):  # a simulator that moves a CPU operand over instead of refusing it
        if x.is_cuda and isinstance(other, torch.Tensor) and not other.is_cuda:
            other = other.to(x.device)
        return torch.add(x, other, **kwargs)

    outcomes = fidelity.run_op(_with_op(op_db["add"], call), "float32", 3)
    mixed = {o.check: o.result for o in outcomes if o.check == "mixed:cpu other"}
    assert mixed == {"mixed:cpu other": "missing_error"}


def test_the_rng_state_fix_is_what_lets_dropout_pass(op_db, monkeypatch):
    """freeze_rng_state (OpInfo's random ops) reads torch.cuda.get_rng_state: without the
    simulator's answer that raises, and the checker reports it."""
    from harness.devices import cuda_patch

    def real_cuda_only(device="cuda"):
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(cuda_patch, "_get_rng_state", real_cuda_only)
    outcomes = fidelity.run_op(op_db["nn.functional.dropout"], "float32", 2)
    assert {o.result for o in outcomes} == {"spurious_error"}
    assert "Torch not compiled with CUDA enabled" in outcomes[0].detail


def test_an_op_a_gpu_has_no_kernel_for_must_fail_on_the_simulated_gpu_too(op_db):
    add = _with_op(op_db["add"], op_db["add"].op)
    add.supports_dtype = lambda dtype, device_type: device_type == "cpu"  # as OpInfo lists int64 mm
    outcomes = fidelity.run_op(add, "float32", 2, mixed=False)
    assert {o.result for o in outcomes} == {"missing_error"}


def test_a_hanging_or_dying_op_is_recorded_and_the_run_goes_on(op_db, monkeypatch):
    monkeypatch.setattr(fidelity, "SAMPLE_SECONDS", 1)
    hangs = fidelity.run_op(_buggy(op_db["add"], lambda out, x, args: time.sleep(5)), "float32", 1, mixed=False)
    assert [o.result for o in hangs] == ["timeout"]
    dies = fidelity.run_isolated(_buggy(op_db["add"], lambda out, x, args: os.abort()), "float32", 1)
    assert [(o.result, o.sample) for o in dies] == [("crash", -1)]
    assert "exit code" in dies[0].detail
