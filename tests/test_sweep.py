"""The architecture sweep: `family: all` expands to one scenario per family of the installed
transformers, the sweep file stays out of the quick default suite, the family table reads a
run, and companion runs (the CPU parity oracle) are never shared between families."""

from __future__ import annotations

from harness.execute.case import Companions
from harness.execute.case_errors import ErrorInfo
from harness.execute.cases import Case, DeviceTarget, expand
from harness.format.loader import load_file, load_paths
from harness.format.scenario import DeviceSpec
from harness.frontends.architectures import sweep_table
from harness.models.families import (
    all_families,
    causal_lm_families,
    image_text_families,
    known_families,
)
from harness.record.results import CaseResult
from tests.conftest import REPO

SWEEP = REPO / "sweeps" / "architectures.yaml"


def test_family_all_is_one_scenario_per_family_of_the_installed_transformers() -> None:
    result = load_file(SWEEP)
    assert not result.errors, result.errors
    names = [s.scenario.name for s in result.scenarios]
    families, image_text = all_families(multimodal=False), image_text_families()
    assert families is not None and {"qwen2", "gemma2", "phi3", "mistral", "llama", "mixtral"} <= set(families)
    assert image_text is not None and {"llava", "gemma3", "paligemma"} <= set(image_text)
    bases = ["arch-greedy", "arch-beam-search", "arch-static-cache", "arch-sampled"]
    # a scenario with an image input: `all` is every image-text family
    assert names == [f"{base}.{family}" for base in bases for family in families] + [
        f"arch-image.{family}" for family in image_text]
    assert {s.scenario.model.family for s in result.scenarios} == set(families) | set(image_text) == set(known_families() or ())
    assert {s.line for s in result.scenarios if s.scenario.name.startswith("arch-greedy.")} == {13}, "the item's own line"


def test_the_family_list_is_read_without_importing_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from harness.models.families import causal_lm_families; n = len(causal_lm_families()); "
            "print(n, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == len(causal_lm_families() or ()) > 50 and out[1:] == ["False", "False"]


def test_the_sweep_uses_the_features_it_names() -> None:
    scenarios = {s.scenario.name.split(".")[0]: s.scenario for s in load_file(SWEEP).scenarios}
    assert scenarios["arch-beam-search"].features.beam_search is not None
    assert scenarios["arch-sampled"].sampling.mode == "sample"
    assert scenarios["arch-static-cache"].engine_options.for_engine("transformers").generate == {"cache_implementation": "static"}
    assert all(s.engines == ["transformers"] for s in scenarios.values())


def test_the_sweep_is_not_part_of_the_default_suite() -> None:
    bundled = [s.scenario.name for s in load_paths([REPO / "scenarios"]).scenarios]
    assert bundled and not any(name.startswith("arch-") for name in bundled)
    settings = [line for line in (REPO / "pyproject.toml").read_text().splitlines()
                if line.startswith(("testpaths", "samedevice_paths"))]
    assert len(settings) == 2 and not any("sweeps" in line for line in settings), settings
    noxfile = (REPO / "noxfile.py").read_text()
    assert '@nox.session(default=False)\ndef sweep(' in noxfile and '"sweep"' not in noxfile.split("nox.options.sessions")[1].splitlines()[0]


def test_companion_runs_are_kept_per_family_of_one_line() -> None:
    [greedy_qwen2] = [s for s in load_file(SWEEP).scenarios if s.scenario.name == "arch-greedy.qwen2"]
    [greedy_gemma2] = [s for s in load_file(SWEEP).scenarios if s.scenario.name == "arch-greedy.gemma2"]
    assert greedy_qwen2.line == greedy_gemma2.line
    cpu = DeviceTarget(DeviceSpec(device="cpu"), simulated=False)
    keys = {Companions._key(Case(s, "transformers", cpu)) for s in (greedy_qwen2, greedy_gemma2)}
    assert len(keys) == 2, "a CPU oracle of one family must never judge another"
    assert len(expand(greedy_qwen2)) == 5  # cpu, cuda:0 + sim, auto + sim


def result(scenario: str, device: str, status: str, **fields) -> CaseResult:
    return CaseResult(id=f"{scenario}[transformers-{device}]", scenario=scenario, engine="transformers", device=device,
                      file="sweeps/architectures.yaml", line=13, status=status, **fields)


def test_the_table_has_a_row_per_family_a_column_per_feature_and_device_and_the_findings() -> None:
    error = ErrorInfo("RuntimeError", "The size of tensor a (2) must match", site="transformers/cache_utils.py:42")
    results = [
        result("arch-greedy.qwen2", "cpu", "passed"),
        result("arch-greedy.qwen2", "sim:cuda:0", "passed"),
        result("arch-sampled.qwen2", "sim:auto", "error", error=error),
        result("arch-greedy.bert", "cpu", "skipped", reason="model family bert cannot be built tiny: encoder"),
    ]
    table = sweep_table(results).splitlines()
    assert "| family | greedy cpu | greedy sim:cuda:0 | sampled sim:auto |" in table
    assert "| qwen2 | ok | ok | ERR |" in table and "| bert | skip |  |  |" in table
    assert "- bert: encoder" in table and "## Cannot be built tiny (1 families)" in table
    assert ("- `arch-sampled.qwen2[transformers-sim:auto]` (sweeps/architectures.yaml:13): RuntimeError at "
            "transformers/cache_utils.py:42: The size of tensor a (2) must match") in table


# The generation-options sweep (sweeps/options.yaml, harness/frontends/generation_options.py)

OPTIONS_SWEEP = REPO / "sweeps" / "options.yaml"


def test_the_options_sweep_is_what_the_generator_writes_and_loads_clean() -> None:
    from harness.frontends import generation_options

    assert OPTIONS_SWEEP.read_text() == generation_options.sweep_yaml(), \
        "stale: run python -m harness.frontends.generation_options"
    result = load_file(OPTIONS_SWEEP)
    assert not result.errors, result.errors
    scenarios = {s.scenario.name: s.scenario for s in result.scenarios}
    for name, item in generation_options.options_with_caches().items():
        assert (f"opt.{name}" in scenarios) is not bool(item.get("assistant_only")), name
        assert (f"opt-assisted.{name}" in scenarios) is not bool(item.get("alone_only")), name
        if item.get("alone_only"):
            continue
        assisted = scenarios[f"opt-assisted.{name}"].engine_options.for_engine("transformers")
        assert assisted.assistant is not None and assisted.assistant.device == "cuda:1"
        assert assisted.generate == item.get("generate", {})
    assert "opt-assisted.use_cache" not in scenarios and "opt.use_cache" in scenarios  # transformers refuses it
    assert all([d.device for d in s.devices] == ["cpu", "cuda:0", "auto"] and s.engines == ["transformers"] for s in scenarios.values())


def test_every_generation_config_field_that_turns_something_on_is_run_or_explained() -> None:
    from harness.frontends.generation_options import NOT_APPLICABLE, option_fields, uncovered

    fields = option_fields()
    # read from transformers' own source, one of each kind
    assert "logits processor" in fields["repetition_penalty"] and "logits processor" in fields["watermarking_config"]
    assert "stopping criterion" in fields["stop_strings"] and "stopping criterion" in fields["max_time"]
    assert fields["cache_implementation-static"] == {"cache"} and "cache" in fields["prefill_chunk_size"]
    assert "decoding strategy" in fields["prompt_lookup_num_tokens"] and "decoding strategy" in fields["penalty_alpha"]
    assert "max_new_tokens" not in fields and "output_scores" not in fields
    assert uncovered(fields) == []
    assert all(reason for reason in NOT_APPLICABLE.values()) and set(NOT_APPLICABLE) <= set(fields)


def test_a_field_neither_run_nor_explained_is_named(monkeypatch) -> None:
    from harness.frontends import generation_options

    monkeypatch.delitem(generation_options.OPTIONS, "top_h")
    monkeypatch.delitem(generation_options.NOT_APPLICABLE, "use_mtp")
    assert generation_options.uncovered(generation_options.option_fields()) == ["top_h", "use_mtp"]
    assert generation_options.main(["--check"]) == 1


def test_the_options_sweep_is_its_own_session_not_the_default_suite() -> None:
    bundled = [s.scenario.name for s in load_paths([REPO / "scenarios"]).scenarios]
    assert not any(name.startswith("opt.") or name.startswith("opt-assisted.") for name in bundled)
    noxfile = (REPO / "noxfile.py").read_text()
    assert "@nox.session(default=False)\ndef options_sweep(" in noxfile
    assert '"options_sweep"' not in noxfile.split("nox.options.sessions")[1].splitlines()[0]
    assert '_run_sweep(session, "sweeps/architectures.yaml"' in noxfile, "the architecture sweep runs its own file only"


def test_the_options_table_has_a_row_per_option() -> None:
    error = ErrorInfo("RuntimeError", "Expected all tensors to be on the same device",
                      site="transformers/generation/logits_process.py:2358")
    results = [CaseResult(id=f"{name}[transformers-{device}]", scenario=name, engine="transformers", device=device,
                          file="sweeps/options.yaml", line=27, status=status, error=error if status == "error" else None)
               for name, device, status in [("opt.bad_words_ids", "cpu", "passed"),
                                            ("opt-assisted.bad_words_ids", "sim:cuda:0", "error")]]
    table = sweep_table(results, "Generation-options sweep", "option", "options").splitlines()
    assert table[0] == "# Generation-options sweep" and table[2].startswith("1 options, 2 cases")
    assert "| option | opt cpu | opt-assisted sim:cuda:0 |" in table and "| bad_words_ids | ok | ERR |" in table
    assert ("- `opt-assisted.bad_words_ids[transformers-sim:cuda:0]` (sweeps/options.yaml:27): RuntimeError at "
            "transformers/generation/logits_process.py:2358: Expected all tensors to be on the same device") in table
