"""Engines on the same locally generated weights agree on CPU, and a user engine plugs in
through the `samedevice.engines` entry point."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from harness.engines import all_engines, get_engine, register
from harness.engines.base import Capabilities, Engine
from harness.execute.case import RunOptions, run_case
from harness.execute.cases import Case, DeviceTarget
from harness.format.loader import LoadedScenario
from harness.format.scenario import DeviceSpec, Scenario


def _cpu_case(engine: str, **fields) -> Case:
    scenario = Scenario.model_validate({"name": "x", "description": "d", "prompt": "The quick brown fox",
                                        "max_new_tokens": 12, "engines": [engine], **fields})
    return Case(LoadedScenario(scenario, "inline.yaml", 1), engine, DeviceTarget(DeviceSpec(device="cpu"), False))


def test_reference_and_transformers_agree_on_greedy_ids_on_cpu() -> None:
    reference = run_case(_cpu_case("reference"), RunOptions(), None)
    transformers = run_case(_cpu_case("transformers"), RunOptions(), None)
    assert reference.status == transformers.status == "passed", (reference.summary_line(), transformers.summary_line())
    assert reference.tokens == transformers.tokens and len(reference.tokens[0]) == 12


def test_reference_and_transformers_agree_on_greedy_ids_at_hidden_256() -> None:
    model = {"size": "parity"}
    reference = run_case(_cpu_case("reference", model=model), RunOptions(), None)
    transformers = run_case(_cpu_case("transformers", model=model), RunOptions(), None)
    assert reference.tokens == transformers.tokens


def test_the_registry_refuses_a_second_engine_with_a_taken_name() -> None:
    class Impostor(Engine):
        name = "reference"
        capabilities = Capabilities()

        def load(self, request, placement): ...
        def generate(self, request): ...

    with pytest.raises(ValueError, match="engine name 'reference' is already registered"):
        register(Impostor)
    assert get_engine("reference") is not Impostor


def test_the_old_capability_name_simulated_still_works_with_a_deprecation_warning() -> None:
    """A plugin written before the rename: `simulated=True` means runs_on_torch=True, and says
    so at the plugin's own line."""
    devices = frozenset({"cpu", "cuda"})
    with pytest.warns(DeprecationWarning, match="`simulated` is deprecated, use `runs_on_torch`") as caught:
        old = Capabilities(devices=devices, simulated=True)  # type: ignore[call-arg]
    assert caught[0].filename == __file__
    assert old == Capabilities(devices=devices, runs_on_torch=True)
    with pytest.warns(DeprecationWarning, match="use `runs_on_torch`"):
        assert old.simulated is True
    with pytest.raises(TypeError, match="give runs_on_torch only"):
        Capabilities(simulated=True, runs_on_torch=False)  # type: ignore[call-arg]


def test_an_unknown_engine_name_suggests_the_closest() -> None:
    with pytest.raises(KeyError, match="did you mean 'transformers'"):
        get_engine("transformer")


def test_an_engine_without_a_feature_is_skipped_naming_it() -> None:
    case = _cpu_case("example-greedy" if "example-greedy" in all_engines() else "reference",
                     features={"json_schema": {"schema": {"type": "object"}}})
    result = run_case(case, RunOptions(), None)
    assert result.status == "skipped" and "lacks feature json_schema" in result.reason


def test_the_example_plugin_runs_from_its_entry_point() -> None:
    points = {p.name: p for p in entry_points(group="samedevice.engines")}
    if "example-greedy" not in points:
        pytest.skip("examples/plugin-engine is not installed (nox installs it: pip install -e examples/plugin-engine)")
    assert get_engine("example-greedy") is points["example-greedy"].load()
    plugin = run_case(_cpu_case("example-greedy"), RunOptions(), None)
    reference = run_case(_cpu_case("reference"), RunOptions(), None)
    assert plugin.status == "passed", plugin.summary_line()
    assert plugin.tokens == reference.tokens


def test_mistralrs_text_equals_the_reference_text_on_cpu() -> None:
    pytest.importorskip("mistralrs", reason="mistralrs is not installed (engines extra)")
    mistral = run_case(_cpu_case("mistralrs"), RunOptions(), None)
    reference = run_case(_cpu_case("reference"), RunOptions(), None)
    assert mistral.status == "passed", mistral.summary_line()
    assert mistral.texts == reference.texts


def test_outlines_json_output_runs_over_the_transformers_model() -> None:
    pytest.importorskip("outlines", reason="outlines is not installed (engines extra)")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    result = run_case(_cpu_case("outlines", features={"json_schema": {"schema": schema}}, max_new_tokens=24), RunOptions(), None)
    assert result.status == "passed", result.summary_line()
    assert result.texts[0].startswith("{")


def test_a_transformers_case_on_simulated_gpus_notes_that_hub_kernels_are_off() -> None:
    def sim_case(engine: str) -> Case:
        case = _cpu_case(engine)
        return Case(case.loaded, engine, DeviceTarget(DeviceSpec(device="cuda:0"), simulated=True))

    transformers = run_case(sim_case("transformers"), RunOptions(), None)
    reference = run_case(sim_case("reference"), RunOptions(), None)
    assert transformers.status == reference.status == "passed"
    note = "simulation: transformers' Hub kernels are off under simulated GPUs (USE_HUB_KERNELS=NO)"
    assert any(n.startswith(note) for n in transformers.notes), transformers.notes
    assert not any(n.startswith(note) for n in reference.notes), reference.notes
