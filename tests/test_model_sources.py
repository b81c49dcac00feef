"""Model sources: a local transformers-format directory (`model: {path}`), the local Hugging
Face cache (`model: {hub, revision}`, never downloaded) and generated families of any
transformers architecture (`model: {family}`), end to end through `samedevice run`, with the
one-line errors for what is missing, and weights deterministic from the seed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.execute.cases import expand, skip_reason
from harness.format.scenario import ModelSpec
from harness.frontends.scenarios import load_file
from harness.models import tinymodel

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def scenario(model: str, engines: str = "[transformers]") -> str:
    return f"""\
- name: my-model
  description: a user's own model on cpu and the simulated GPUs
  model: {model}
  engines: {engines}
  devices: [cpu, cuda:0, auto]
  prompt: "The quick brown fox"
  max_new_tokens: 8
"""


def samedevice(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.frontends.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    """A local qwen2 checkpoint as a user has one: save_pretrained's files and a tokenizer."""
    target = tmp_path_factory.mktemp("models") / "my-qwen2"
    shutil.copytree(tinymodel.model_dir(ModelSpec(family="qwen2")), target)
    assert json.loads((target / "config.json").read_text())["model_type"] == "qwen2"
    return target


def verdicts(results: Path) -> dict[str, str]:
    [run] = [p for p in results.iterdir() if p.is_dir()]
    return {c["id"]: c["status"] for c in map(json.loads, (run / "cases.jsonl").read_text().splitlines())}


def test_a_local_qwen2_directory_runs_through_transformers_on_cpu_and_sim(tmp_path: Path, qwen2_dir: Path) -> None:
    (tmp_path / "scenarios").mkdir()
    # Relative to the scenario file's directory, not to where samedevice runs.
    relative = os.path.relpath(qwen2_dir, tmp_path / "scenarios")
    (tmp_path / "scenarios" / "local.yaml").write_text(scenario(f"{{path: {relative}}}"))
    out = samedevice("run", "scenarios", "-d", "cpu", "-d", "sim", "--results", "res", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert verdicts(tmp_path / "res") == {f"my-model[transformers-{d}]": "passed" for d in ("cpu", "sim:cuda:0", "sim:auto")}


def lay_out_hub_cache(cache: Path, source: Path, repo: str) -> Path:
    """huggingface_hub's documented cache layout: models--ORG--NAME/snapshots/COMMIT/, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, root / "snapshots" / COMMIT)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return root


@pytest.mark.parametrize("revision", ["main", COMMIT])
def test_a_hub_model_from_the_local_cache_runs_without_a_download(tmp_path: Path, qwen2_dir: Path, revision: str) -> None:
    lay_out_hub_cache(tmp_path / "hf" / "hub", qwen2_dir, "local-org/tiny-qwen2")
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "hub.yaml").write_text(scenario(f"{{hub: local-org/tiny-qwen2, revision: '{revision}'}}"))
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": "", "HUGGINGFACE_HUB_CACHE": "",
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # a download would have to go here, and fail
    out = samedevice("run", "scenarios", "-d", "cpu", "-d", "sim", "--results", "res", "--no-progress", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(verdicts(tmp_path / "res").values()) == {"passed"}


def load_errors(path: Path) -> list[str]:
    result = load_file(path)
    assert not result.scenarios
    return [str(e) for e in result.errors]


def test_a_missing_directory_is_one_line_naming_the_field_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(scenario("{path: models/nowhere}"))
    assert load_errors(path) == [f"{path}:3:17: [0].model.path: {tmp_path / 'models' / 'nowhere'}: no such directory"]


@pytest.mark.parametrize(("remove", "message"), [
    ("config.json", "no config.json (not a transformers-format model directory)"),
    ("model.safetensors", "no *.safetensors weights"),
    ("tokenizer", "no tokenizer (tokenizer.json, or tokenizer_config.json with its vocabulary files)"),
])
def test_a_directory_missing_a_file_says_which(tmp_path: Path, qwen2_dir: Path, remove: str, message: str) -> None:
    model = tmp_path / "m"
    shutil.copytree(qwen2_dir, model)
    for name in ("tokenizer.json", "tokenizer_config.json") if remove == "tokenizer" else (remove,):
        (model / name).unlink()
    path = tmp_path / "s.yaml"
    path.write_text(scenario("{path: m}"))
    assert load_errors(path) == [f"{path}:3:17: [0].model.path: {model}: {message}"]


def test_a_hub_model_absent_from_the_cache_names_the_cache_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    path = tmp_path / "s.yaml"
    path.write_text(scenario("{hub: some-org/absent, revision: v1}"))
    [error] = load_errors(path)
    assert error.startswith(f"{path}:3:16: [0].model.hub: some-org/absent at revision v1 is not in the local Hugging Face "
                            f"cache {tmp_path / 'empty-cache'} (samedevice never downloads"), error


def test_path_model_rules_use_the_models_own_vocabulary(tmp_path: Path, qwen2_dir: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(scenario(f"{{path: {qwen2_dir}}}") + "  features: {logit_bias: {ids: {512: 1.0}}}\n")
    assert load_errors(path) == [f"{path}:8:33: [0].features.logit_bias.ids.512: token id 512 is outside the vocabulary (0 to 511)"]


def test_every_model_limit_of_a_path_model_is_reported_in_one_load(tmp_path: Path, qwen2_dir: Path) -> None:
    model = tmp_path / "short-context"
    shutil.copytree(qwen2_dir, model)
    config = json.loads((model / "config.json").read_text())
    layers = config["num_hidden_layers"]
    (model / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 24}))
    path = tmp_path / "s.yaml"
    path.write_text(f"""\
- name: limits
  description: every limit of this model exceeded at once
  model: {{path: {model}}}
  engines: [transformers]
  devices: [cpu, {{device: auto, gpus: {layers + 1}}}]
  prompts: ["{'x' * 20}", hi, "{'y' * 30}"]
  features: {{logit_bias: {{ids: {{512: 1.0}}}}}}
""")
    assert load_errors(path) == [
        f"{path}:7:33: [0].features.logit_bias.ids.512: token id 512 is outside the vocabulary (0 to 511)",
        f"{path}:6:13: [0].prompts[0]: the prompt (20 tokens) plus max_new_tokens 16 exceeds the model's "
        "max_position_embeddings 24",
        f"{path}:6:41: [0].prompts[2]: the prompt (30 tokens) plus max_new_tokens 16 exceeds the model's "
        "max_position_embeddings 24",
        f"{path}:5:39: [0].devices[1].gpus: auto over {layers + 1} GPUs needs at least one layer per GPU, but the "
        f"model has {layers} layers: at most gpus: {layers}",
    ]


def test_engines_that_do_not_run_an_architecture_skip_naming_it(tmp_path: Path, qwen2_dir: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(scenario(f"{{path: {qwen2_dir}}}", engines="[reference, mistralrs]"))
    [loaded] = load_file(path).scenarios
    reasons = {case.engine: skip_reason(case) for case in expand(loaded) if case.target.label == "cpu"}
    assert reasons["reference"] == ("engine reference does not run qwen2 models (it runs llama, mixtral)", False)
    assert reasons["mistralrs"][0].startswith("engine mistralrs ")  # not installed, or: does not run qwen2 models


def test_a_family_without_a_tiny_decoder_only_form_skips_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(scenario("{family: [bert, mllama]}"))
    reasons = {c.scenario.model.family: skip_reason(c) for s in load_file(path).scenarios for c in expand(s)
               if c.target.label == "cpu"}
    assert reasons["bert"][0].startswith("model family bert cannot be built tiny: encoder architecture"), reasons
    assert reasons["mllama"][0].startswith("model family mllama cannot be built tiny: multimodal"), reasons
    assert "no recipe for mllama" in reasons["mllama"][0], reasons


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_family_models_are_deterministic_from_the_seed(tmp_path: Path, monkeypatch) -> None:
    built = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        monkeypatch.setenv("SAMEDEVICE_CACHE", str(tmp_path / name))
        built[name] = tinymodel.model_dir(ModelSpec(family="qwen2", seed=seed))
    assert sha256(built["a"] / "model.safetensors") == sha256(built["b"] / "model.safetensors")
    assert (built["a"] / "config.json").read_text() == (built["b"] / "config.json").read_text()
    assert sha256(built["a"] / "model.safetensors") != sha256(built["c"] / "model.safetensors")


def test_a_generic_family_has_rope_theta_top_level_an_untied_scaled_head_and_the_bundled_tokenizer() -> None:
    from safetensors.torch import load_file as load_weights

    directory = tinymodel.model_dir(ModelSpec(family="gemma2"))  # gemma2 ties its head by default
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "gemma2" and config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert config["tie_word_embeddings"] is False and config["vocab_size"] == 512 and config["eos_token_id"] == 1
    weights = load_weights(str(directory / "model.safetensors"))
    head, embed = weights["lm_head.weight"], weights["model.embed_tokens.weight"]
    assert 30 < head.std() / (head.shape[-1] ** -0.5) < 70, "lm_head scaled x50"
    assert 0.8 < embed.std() < 1.2, "embeddings unscaled"
    assert json.loads((directory / "samedevice.json").read_text())["notes"] == []
    assert (directory / "tokenizer.json").read_text() == (tinymodel.model_dir(ModelSpec()) / "tokenizer.json").read_text()


# The llama and mixtral files of the default specs, as written before model sources existed
# (issue 12): their layout is the harness's own and must not drift. Bump FACTORY_VERSION and
# these together if a change is intended.
BUNDLED_SHA256 = {
    "llama": "67fd7d9c579d4f950660502e4229168d7aeee40da5da09e73bf94899e7adae33",
    "mixtral": "c214920ff0ef035f4d309b7b919f85c83765311a69d4d9a98801d041a367704a",
}


@pytest.mark.parametrize("family", sorted(BUNDLED_SHA256))
def test_bundled_families_are_byte_identical_to_before(family: str) -> None:
    assert tinymodel.FACTORY_VERSION == 1
    assert sha256(tinymodel.model_dir(ModelSpec(family=family)) / "model.safetensors") == BUNDLED_SHA256[family]


def test_a_family_transformers_cannot_build_skips_with_its_words_and_other_build_errors_fail(tmp_path: Path, monkeypatch) -> None:
    from harness.execute.case import RunOptions, run_case
    from harness.models import tiny_families

    monkeypatch.setenv("SAMEDEVICE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "s.yaml"
    path.write_text(scenario("{family: qwen2, seed: 4242}").replace("[cpu, cuda:0, auto]", "[cpu]"))
    [case] = expand(load_file(path).scenarios[0])

    def refused(*args) -> None:
        raise tiny_families.CannotBuildTiny("transformers cannot build it from its config: TypeError: boom at x.py:1")

    monkeypatch.setattr(tiny_families, "write_model", refused)
    skipped = run_case(case, RunOptions(), None)
    assert (skipped.status, skipped.reason) == ("skipped", "model family qwen2 cannot be built tiny: transformers cannot "
                                                           "build it from its config: TypeError: boom at x.py:1")

    def broken(*args) -> None:
        raise KeyError("a bug in the builder")

    monkeypatch.setattr(tiny_families, "write_model", broken)
    failed = run_case(case, RunOptions(), None)
    assert failed.status == "error" and failed.error is not None and "a bug in the builder" in failed.error.message


@pytest.mark.parametrize(("family", "status", "reason"), [
    ("openai-gpt", "passed", ""),  # its parent module owns a buffer (transformer.position_ids): placed too
    ("xlm", "skipped", "engine transformers: XLMWithLMHeadModel has 4 lists of 2 layers"),
])
def test_auto_splits_any_architecture_by_decoder_layer_or_skips_saying_why(tmp_path: Path, family: str, status: str,
                                                                            reason: str) -> None:
    from harness.execute.case import Companions, RunOptions, run_case

    path = tmp_path / "s.yaml"
    path.write_text(scenario(f"{{family: {family}}}").replace("[cpu, cuda:0, auto]", "[auto]"))
    [case] = [c for c in expand(load_file(path).scenarios[0]) if c.target.label == "sim:auto"]
    result = run_case(case, RunOptions(), Companions())
    assert result.status == status and result.reason.startswith(reason), result.summary_line()
    if status == "passed":
        assert set(result.weights["devices"]) == {"cuda:0", "cuda:1"}, result.weights


@pytest.mark.parametrize("source", ["generated", "path"])
def test_a_from_pretrained_override_is_the_model_the_load_checks_use(tmp_path: Path, qwen2_dir: Path, source: str) -> None:
    """`from_pretrained: {max_position_embeddings: 16}` makes the transformers engine's model
    16 positions long: the context check uses 16 (it used the config's 512 and the case ran)."""
    model = "{family: qwen2}" if source == "generated" else f"{{path: {qwen2_dir}}}"
    path = tmp_path / "s.yaml"
    text = scenario(model).replace("max_new_tokens: 8", "max_new_tokens: 12")
    path.write_text(text + "  engine_options: {transformers: {from_pretrained: {max_position_embeddings: 16}}}\n")
    assert load_errors(path) == [
        f"{path}:8:78: [0].engine_options.transformers.from_pretrained.max_position_embeddings: the prompt "
        "(13 tokens) plus max_new_tokens 12 exceeds max_position_embeddings 16 set here (the model the "
        "transformers engine loads)"]
    path.write_text(text + "  engine_options: {transformers: {from_pretrained: {max_position_embeddings: 25}}}\n")
    assert not load_file(path).errors, "13 + 12 fits 25"
    path.write_text(text + "  engine_options: {transformers: {from_pretrained: {num_hidden_layers: 1}}}\n")
    assert "auto over 2 GPUs (the default) needs at least one layer per GPU, but the model has 1 layer" \
        in str(load_file(path).errors[0])
