"""`samedevice schema` is a JSON Schema that editors can use: it accepts every bundled
scenario, rejects what the loader rejects, and the copy shipped for editors is current."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from harness.format.scenario import scenario_json_schema
from tests.conftest import REPO


@pytest.fixture(scope="module")
def schema() -> dict:
    out = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "schema"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_schema_validates_every_bundled_scenario_file(schema: dict) -> None:
    files = sorted((REPO / "scenarios").glob("*.yaml"))
    assert files
    for path in files:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


@pytest.mark.parametrize("bad", [
    {"name": "x", "description": "d", "prompt": "hi", "modle": {}},
    {"name": "x", "description": "d", "prompt": "hi", "devices": ["cuda:x"]},
    {"name": "x", "prompt": "hi"},
    {"name": "x", "description": "d", "prompt": "hi", "max_new_tokens": 0},
    # bounds added with issue 11: what the schema can say, it says
    {"name": "x", "description": "d", "prompts": ["hi", ""]},
    {"name": "x", "description": "d", "prompt": "hi", "model": {"seed": 2**64}},
    {"name": "x", "description": "d", "prompt": "hi", "sampling": {"mode": "sample", "top_k": 0}},
    # model sources: exactly one of family, path, hub; each with only its own keys
    {"name": "x", "description": "d", "prompt": "hi", "model": {"path": "m", "seed": 1}},
    {"name": "x", "description": "d", "prompt": "hi", "model": {"hub": "not-org-slash-name"}},
    {"name": "x", "description": "d", "prompt": "hi", "model": {"family": []}},
    {"name": "x", "description": "d", "prompt": "hi", "devices": [{"device": "auto", "gpus": 1}]},
    {"name": "x", "description": "d", "prompt": "hi", "devices": ["cuda:64"]},
    {"name": "x", "description": "d", "prompt": "hi", "model": {"lm_head_scale": 1e30}},
])
def test_schema_rejects_what_the_loader_rejects(schema: dict, bad: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_shipped_schema_file_is_current() -> None:
    shipped = json.loads((REPO / "harness" / "data" / "scenario.schema.json").read_text())
    assert shipped == scenario_json_schema(), "regenerate: samedevice schema > harness/data/scenario.schema.json"
