from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread, as the case workers use: on 2 shared cores a second OpenMP thread
    spin-waiting for a busy core makes decode up to 40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def write_scenario(tmp_path: Path):
    """Write a YAML scenario file under tmp_path/scenarios and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / "scenarios" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write


TINY_GREEDY = """\
- name: tiny-greedy
  description: a tiny greedy case
  devices: [cpu]
  prompt: "The cat"
  max_new_tokens: 4
- name: tiny-sampled
  description: a tiny sampled case
  devices: [cpu]
  prompt: "Once upon"
  max_new_tokens: 4
  sampling: {mode: sample, temperature: 30.0, seed: 3}
"""
