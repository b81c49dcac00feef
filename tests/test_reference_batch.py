"""Padded batches: row i of a batch generates what prompt i generates alone, each row stops at
its own EOS, the mask and positions left on the host are caught on simulated GPUs, and the
harness judges each row against its prompt's single CPU run (a wrong batched path fails)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.format.scenario import ModelSpec
from harness.models import tinymodel
from reference_impl import GenerateConfig, generate, load_model
from reference_impl import batched as batched_impl
from reference_impl.batched import generate_batch

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [[5, 17, 42, 9, 33, 2], [7, 8], [100, 200, 300, 11]]


def _sim_or_skip() -> None:
    from harness.devices import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"simulated GPUs unavailable: {reason}")


@pytest.fixture(scope="module")
def directory() -> Path:
    return tinymodel.model_dir(ModelSpec())


@pytest.mark.parametrize("padding", ["left", "right"])
def test_each_row_equals_its_prompt_alone_and_stops_at_its_own_eos(directory: Path, padding: str) -> None:
    model = load_model(directory, ["cpu"])
    free = [generate(model, p, GenerateConfig(max_new_tokens=10)) for p in PROMPTS]
    assert generate_batch(model, PROMPTS, GenerateConfig(max_new_tokens=10), pad_id=0, padding=padding) == free
    # a stop token row 0 chooses at step 3 (and the other rows do not choose before their end)
    stop = free[0][3]
    config = GenerateConfig(max_new_tokens=10, eos_id=stop)
    alone = [generate(model, p, config) for p in PROMPTS]
    assert len(alone[0]) == 4 and any(len(row) == 10 for row in alone), alone
    assert generate_batch(model, PROMPTS, config, pad_id=0, padding=padding) == alone


def test_a_padded_slot_attended_to_changes_the_rows(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mask matters: with every slot valid, a padded row attends to its padding."""
    model = load_model(directory, ["cpu"])
    config = GenerateConfig(max_new_tokens=8)
    alone = [generate(model, p, config) for p in PROMPTS]
    real = batched_impl.row_state

    def unmasked(*args, **kwargs):
        padded = real(*args, **kwargs)
        padded.valid = {d: torch.ones_like(v) for d, v in padded.valid.items()}
        return padded

    monkeypatch.setattr(batched_impl, "row_state", unmasked)
    assert generate_batch(model, PROMPTS, config, pad_id=0, padding="left") != alone


@pytest.mark.parametrize("devices", [["cuda:0"], ["cuda:0", "cuda:1"]])
def test_batches_equal_the_cpu_on_simulated_gpus_and_the_host_switches_raise(directory: Path, devices: list[str]) -> None:
    _sim_or_skip()
    from harness.devices import simulated_gpus

    config = GenerateConfig(max_new_tokens=6)
    alone = [generate(load_model(directory, ["cpu"]), p, config) for p in PROMPTS]
    expectations = {
        "padding_mask_on_cpu": "found at least two devices, cuda:0 and cpu",
        "position_ids_on_cpu": "index is on cpu, different from other tensors on cuda:0",
    }
    with simulated_gpus(count=2), torch.no_grad():
        for padding in ("left", "right"):
            assert generate_batch(load_model(directory, devices), PROMPTS, config, 0, padding) == alone
        for switch, wording in expectations.items():
            with pytest.raises(RuntimeError, match=wording):
                generate_batch(load_model(directory, devices, faults=[switch]), PROMPTS, config, 0, "left")


def test_generate_batch_refuses_what_rows_cannot_share(directory: Path) -> None:
    model = load_model(directory, ["cpu"])
    with pytest.raises(ValueError, match="not with beam search, sampling"):
        generate_batch(model, PROMPTS, GenerateConfig(num_beams=2, temperature=0.7), pad_id=0)


# --- the harness -------------------------------------------------------------------------------

BATCHED = """\
- name: rows
  description: three prompts as one padded batch
  engines: [reference, transformers]
  devices: [cpu, cuda:0]
  prompts: ["The quick brown fox", "Hi", "The cat sat on the mat."]
  max_new_tokens: 6
  batch: {size: 3, padding: left}
"""


def _cases(write_scenario, text: str = BATCHED):
    from harness.execute.cases import expand
    from harness.frontends.scenarios import load_file

    loaded = load_file(write_scenario("rows.yaml", text))
    assert not loaded.errors, loaded.errors
    return {c.id: c for c in expand(loaded.scenarios[0])}


def test_the_cpu_batch_is_judged_against_each_prompt_alone_and_a_wrong_path_fails(
        write_scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.execute.case import Companions, RunOptions, run_case

    # right padding: a constant shift of a row's positions is invisible to RoPE (left padding),
    # the gap between a right-padded prompt and its first generated token is not
    case = _cases(write_scenario, BATCHED.replace("padding: left", "padding: right"))["rows[reference-cpu]"]
    assert run_case(case, RunOptions(), Companions()).status == "passed"
    real = batched_impl.row_state

    def slot_positions(*args, **kwargs):  # the bug: positions are the batch's slots
        padded = real(*args, **kwargs)
        width = next(iter(padded.positions.values())).shape[1]
        padded.positions = {d: torch.arange(width, device=p.device).expand_as(p).clone() for d, p in padded.positions.items()}
        return padded

    monkeypatch.setattr(batched_impl, "row_state", slot_positions)
    result = run_case(case, RunOptions(), Companions())
    assert result.status == "failed", result
    assert any(f.check == "parity" and "output diverges from the CPU run at prompt 1" in f.message for f in result.failures), \
        [f.message for f in result.failures]


def test_engines_that_do_not_declare_batching_skip_with_the_reason(write_scenario) -> None:
    from harness.execute.cases import Case, declared_skip_reason

    case = _cases(write_scenario)["rows[reference-cpu]"]
    other = Case(case.loaded, "outlines", case.target)
    assert declared_skip_reason(other) == "engine outlines does not declare batching"
    assert declared_skip_reason(case) is None


@pytest.mark.parametrize(("extra", "message"), [
    ("  batch: {size: 4}\n", "batch size 4 exceeds the 3 prompts"),
    ("  batch: {size: 2}\n  features: {beam_search: {num_beams: 2}}\n", "batch does not combine with features.beam_search"),
    ("  batch: {size: 2}\n  sampling: {mode: sample}\n", "batch does not combine with sampling.mode: sample"),
    ("  batch: {size: 1}\n", "greater than or equal to 2"),
])
def test_a_batch_the_rows_cannot_run_is_refused_at_load(write_scenario, extra: str, message: str) -> None:
    from harness.frontends.scenarios import load_file

    text = BATCHED.replace("  batch: {size: 3, padding: left}\n", extra)
    loaded = load_file(write_scenario("bad.yaml", text))
    assert len(loaded.errors) == 1 and message in str(loaded.errors[0]), loaded.errors


def test_transformers_skips_right_padding_with_the_reason(write_scenario) -> None:
    from harness.execute.case import Companions, RunOptions, run_case

    case = _cases(write_scenario, BATCHED.replace("padding: left", "padding: right"))["rows[transformers-cpu]"]
    result = run_case(case, RunOptions(), Companions())
    if result.status == "skipped" and "unavailable" in (result.reason or ""):
        pytest.skip(result.reason)
    assert result.status == "skipped" and "need padding: left" in (result.reason or ""), result
