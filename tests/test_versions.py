"""Library versions: read from metadata, declared per engine, reported by doctor and run.json,
and what the version shims and the tiny-model cache key make of them."""

from __future__ import annotations

import json
import os
from importlib import metadata

import pytest

from harness.engines import get_engine, versions
from harness.engines.hf_compat import dtype_argument, sequence_bias_argument
from harness.format.scenario import ModelSpec
from harness.models import tinymodel


@pytest.fixture
def pretend(monkeypatch):
    """pretend({"outlines": "0.0.27"}): those libraries report those versions (None: absent)."""

    def apply(fake: dict[str, str | None]) -> None:
        real = versions.installed_version
        monkeypatch.setattr(versions, "installed_version", lambda name: fake[name] if name in fake else real(name))

    return apply


def test_library_versions_are_the_installed_distributions():
    found = versions.library_versions()
    assert set(found) == set(versions.LIBRARIES)
    for name in ("torch", "transformers", "tokenizers", "safetensors", "numpy"):
        assert found[name] == metadata.version(name)
    assert found["llama_cpp"] == versions.installed_version("llama-cpp-python")


def test_a_library_that_is_absent_is_none(monkeypatch):
    monkeypatch.setitem(versions.LIBRARIES, "nothing", ("samedevice-no-such-distribution",))
    assert versions.library_versions()["nothing"] is None


def test_run_json_records_every_engine_library():
    from harness.record.results import environment_info

    info = environment_info()
    assert info["libraries"] == versions.library_versions()
    json.dumps(info)  # run.json must serialise it


@pytest.mark.parametrize(("installed", "problem"), [
    ({"outlines": "0.0.27"}, "outlines 0.0.27 is not supported: needs >= 0.0.28"),
    ({"outlines": None}, "outlines is not installed (pip install 'samedevice[engines]')"),
    ({"outlines": "1.3.3", "transformers": "4.43.4"}, "transformers 4.43.4 is not supported: needs >= 4.44"),
    ({"outlines": "1.3.3", "transformers": "5.0.0", "accelerate": "0.33.0"}, "accelerate 0.33.0 is not supported: needs >= 0.34"),
])
def test_an_engine_below_its_floor_is_unavailable_and_says_why(pretend, installed, problem):
    from harness.frontends.doctor import report_lines

    pretend(installed)
    assert get_engine("outlines").unavailable_reason() == problem
    assert f"engine     outlines: unavailable: {problem}" in "\n".join(report_lines())


def test_legacy_outlines_without_datasets_is_unavailable(pretend):
    pretend({"outlines": "0.0.31", "transformers": "4.44.0", "accelerate": "0.34.2", "datasets": None})
    assert get_engine("outlines").unavailable_reason() == "outlines 0.0.31 needs datasets (pip install datasets)"


def test_the_transformers_engine_takes_its_floor(pretend):
    pretend({"transformers": "4.44.0", "accelerate": "0.34.0"})
    assert get_engine("transformers").unavailable_reason() is None


@pytest.mark.parametrize(("transformers", "keyword"), [("4.44.0", "torch_dtype"), ("4.55.4", "torch_dtype"),
                                                        ("4.56.0", "dtype"), ("5.24.0", "dtype")])
def test_from_pretrained_gets_the_dtype_keyword_its_release_takes(pretend, transformers, keyword):
    import torch

    pretend({"transformers": transformers})
    assert dtype_argument(torch.float16) == {keyword: torch.float16}


def test_sequence_bias_takes_the_form_its_release_takes(pretend):
    pretend({"transformers": "4.44.0"})
    assert sequence_bias_argument({5: -100.0, 7: 2.0}) == {(5,): -100.0, (7,): 2.0}
    pretend({"transformers": "4.45.0"})
    assert sequence_bias_argument({5: -100.0, 7: 2.0}) == [[[5], -100.0], [[7], 2.0]]


@pytest.mark.parametrize(("tokenizers", "generation"), [("0.19.1", "merges-strings"), ("0.20.0", "merges-pairs"),
                                                        ("0.23.3", "merges-pairs"), (None, "none")])
def test_tokenizer_json_generation_boundary(pretend, tokenizers, generation):
    pretend({"tokenizers": tokenizers})
    assert versions.tokenizer_json_generation() == generation


def test_the_generation_names_what_the_installed_tokenizers_writes(tmp_path):
    merges = json.loads(tinymodel.tokenizer_path(tmp_path).read_text())["model"]["merges"]
    pairs = isinstance(merges[0], list)
    assert versions.tokenizer_json_generation() == ("merges-pairs" if pairs else "merges-strings")


def test_the_model_cache_key_holds_the_tokenizer_format(monkeypatch, tmp_path, pretend):
    """A model cached by tokenizers 0.20+ is never served to 0.19 (which cannot read it)."""
    monkeypatch.setenv("SAMEDEVICE_CACHE", str(tmp_path))
    spec = ModelSpec()
    pretend({"tokenizers": "0.19.1"})
    old = tinymodel.model_dir(spec)
    pretend({"tokenizers": "0.20.0"})
    new = tinymodel.model_dir(spec)
    pretend({"tokenizers": "0.23.3"})
    assert tinymodel.model_dir(spec) == new, "0.20-0.23 write the same files: one cache entry"
    assert old != new
    monkeypatch.setattr(tinymodel, "FACTORY_VERSION", tinymodel.FACTORY_VERSION + 1)
    assert tinymodel.model_dir(spec) != new, "the factory version is in the key too"


@pytest.mark.parametrize(("error", "clash"), [
    (ImportError("cannot import name 'HfFolder' from 'huggingface_hub' (/site/huggingface_hub/__init__.py)"),
     "huggingface_hub"),
    (ModuleNotFoundError("No module named 'tokenizers.decoders'", name="tokenizers.decoders"), "tokenizers"),
    (ImportError("cannot import name 'X' from 'transformers.utils'"), None),  # transformers' own: no clash named
])
def test_an_import_failure_names_the_library_its_version_and_the_clashing_package(error, clash):
    line = versions.import_problem("transformers", error)
    assert line.startswith(f"environment: transformers {versions.installed_version('transformers')} cannot import: ")
    named = f"{clash} {versions.installed_version(clash)} beside it: " if clash else ""
    assert line.endswith(f"{named}{type(error).__name__}: {error}"), line


def test_an_engine_library_that_cannot_import_here_is_an_environment_skip(tmp_path):
    """An old transformers beside a huggingface_hub too new for it (4.44 imports HfFolder, which
    huggingface_hub 1.0 removed), first on sys.path: the case names both, never a harness error."""
    import subprocess
    import sys

    import huggingface_hub

    if hasattr(huggingface_hub, "HfFolder"):
        pytest.skip("this huggingface_hub still has HfFolder")
    (tmp_path / "transformers").mkdir()
    (tmp_path / "transformers" / "__init__.py").write_text("from huggingface_hub import HfFolder\n")
    (tmp_path / "transformers-4.44.0.dist-info").mkdir()
    (tmp_path / "transformers-4.44.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.44.0\n")
    script = """
from harness.execute.case import Companions, RunOptions, run_case
from harness.execute.cases import Case, DeviceTarget
from harness.format.loader import LoadedScenario
from harness.format.scenario import DeviceSpec, Scenario
scenario = Scenario.model_validate({"name": "o", "description": "d", "prompt": "hi", "engines": ["transformers"]})
for device, simulated in [("cpu", False), ("cuda:0", True)]:
    case = Case(LoadedScenario(scenario, "o.yaml", 1), "transformers", DeviceTarget(DeviceSpec(device=device), simulated))
    result = run_case(case, RunOptions(), Companions())
    print(result.status, result.summary_line())
"""
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    expected = (f"skipped engine transformers: environment: transformers 4.44.0 cannot import: huggingface_hub "
                f"{huggingface_hub.__version__} beside it: ImportError: cannot import name 'HfFolder' from 'huggingface_hub'")
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith(expected) for line in lines), out.stdout + out.stderr
