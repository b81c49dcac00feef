"""Import paths from before harness/ was grouped in wings keep working: each old name is the
moved module itself, a plugin written against the old paths loads and runs, and the module
`samedevice init asv` wrote before the move still builds and runs its benchmarks."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import harness

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("old", "new"), sorted(harness.MOVED.items()))
def test_an_old_module_path_is_the_moved_module_itself(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


PLUGIN = '''\
"""An engine plugin written against the import paths of before the wings."""

from harness.engines import Capabilities, register
from harness.engines.reference import ReferenceEngine
from harness.ledger import Ledger
from harness.scenario import ModelSpec
from harness.spec import GenerationSpec
from harness.testing import assert_transfers

assert Ledger and ModelSpec and GenerationSpec and assert_transfers


@register
class OldPathsEngine(ReferenceEngine):
    name = "old-paths"
'''

SCENARIO = "- {name: old, description: d, engines: [old-paths], devices: [cpu, 'cuda:0'], prompt: hi, max_new_tokens: 3}\n"


def test_a_plugin_written_against_the_old_paths_loads_and_runs(tmp_path):
    (tmp_path / "old_paths_plugin.py").write_text(PLUGIN)
    (tmp_path / "s.yaml").write_text(SCENARIO)
    env = {**os.environ, "SAMEDEVICE_PLUGINS": "old_paths_plugin",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", "s.yaml", "-d", "cpu", "-d", "sim", "--results", "res", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    [run_dir] = (tmp_path / "res").iterdir()
    cases = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    assert [c["status"] for c in cases] == ["passed", "passed"], cases


# What `samedevice init asv` wrote before the move (harness/asv_init.py at 1f70e0a).
OLD_ASV_MODULE = '''\
import pathlib

from harness.asv_suite import scenario_benchmarks

Scenarios = scenario_benchmarks(
    root=pathlib.Path(__file__).resolve().parents[1],  # the paths below are relative to it
    scenarios=["scenarios/basic.yaml"],  # where the `benchmark: true` scenarios are
)
'''


def test_the_asv_module_init_asv_wrote_before_the_move_still_runs(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "bench_samedevice.py").write_text(OLD_ASV_MODULE)
    (tmp_path / "scenarios").symlink_to(REPO / "scenarios")
    script = textwrap.dedent('''
        import sys
        sys.path.insert(0, sys.argv[1])
        from bench_samedevice import Scenarios
        params = [values[0] for values in Scenarios.params]
        bench = Scenarios()
        figures = bench.setup_cache()
        bench.setup(figures, *params)
        print(params, bench.track_decode_tokens_per_s(figures, *params))
    ''')
    done = subprocess.run([sys.executable, "-c", script, str(bench)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "SAMEDEVICE_BENCH_REPEATS": "1", "SAMEDEVICE_BENCH_ROUNDS": "1"})
    assert done.returncode == 0, done.stderr
    rate = float(done.stdout.split()[-1])
    assert rate > 0, done.stdout
