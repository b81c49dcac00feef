"""The same code gives the same transfer counts in every run: two runs under different hash
seeds compare green. (accelerate's `dispatch_model` picks its main device from a set unless
`main_device` is given: without it, transformers on sim:auto made 9 D2D copies per token
under PYTHONHASHSEED=0 and 5 under 1, and `compare` cried regression on unchanged code.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCENARIO = """\
- name: hash-seeds
  description: engines whose copies per token once depended on PYTHONHASHSEED
  engines: [reference, transformers, outlines]
  devices: [auto]
  prompt: "A person as JSON: "
  max_new_tokens: 16
  features:
    json_schema:
      schema: {type: object, properties: {age: {type: integer, minimum: 0, maximum: 120}}, required: [age],
               additionalProperties: false}
"""


def _run(tmp_path: Path, seed: int) -> Path:
    root = tmp_path / f"seed{seed}"
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    done = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "run", str(tmp_path / "s.yaml"), "-d", "sim:auto",
                           "--results", str(root), "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = root.iterdir()
    return run_dir


def test_two_runs_under_different_hash_seeds_compare_green(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(SCENARIO)
    first, second = _run(tmp_path, 0), _run(tmp_path, 1)
    counts = [{c["id"]: c["ledger"]["counts"] for c in map(json.loads, (d / "cases.jsonl").read_text().splitlines())}
              for d in (first, second)]
    assert counts[0] == counts[1], "transfer counts depend on the hash seed"
    assert len(counts[0]) == 3
    done = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "compare", "--no-throughput", str(first), str(second)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
