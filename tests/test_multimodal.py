"""Image-text models built tiny (`model: {family: llava}` with `inputs: {image: {size, seed}}`):
deterministic from the seed with a processor built locally, run by the transformers engine
through that processor and generate() on cpu, sim:cuda:0 and sim:auto (the vision tower on the
first GPU, the text layers split), with parity against the CPU run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.format.loader import load_file
from harness.format.scenario import ModelSpec
from harness.models import tinymodel
from harness.models.tiny_multimodal import RECIPES, generated_image
from tests.test_model_sources import samedevice, verdicts

FAMILIES = sorted(RECIPES)


def image_scenario(family: str, image: str = "{size: 40, seed: 3}", devices: str = "[cpu, cuda:0, auto]") -> str:
    return f"""\
- name: mm
  description: an image-text model given a generated image
  model: {{family: {family}}}
  engines: [transformers]
  devices: {devices}
  prompt: "The quick brown fox"
  inputs: {{image: {image}}}
  max_new_tokens: 8
"""


def test_the_generated_image_is_deterministic_from_seed_and_size() -> None:
    a, b, c = (np.asarray(generated_image(40, seed)) for seed in (3, 3, 4))
    assert a.shape == (40, 40, 3) and a.dtype == np.uint8
    assert (a == b).all() and not (a == c).all()
    assert a.std() > 20, "an image with structure, not a flat colour"


@pytest.mark.parametrize("family", FAMILIES)
def test_an_image_text_family_runs_on_cpu_and_the_simulated_gpus(tmp_path: Path, family: str) -> None:
    (tmp_path / "s.yaml").write_text(image_scenario(family))
    out = samedevice("run", "s.yaml", "-d", "cpu", "-d", "sim", "--results", "res", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert verdicts(tmp_path / "res") == {f"mm[transformers-{d}]": "passed" for d in ("cpu", "sim:cuda:0", "sim:auto")}


def test_the_image_reaches_the_model(tmp_path: Path) -> None:
    """Another image gives other tokens: the pixels go through the tower into the text model."""
    tokens = {}
    for seed in (3, 11):
        run = tmp_path / str(seed)
        run.mkdir()
        (run / "s.yaml").write_text(image_scenario("llava", f"{{size: 40, seed: {seed}}}", "[cpu]"))
        out = samedevice("run", "s.yaml", "--results", "res", "--no-progress", cwd=run)
        assert out.returncode == 0, out.stdout + out.stderr
        [result_dir] = [p for p in (run / "res").iterdir() if p.is_dir()]
        [case] = map(json.loads, (result_dir / "cases.jsonl").read_text().splitlines())
        tokens[seed] = case["tokens"]
    assert tokens[3] != tokens[11], tokens


def test_an_image_text_model_and_its_processor_are_built_from_the_seed_alone(tmp_path: Path, monkeypatch) -> None:
    built = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        monkeypatch.setenv("SAMEDEVICE_CACHE", str(tmp_path / name))
        built[name] = tinymodel.model_dir(ModelSpec(family="gemma3", seed=seed))
    weights = {k: (v / "model.safetensors").read_bytes() for k, v in built.items()}
    assert weights["a"] == weights["b"] != weights["c"]
    config = json.loads((built["a"] / "config.json").read_text())
    assert config["model_type"] == "gemma3" and config["text_config"]["hidden_size"] == 64
    assert config["image_token_index"] == 512, "the image tokens come after the bundled vocabulary"
    assert (built["a"] / "processor_config.json").is_file() or (built["a"] / "preprocessor_config.json").is_file()


def test_an_image_input_needs_an_image_text_family(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(image_scenario("qwen2"))
    [error] = load_file(path).errors
    assert "inputs.image needs an image-text model family; qwen2 is a text model" in str(error), error
