"""Users' own tests with samedevice's fixtures and marker (harness.frontends.testing): the example a
user would copy (examples/user-tests/test_tiny_lm.py) is green on cpu and simulated GPUs,
and a device bug or a stray copy put into it is caught in the words of a scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "user-tests" / "test_tiny_lm.py"
FIXED_BIAS = "    bias = torch.zeros(VOCAB, device=device)  # built where the logits are (mistral.rs #398's fix)"
FIXED_STEP = "        ids = token"


def _run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")


def test_the_users_example_is_green_on_cpu_and_simulated_gpus(pytester) -> None:
    result = _run(pytester, EXAMPLE.read_text())
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*PASSED*[[]cpu[]]*", "*PASSED*[[]sim:cuda:0[]]*"])


def test_a_bias_left_on_the_cpu_fails_with_pytorchs_words_on_the_simulated_gpu_only(pytester) -> None:
    source = EXAMPLE.read_text()
    assert FIXED_BIAS in source
    result = _run(pytester, source.replace(FIXED_BIAS, "    bias = torch.zeros(VOCAB)  # the bug: on the CPU"))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*RuntimeError: Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
        "(when checking argument in method wrapper_CUDA_add_Tensor)",
        "FAILED*[[]sim:cuda:0[]]*"])


def test_a_stray_round_trip_fails_the_budget_like_a_scenario(pytester) -> None:
    source = EXAMPLE.read_text()
    assert FIXED_STEP in source
    result = _run(pytester, source.replace(FIXED_STEP, "        ids = token.cpu().to(device)  # the bug: a round trip"))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*transfers: h2d: 1 per decode token (budget 0; 8 bytes per decode token; over 6 decode tokens) from to at test_user.py:*",
        "*transfers: d2h: 2 per decode token (budget 1; 16 bytes per decode token; over 6 decode tokens) from cpu at test_user.py:*",
    ])


def test_the_marker_needs_the_target_fixture(pytester) -> None:
    result = _run(pytester, "import pytest\n\n@pytest.mark.samedevice(devices=['cuda:0'])\ndef test_x():\n    pass\n")
    assert result.ret != 0
    assert "parametrizes the `samedevice_target` fixture" in result.stdout.str() + result.stderr.str()


MARKER_MISTAKES = '''
import pytest

@pytest.mark.samedevice(devices=["gpu0"])
def test_bad_device(samedevice_target): pass

@pytest.mark.samedevice(devices=["sim:cuda:0"])
def test_sim_prefix(samedevice_target): pass

@pytest.mark.samedevice(devices="cuda:0")
def test_string(samedevice_target): pass

@pytest.mark.samedevice(device=["cuda:0"])
def test_typo(samedevice_target): pass

@pytest.mark.samedevice(devices=["auto"], gpus=0)
def test_no_gpus(samedevice_target): pass

@pytest.mark.samedevice(gpus=1)
def test_sim_gpus_auto(sim_gpus): pass

@pytest.mark.samedevice(devices=["cpu"])
def test_fine(samedevice_target): pass
'''


def test_a_mistaken_marker_fails_only_its_test_with_one_line(pytester) -> None:
    result = _run(pytester, MARKER_MISTAKES)
    result.assert_outcomes(passed=2, errors=5)
    result.stdout.fnmatch_lines_random([
        "*@pytest.mark.samedevice: device 'gpu0' is not cpu, cuda:N or auto",
        "*@pytest.mark.samedevice: device 'sim:cuda:0' is not cpu, cuda:N or auto (drop the sim: prefix*",
        "*@pytest.mark.samedevice: devices must be a non-empty list such as [[]'cpu', 'cuda:0'[]], got 'cuda:0'",
        "*@pytest.mark.samedevice: unknown keyword 'device' (did you mean 'devices'?)",
        "*@pytest.mark.samedevice: gpus must be a whole number from 1 to 64, got 0",
    ])
    assert "Traceback" not in result.stdout.str() and "Interrupted" not in result.stdout.str()


LEDGER_USE = '''
import pytest, torch
from harness.frontends.testing import assert_transfers

def generate(model, device, steps=8):
    x = torch.zeros(1, 4, device=device)
    for _ in range(steps):
        x = model(x)
        x.sum().item()  # one host sync per step

@pytest.mark.samedevice(devices=["cuda:7"])
def test_any_cuda_index_is_simulated(samedevice_target, sim_gpus, transfer_ledger):
    model = torch.nn.Linear(4, 4).to(samedevice_target.device)
    with transfer_ledger.track(model):
        generate(model, samedevice_target.device)
    assert transfer_ledger.per_token("syncs") == transfer_ledger.per_token("sync") == 1.0
    with pytest.raises(ValueError, match="unknown transfer kind 'd2hh'"):
        transfer_ledger.per_token("d2hh")
    with pytest.raises(TypeError, match=r"decode.sync: unknown key 'sync' \\(did you mean 'syncs'\\?\\)"):
        assert_transfers(transfer_ledger, decode={"sync": 0})
    with pytest.raises(TypeError, match=r"decoed: unknown key 'decoed' \\(did you mean 'decode'\\?\\)"):
        assert_transfers(transfer_ledger, decoed={"syncs": 0})

@pytest.mark.samedevice(devices=["cuda:0"])
def test_untracked(samedevice_target, transfer_ledger):
    model = torch.nn.Linear(4, 4).to(samedevice_target.device)
    generate(model, samedevice_target.device)
    assert_transfers(transfer_ledger, decode={"syncs": 0})
'''


def test_ledger_kinds_are_checked_and_an_untracked_ledger_says_what_to_do(pytester) -> None:
    result = _run(pytester, LEDGER_USE)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*decode budget not judged: the ledger saw nothing; generate inside "
                                 "`with transfer_ledger.track(model):`*"])
