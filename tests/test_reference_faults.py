"""Each fault switch puts its bug back, and only when on: visible on the CPU where the bug
shows as a move or a placement, and caught by the harness on simulated GPUs with the
expected classification, while the same scenario without the switch passes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from harness.format import scenario as scenario_format
from harness.format.scenario import ModelSpec
from harness.models import tinymodel
from reference_impl import GenerateConfig, JsonSpec, faults, generate, load_model
from reference_impl.cache import import_past
from reference_impl.constrained import JsonConstraint

FAULTS_FILE = Path(__file__).resolve().parent.parent / "scenarios" / "faults.yaml"


class CountMoves(TorchFunctionMode):
    """Counts `.cpu()` calls and `.to()` calls that name a device."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu = self.to = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "cpu":
            self.cpu += 1
        elif name == "to" and (kwargs.get("device") is not None or any(isinstance(a, (str, torch.device)) for a in args[1:])):
            self.to += 1
        return func(*args, **kwargs)


def moves_during(model, config: GenerateConfig) -> tuple[CountMoves, list[int]]:
    model.setup_caches(1)
    with CountMoves() as counter:
        tokens = generate(model, [5, 17, 42], config)
    return counter, tokens


def test_the_switches_are_the_ones_the_scenario_format_accepts():
    assert faults.FAULTS == scenario_format.FAULTS, (
        "reference_impl.faults.FAULTS and harness.format.scenario.FAULTS must list the same switches in the same order")


def test_the_environment_turns_switches_on_and_unknown_names_are_refused(monkeypatch):
    monkeypatch.setenv(faults.ENV_VAR, "mask_on_cpu, router_on_cpu")
    assert faults.resolve(["logit_bias_on_cpu"]) == {"mask_on_cpu", "router_on_cpu", "logit_bias_on_cpu"}
    monkeypatch.setenv(faults.ENV_VAR, "mask_on_gpu")
    with pytest.raises(ValueError, match="unknown fault switch mask_on_gpu; known: logit_bias_on_cpu"):
        faults.resolve()


@pytest.mark.parametrize(("switch", "extra_cpu", "extra_to"), [
    ("logit_bias_on_cpu", 1, 0),  # the sampler's logits.cpu() before the bias
    ("stray_roundtrip_per_step", 1, 1),  # x.cpu().to(device) every step
])
def test_sampler_switches_add_moves_every_step_and_change_no_token_on_the_cpu(switch, extra_cpu, extra_to):
    directory = tinymodel.model_dir(ModelSpec())
    config = GenerateConfig(max_new_tokens=10, logit_bias={7: -100.0})
    clean, clean_tokens = moves_during(load_model(directory, ["cpu"]), config)
    faulty, faulty_tokens = moves_during(load_model(directory, ["cpu"], faults=[switch]), config)
    assert faulty_tokens == clean_tokens, f"{switch} must not change tokens on the CPU, only where the data lives"
    assert (faulty.cpu - clean.cpu, faulty.to - clean.to) == (10 * extra_cpu, 10 * extra_to), (
        f"{switch}: expected {extra_cpu} extra .cpu() and {extra_to} extra .to() per step, "
        f"got {faulty.cpu - clean.cpu} and {faulty.to - clean.to} over 10 steps")


def test_dequantize_to_cpu_pulls_the_quantized_weights_to_the_host_in_forward():
    directory = tinymodel.model_dir(ModelSpec())
    config = GenerateConfig(max_new_tokens=4)
    clean, _ = moves_during(load_model(directory, ["cpu"], quantization="q4_0"), config)
    faulty, _ = moves_during(load_model(directory, ["cpu"], quantization="q4_0", faults=["dequantize_to_cpu"]), config)
    per_forward = 4 * 2  # 4 quantized projections per layer, 2 layers
    assert faulty.cpu - clean.cpu == 4 * per_forward, (
        f"every quantized weight must be dequantized via .cpu() in each of 4 forwards, saw {faulty.cpu - clean.cpu}")


@pytest.mark.parametrize("switch", [None, "router_on_cpu"])
def test_router_on_cpu_leaves_only_the_router_off_the_layer_device(switch):
    model = load_model(tinymodel.model_dir(ModelSpec(family="mixtral")), ["meta"], faults=[switch] if switch else [])
    ffn = model.layers[0].feed_forward
    expected = "cpu" if switch else "meta"
    assert ffn.gate.weight.device.type == expected, f"with {switch}: router on {ffn.gate.weight.device}, expected {expected}"
    assert ffn.w13.weight.device.type == "meta", "the experts stay on the layer's device"


@pytest.mark.parametrize(("switch", "expected"), [(None, "meta"), ("kv_cache_on_cpu", "cpu")])
def test_kv_cache_on_cpu_converts_an_external_past_by_dtype_only(switch, expected):
    k = v = torch.zeros(1, 2, 3, 16)
    cache = import_past(k, v, torch.bfloat16, torch.device("meta"), frozenset([switch] if switch else []))
    assert cache.k.dtype == torch.bfloat16, "the past always gets the model's dtype"
    assert cache.k.device.type == expected, f"with {switch}: past on {cache.k.device}, expected {expected}"


@pytest.mark.parametrize(("switch", "expected"), [(None, "meta"), ("mask_on_cpu", "cpu")])
def test_mask_on_cpu_unpacks_the_grammar_mask_on_the_host(switch, expected):
    text = (tinymodel.model_dir(ModelSpec()) / "tokenizer.json").read_text()
    constraint = JsonConstraint({"type": "integer"}, text, 1, tinymodel.VOCAB_SIZE, tinymodel.EOS_ID,
                                torch.device("meta"), frozenset([switch] if switch else []))
    assert constraint.shifts.device.type == expected, f"with {switch}: mask unpacked on {constraint.shifts.device}"


# --- on simulated GPUs, through the harness -------------------------------------------------


def _sim_or_skip() -> None:
    try:
        from harness.devices import unavailable_reason
    except ImportError as exc:
        pytest.skip(f"simulated GPUs unavailable: {exc}")
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"simulated GPUs unavailable: {reason}")


def _fault_cases():
    from harness.execute.cases import Case, DeviceTarget
    from harness.format.loader import load_file

    loaded = load_file(FAULTS_FILE)
    assert not loaded.errors, f"{FAULTS_FILE.name} does not load: {loaded.errors}"
    return [Case(s, "reference", DeviceTarget(s.scenario.devices[0], simulated=True)) for s in loaded.scenarios]


def test_every_switch_has_a_fault_scenario():
    from harness.format.loader import load_file

    covered = {f for s in load_file(FAULTS_FILE).scenarios for f in s.scenario.faults}
    assert covered == set(faults.FAULTS), f"switches without a fault scenario: {set(faults.FAULTS) - covered}"


def test_the_bug_classes_document_names_every_switch_and_only_scenarios_that_exist():
    """docs/bug-classes.md maps each class to its fault switch and scenarios: a renamed or new
    switch or scenario must show up there too."""
    from harness.format.loader import load_paths

    root = FAULTS_FILE.parent.parent
    doc = (root / "docs" / "bug-classes.md").read_text(encoding="utf-8")
    spans = set(re.findall(r"`([a-z0-9_.-]+)`", doc))
    assert set(faults.FAULTS) <= spans, f"switches missing from the document: {set(faults.FAULTS) - spans}"
    names = {s.scenario.name for s in load_paths([FAULTS_FILE.parent]).scenarios}
    cited = {s for s in spans if "-" in s and re.fullmatch(r"[a-z0-9]+(-[a-z0-9_]+)+", s)}
    assert cited <= names, f"the document cites scenarios that do not exist: {cited - names}"
    assert {n for n in names if n.startswith("fault-")} <= cited


def test_every_fault_scenario_is_caught_on_simulated_gpus_and_its_twin_passes():
    _sim_or_skip()
    from harness.execute.case import OracleCache, RunOptions, run_case
    from harness.execute.cases import Case
    from harness.format.loader import LoadedScenario
    from harness.format.scenario import Checks

    oracles = OracleCache()
    problems = []
    for case in _fault_cases():
        caught = run_case(case, RunOptions(), oracles)
        if caught.status != "passed":
            problems.append(f"{case.id}: the injected bug was not caught as expected: "
                            f"{[f.message for f in caught.failures] or caught.status}")
        s = case.scenario
        twin_scenario = s.model_copy(update={
            "name": s.name + "-twin", "faults": [],
            "checks": Checks(transfers=s.checks.transfers),
        })
        twin = Case(LoadedScenario(twin_scenario, case.loaded.path, case.loaded.line), case.engine, case.target)
        clean = run_case(twin, RunOptions(), oracles)
        if clean.status != "passed":
            problems.append(f"{twin.id}: without the switch the scenario must pass (no false alarm), got "
                            f"{clean.status}: {[f.message for f in clean.failures] or clean.error}")
    assert not problems, "\n".join(problems)


def test_ancestor_and_input_switches_raise_pytorchs_wording_on_simulated_gpus():
    """The three switches with no CPU-visible effect, straight through reference_impl."""
    _sim_or_skip()
    from harness.devices import simulated_gpus
    from harness.devices.ledger import Ledger
    from reference_impl import beam_search

    directory = tinymodel.model_dir(ModelSpec())
    beams = GenerateConfig(max_new_tokens=4, num_beams=2)
    expectations = [
        ("ancestors_on_cpu", ["cuda:0"], beams, "index is on cpu, different from other tensors on cuda:0"),
        ("ancestors_on_first_device", ["cuda:0", "cuda:1"], beams, "index is on cuda:0, different from other tensors on cuda:1"),
        ("input_on_first_device", ["cuda:1"], GenerateConfig(max_new_tokens=4), "index is on cuda:0, different from other tensors on cuda:1"),
    ]
    with simulated_gpus(count=2, ledger=Ledger()), torch.no_grad():
        for switch, devices, config, wording in expectations:
            run = beam_search if config.num_beams > 1 else generate
            run(load_model(directory, devices), [5, 17, 42], config)  # clean: no error
            with pytest.raises(RuntimeError, match=wording):
                run(load_model(directory, devices, faults=[switch]), [5, 17, 42], config)


def test_json_spec_is_accepted_by_the_generate_config():
    # Guards the adapter's contract: a JSON feature travels as a JsonSpec.
    spec = JsonSpec({"type": "integer"}, "{}", tinymodel.EOS_ID)
    assert GenerateConfig(json=spec).stop_id == tinymodel.EOS_ID, "a grammar stops at its EOS even without stop_at_eos"


@pytest.mark.parametrize(("switch", "issued", "read"), [
    ("token_read_non_blocking", "generate.py", "generate.py"),
    ("prefetch_without_wait", "cache.py", "cache.py"),
])
@pytest.mark.parametrize("devices", [["cuda:0"], ["cuda:0", "cuda:1"]])
def test_asynchrony_switches_raise_a_race_naming_where_the_copy_was_issued_and_where_it_was_read(
        switch, issued, read, devices):
    _sim_or_skip()
    from harness.devices import simulated_gpus
    from harness.devices.sim_streams import StreamRace

    directory = tinymodel.model_dir(ModelSpec())
    config = GenerateConfig(max_new_tokens=4, kv_cache="offloaded")
    with simulated_gpus(count=2), torch.no_grad():
        assert generate(load_model(directory, devices), [5, 17, 42], config)  # clean: no race
        with pytest.raises(StreamRace) as caught:
            generate(load_model(directory, devices, faults=[switch]), [5, 17, 42], config)
    sites = re.findall(r"reference_impl/(\w+\.py):(\d+)", str(caught.value))
    assert len(set(sites)) == 2 and {sites[0][0], sites[1][0]} == {issued, read}, str(caught.value)


def test_a_pageable_upload_per_step_is_a_sync_per_step_on_simulated_gpus():
    _sim_or_skip()
    from harness.devices import simulated_gpus
    from harness.devices.ledger import Ledger

    directory = tinymodel.model_dir(ModelSpec())
    counts = {}
    for switch in (None, "pageable_upload_per_step"):
        ledger = Ledger()
        with simulated_gpus(count=1, ledger=ledger), torch.no_grad():
            model = load_model(directory, ["cuda:0"], faults=[switch] if switch else [])
            ledger.phase = "decode"
            generate(model, [5, 17, 42], GenerateConfig(max_new_tokens=6))
        counts[switch] = ledger.count("decode", "sync")
    assert counts == {None: 0, "pageable_upload_per_step": 5}, counts
