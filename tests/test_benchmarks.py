"""The asv suite (harness/frontends/asv_suite.py, built by benchmarks/bench_scenarios.py): generated
from scenarios, skips, one run per case shared by every metric, machine metadata, and the
runner behind bench_compare."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import refs
from benchmarks.bench_scenarios import Scenarios
from harness.devices.ledger import Ledger
from harness.format.loader import load_paths
from harness.frontends import asv_suite as common
from harness.frontends.asv_suite import SkipNotImplemented
from harness.record.compare import compare_dirs
from harness.record.figures import CaseFigures

REPO = Path(__file__).resolve().parent.parent

BENCH_SCENARIOS = """\
- name: fast-bench
  description: marked for benchmarks
  devices: [cpu, cuda:0]
  prompt: "The cat"
  max_new_tokens: 5
  benchmark: true
- name: not-a-bench
  description: not marked
  devices: [cpu]
  prompt: "The dog"
  max_new_tokens: 3
"""


@pytest.fixture
def bench_dir(write_scenario, monkeypatch) -> Path:
    path = write_scenario("bench.yaml", BENCH_SCENARIOS)
    monkeypatch.setenv("SAMEDEVICE_BENCH_SCENARIOS", str(path.parent))
    return path.parent


def figures(**overrides) -> dict:
    base = {
        "decode_tokens_per_s": 2000.0, "decode_ms_per_token": 0.5, "prefill_s": 0.001,
        "per_token": {"h2d": 0.0, "d2h": 1.0, "d2d": 0.0, "sync": 0.0},
        "bytes_per_token": {"h2d": 0.0, "d2h": 8.0, "d2d": 0.0, "sync": 0.0},
        "prefill_counts": {"h2d": 1, "d2h": 1, "d2d": 0, "sync": 0},
        "peak_memory_bytes": None, "decode_tokens": 23, "runs": 10, "threads": 1, "nondeterministic_transfers": [],
    }
    return base | overrides


def test_params_come_from_the_scenarios_marked_benchmark(bench_dir):
    scenarios, engines, devices = common.benchmark_params()
    assert scenarios == ["fast-bench"], "only `benchmark: true` scenarios are benchmarked"
    assert engines == ["reference"]
    assert devices == ["cpu", "cuda:0", "sim:cuda:0"], "every GPU device also runs simulated, cpu first"


def test_the_asv_class_is_parameterised_over_the_bundled_benchmark_scenarios():
    marked = {s.scenario.name for s in load_paths([REPO / "scenarios"]).scenarios if s.scenario.benchmark}
    assert set(Scenarios.params[0]) == marked
    assert Scenarios.param_names == ["scenario", "engine", "device"]
    assert "cpu" in Scenarios.params[2]


def test_every_metric_reads_the_figures_measured_once():
    suite = Scenarios()
    cache = {"greedy[reference-sim:cuda:0]": figures()}
    suite.setup(cache, "greedy", "reference", "sim:cuda:0")
    params = ("greedy", "reference", "sim:cuda:0")
    assert suite.track_decode_tokens_per_s(cache, *params) == 2000.0
    assert suite.track_decode_ms_per_token(cache, *params) == 0.5
    assert suite.track_d2h_per_token(cache, *params) == 1.0
    assert suite.track_h2d_per_token(cache, *params) == 0.0
    assert suite.track_syncs_per_token(cache, *params) == 0.0
    assert suite.track_d2h_bytes_per_token(cache, *params) == 8.0
    assert suite.track_prefill_s(cache, *params) == 0.001
    units = {name: getattr(Scenarios, name).unit for name in dir(Scenarios) if name.startswith("track_")}
    assert units["track_decode_tokens_per_s"] == "tokens/s"
    assert units["track_d2h_per_token"] == "copies/token"
    assert len(units) == 11, units


def test_peak_memory_is_skipped_where_it_is_not_measured():
    suite = Scenarios()
    cache = {"greedy[reference-cpu]": figures()}
    suite.setup(cache, "greedy", "reference", "cpu")
    with pytest.raises(SkipNotImplemented):
        suite.track_peak_memory_bytes(cache, "greedy", "reference", "cpu")
    suite.figures = figures(peak_memory_bytes=1234)
    assert suite.track_peak_memory_bytes(cache, "greedy", "reference", "cpu") == 1234


def test_setup_skips_cases_that_cannot_run_here_and_fails_cases_that_broke():
    cache = {
        "greedy[reference-cuda:0]": {"skipped": "needs 1 CUDA device, 0 visible"},
        "greedy[reference-sim:auto]": {"error": "RuntimeError: Expected all tensors to be on the same device"},
    }
    suite = Scenarios()
    with pytest.raises(NotImplementedError, match="needs 1 CUDA device"):
        suite.setup(cache, "greedy", "reference", "cuda:0")
    with pytest.raises(NotImplementedError, match="has no case for engine reference on auto"):
        suite.setup(cache, "greedy", "reference", "auto")  # not in the scenario's devices
    with pytest.raises(RuntimeError, match="same device"):
        suite.setup(cache, "greedy", "reference", "sim:auto")


def pooled_runs(*runs: tuple[float, int]) -> CaseFigures:
    """Figures of runs given as (decode tokens/s, decode d2h copies over 10 steps)."""
    figures = CaseFigures("c", "s")
    for tps, d2h in runs:
        ledger = Ledger(decode_tokens=10)
        ledger.set_phase("decode")
        for _ in range(d2h):
            ledger.record("d2h", 8)
        figures.add("passed", ledger, {"decode_tokens_per_s": tps, "prefill_s": 0.001})
    return figures


def test_pooling_keeps_the_best_throughput_and_flags_counts_that_differ():
    merged = pooled_runs((1500.0, 10)).pooled(pooled_runs((2000.0, 20), (1800.0, 10))).to_bench(threads=1)
    assert merged["decode_tokens_per_s"] == 2000.0
    assert merged["per_token"]["d2h"] == 2.0, "the largest count is kept"
    assert merged["nondeterministic_transfers"] == ["d2h"]
    assert merged["runs"] == 3


def test_a_real_cpu_case_is_measured_with_repeats(bench_dir):
    case = next(c for c in common.benchmark_cases() if c.target.label == "cpu")
    result = common.measure_case(case, runs=3)
    assert "error" not in result, result
    assert result["runs"] == 3
    assert result["decode_tokens"] == 3, "5 tokens: a prefill, 4 decode forwards, 3 complete decode steps"
    assert result["decode_tokens_per_s"] > 0
    assert math.isclose(result["decode_ms_per_token"], 1000 / result["decode_tokens_per_s"])
    assert result["peak_memory_bytes"] is None, "no CUDA here"
    assert set(result["per_token"]) == {"h2d", "d2h", "d2d", "sync"}


def test_measure_all_runs_each_case_once_per_pass_and_never_runs_skipped_ones(bench_dir, monkeypatch):
    calls: list[str] = []

    def fake_measure(case, runs=None, torch_threads=None):
        calls.append(case.id)
        return pooled_runs(*[(2000.0, 10)] * 10)

    monkeypatch.setattr(common, "measure_runs", fake_measure)
    monkeypatch.setattr("harness.execute.cases.real_gpu_count", lambda: 0)
    result = common.measure_all(passes=2, runs=1)
    assert result["fast-bench[reference-cuda:0]"] == {"skipped": "needs 1 CUDA device, 0 visible"}
    assert calls.count("fast-bench[reference-cpu]") == 2
    assert "fast-bench[reference-cuda:0]" not in calls
    assert result["fast-bench[reference-cpu]"]["runs"] == 20


def test_the_bench_compare_runner_writes_run_directories_compare_accepts(bench_dir, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, SAMEDEVICE_BENCH_SCENARIOS=str(bench_dir))
    suite = refs.copy_suite(tmp_path)  # as bench_compare runs it: this checkout's suite, copied
    command = [sys.executable, str(suite), "run-cases", "--results-dir", str(out), "--repeats", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    cpu = [line for line in lines if line["id"] == "fast-bench[reference-cpu]"]
    assert len(cpu) == 2, "each case is repeated --repeats times"
    assert [line["status"] for line in lines if line["id"] == "fast-bench[reference-cuda:0]"] == ["skipped"]
    info = json.loads((out / "run.json").read_text())
    assert info["rounds"] == 1
    assert info["bench"]["torch"], "torch/CUDA/GPU facts are recorded with the run"
    assert info["code"]["harness"] == str(REPO), "the code measured is named"
    assert compare_dirs(out, out).ok


def test_an_older_checkout_on_pythonpath_does_not_borrow_modules_from_the_installed_one(tmp_path):
    checkout = tmp_path / "old"
    shutil.copytree(REPO / "harness", checkout / "harness", ignore=shutil.ignore_patterns("compare.py", "__pycache__"))
    suite = refs.copy_suite(tmp_path)
    probe = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(suite.parent)!r})
        import samedevice_suite
        import harness
        assert harness.__file__.startswith({str(checkout)!r}), harness.__file__
        try:
            import harness.record.compare
        except ModuleNotFoundError:
            print("isolated")
        else:
            print("borrowed", harness.record.compare.__file__)
    """)
    env = dict(os.environ, PYTHONPATH=str(checkout))
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "isolated", "a module missing from the old checkout must not come from the installed one"


def test_environment_metadata_lands_in_the_asv_machine_entry(tmp_path):
    machine_file = tmp_path / "asv-machine.json"
    machine_file.write_text(json.dumps({"version": 1, "box": {"machine": "box", "os": "Linux", "cpu": "x"}}))
    entry = common.record_asv_machine("box", machine_file)
    saved = json.loads(machine_file.read_text())["box"]
    assert saved == entry
    assert (saved["machine"], saved["os"]) == ("box", "Linux"), "asv's own fields are kept"
    for key in ("torch", "cuda", "cudnn", "gpus", "transformers", "torch_threads"):
        assert isinstance(saved[key], str), key
        assert saved[key], key
    with pytest.raises(SystemExit, match="asv machine --yes"):
        common.record_asv_machine("other", machine_file)


def test_asv_conf_points_at_this_suite_and_the_git_ignored_results():
    asv_config = pytest.importorskip("asv.config")
    conf = asv_config.Config.load(str(REPO / "asv.conf.json"))
    assert conf.environment_type == "existing"
    assert conf.benchmark_dir == "benchmarks"
    assert (conf.results_dir, conf.html_dir) == ("results/asv", "results/html")
    paths = ["results/asv/vm/machine.json", "results/html/index.html"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout.split() == paths, "asv output must be git-ignored"


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    """A benchmark script run the way README shows (`python benchmarks/NAME.py`), from a
    directory outside the checkout, on the tiny model, for a few tokens."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO.parent)


def test_the_throughput_script_prints_every_column_and_checks_the_ids():
    done = _script("reference_vs_transformers.py", "--sizes", "tiny", "--tokens", "4", "--repeats", "1",
                   "--no-compile")
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    [header] = [re.split(r"\s{2,}", line) for line in lines if line.startswith("size")]
    [cells] = [line.split() for line in lines if line.startswith("tiny")]
    assert len(cells) == len(header), (header, cells)
    row = dict(zip(header, cells, strict=True))
    assert row["hidden"] == "64" and float(row["transformers"]) > 0 and float(row["GB/s"]) > 0, row
    assert row["eager x"].endswith("x") and row["matmuls x"].endswith("x"), row
    assert row["compiled"] == row["compiled x"] == row["compile s"] == "-", row  # --no-compile
    if importlib.util.find_spec("llama_cpp") is None:
        assert "llama.cpp" not in row, row
    else:  # llama.cpp's column: its ids were checked equal to transformers' too
        assert float(row["llama.cpp"]) > 0 and row["llama.cpp x"].endswith("x"), row
    refused = _script("reference_vs_transformers.py", "--tokens", "1")
    assert refused.returncode == 2 and "--tokens must be at least 2, got 1" in refused.stderr


def test_the_profile_script_counts_ops_and_splits_a_tokens_time():
    done = _script("profile_reference_decode.py", "--size", "tiny", "--tokens", "4", "--top", "2")
    assert done.returncode == 0, done.stderr
    assert "aten ops dispatched per decode token" in done.stdout
    [split] = [line for line in done.stdout.splitlines() if line.startswith("where a decode token's time goes")]
    assert "weight matmuls alone" in split and "the other ops alone, caches hot" in split, split


ASV_OUTPUT = """\
[ 9.09%] ··· bench_scenarios.Scenarios.track_d2h_per_token                   ok
[ 9.09%] ··· ================= ============== ============ =====
                  scenario         engine        device
             ----------------- -------------- ------------ -----
               engines-greedy     llamacpp        cpu        n/a
               engines-greedy    reference        cpu       0.0
                   greedy        reference     sim:cuda:0   1.0
                   greedy        reference       cuda:0      n/a
             ================= ============== ============ =====

[ 9.09%] ···· For parameters: 'engines-greedy', 'llamacpp', 'cpu'
              asv: skipped: NotImplementedError('engine llamacpp unavailable: llama-cpp-python is not installed')

              For parameters: 'greedy', 'reference', 'cuda:0'
              asv: skipped: NotImplementedError('needs 1 CUDA device, 0 visible')

              For parameters: 'greedy', 'reference', 'sim:cuda:0'
              Traceback: RuntimeError: greedy[reference-sim:cuda:0] failed: boom

[18.18%] ··· bench_scenarios.Scenarios.track_peak_memory_bytes               ok
[18.18%] ··· ================= ============== ============ =====
                  scenario         engine        device
             ----------------- -------------- ------------ -----
                   greedy        reference        cpu        n/a
             ================= ============== ============ =====
"""


def test_the_asv_log_sums_up_skips_in_one_line_and_keeps_results_and_failures():
    log = refs.AsvLog()
    shown = [out for line in ASV_OUTPUT.splitlines() for out in log.feed(line)] + log.finish()
    text = "\n".join(shown)
    assert "n/a" not in text and "asv: skipped" not in text, text
    assert "engines-greedy    reference        cpu       0.0" in text, "a result row is kept"
    assert "greedy        reference     sim:cuda:0   1.0" in text
    assert "For parameters: 'greedy', 'reference', 'sim:cuda:0'" in text and "failed: boom" in text, \
        "a failure's output is kept"
    borders = [line for line in shown if line.rstrip().endswith("============ =====")]
    assert "track_peak_memory_bytes" in text and len(borders) == 2, "a table of n/a rows only is dropped"
    assert log.summary() == ("bench: 3 benchmark results skipped (n/a, not listed): 1 engine llamacpp unavailable: "
                             "llama-cpp-python is not installed; 1 needs 1 CUDA device, 0 visible; 1 with no reason "
                             "in asv's log (no scenario has that case: skip_params; or the metric is not measured there)")


def test_combinations_no_scenario_has_are_asv_skip_params():
    cases = {(s, e, d) for s in Scenarios.params[0] for e in Scenarios.params[1] for d in Scenarios.params[2]}
    real = {(c.scenario.name, c.engine, c.target.label) for c in common.benchmark_cases()}
    assert set(Scenarios.skip_params) == cases - real, "skipped silently: exactly the combinations with no case"
    assert ("greedy", "llamacpp", "cpu") in Scenarios.skip_params, "greedy runs the reference engine only"
    assert ("greedy", "reference", "cuda:0") not in Scenarios.skip_params, "a case that cannot run here stays a setup skip"


@pytest.mark.skipif(importlib.util.find_spec("asv") is None, reason="asv is not installed (pip install 'samedevice[bench]')")
def test_asv_machine_is_recorded_in_one_line_without_its_questions(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "refs.py"), "machine", "--machine", "box"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()], done.stdout
    assert done.stdout.startswith("bench: asv machine 'box' recorded in ~/.asv-machine.json: ")
    assert "torch " in done.stdout and "questions" not in done.stdout + done.stderr
    assert json.loads((tmp_path / ".asv-machine.json").read_text())["box"]["torch_threads"] == "1"


PRE_WINGS = "1f70e0a"  # the last commit before harness/ was grouped in wings


def test_the_copied_suite_measures_a_commit_from_before_the_wings(tmp_path):
    """refs.py measures older commits with this checkout's suite: module paths from before the
    move (harness.runner, harness.cases, ...) are found as well as the wings' ones."""
    archive = subprocess.run(["git", "archive", PRE_WINGS, "harness", "reference_impl", "scenarios"], cwd=REPO,
                             capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {PRE_WINGS} is not in this clone's history (a shallow clone)")
    checkout = tmp_path / "old"
    checkout.mkdir()
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
    (tmp_path / "bench.yaml").write_text(
        "- {name: old-bench, description: d, devices: [cpu], prompt: hi, max_new_tokens: 4, benchmark: true}\n")
    suite = refs.copy_suite(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(checkout), SAMEDEVICE_BENCH_REPEATS="1")
    done = subprocess.run([sys.executable, str(suite), "run-cases", "--results-dir", str(tmp_path / "res"),
                           "--scenarios", str(tmp_path / "bench.yaml")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    [case] = [json.loads(line) for line in (tmp_path / "res" / "cases.jsonl").read_text().splitlines()]
    assert case["id"] == "old-bench[reference-cpu]" and case["status"] == "passed", case
    assert json.loads((tmp_path / "res" / "run.json").read_text())["code"]["harness"] == str(checkout)
