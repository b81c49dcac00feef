"""`samedevice init asv`: samedevice's asv suite in another repository, pointing at its
scenarios and its engine plugin; asv discovers and runs it there and publishes the
dashboard (that part skipped where asv is not installed: the `bench` extra)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.frontends.asv_init import benchmark_module
from harness.frontends.cli import main

REPO = Path(__file__).resolve().parent.parent

SCENARIO = """\
- name: tiny-decode
  description: greedy decode with the repository's own engine, benchmarked
  engines: [tiny-greedy]
  devices: [cpu, cuda:0]
  prompt: "The cat"
  max_new_tokens: 6
  checks:
    transfers:
      decode: {h2d: 0, d2h: 1, d2d: 0, syncs: 0}
  benchmark: true
"""

# A user's engine, registered on import (loaded through $SAMEDEVICE_PLUGINS, no packaging):
# greedy decoding over a transformers model, one read-back of the chosen token per step.
PLUGIN = '''\
"""A tiny engine plugin."""

import torch

from harness.engines import Capabilities, Engine, Generation, register


@register
class TinyGreedy(Engine):
    name = "tiny-greedy"
    capabilities = Capabilities(features=frozenset(), devices=frozenset({"cpu", "cuda"}), runs_on_torch=True,
                                sampling=False)

    def load(self, request, placement):
        from transformers import AutoModelForCausalLM

        self.device = torch.device(placement.devices[0])
        self.model = AutoModelForCausalLM.from_pretrained(request.model_dir).eval().to(self.device)

    @torch.no_grad()
    def generate(self, request):
        spec, tokens = request.spec, []
        for prompt in spec.prompt_ids:
            request.on_phase("prefill")
            out = self.model(torch.tensor([prompt], device=self.device), use_cache=True)
            generated = []
            while True:
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                generated.append(int(token.cpu()[0, 0]))
                if generated[-1] == spec.stop_id or len(generated) >= spec.max_new_tokens:
                    break
                out = self.model(token, past_key_values=out.past_key_values, use_cache=True)
            tokens.append(generated)
        return Generation(tokens=tokens, texts=[request.decode(t) for t in tokens])
'''


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would point the suite elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SAMEDEVICE_BENCH_", "ASV_")) and k not in ("SAMEDEVICE_PLUGINS", "PYTHONPATH")}
    return env | extra


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=samedevice", "-c", "user.email=tests@samedevice", *args],
                   cwd=repo, check=True, capture_output=True, timeout=60)


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    """A fresh git repository with a benchmark scenario and an engine plugin, committed."""
    repo = tmp_path / "engine-repo"
    (repo / "bench").mkdir(parents=True)
    (repo / "bench" / "decode.yaml").write_text(SCENARIO)
    (repo / "my_engine.py").write_text(PLUGIN)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "an engine and its scenario")
    return repo


def _samedevice(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.frontends.cli", *args], cwd=cwd, env=env or _clean_env(),
                          capture_output=True, text=True, timeout=300)


def test_this_repositorys_benchmark_module_is_the_one_init_writes():
    assert (REPO / "benchmarks" / "bench_scenarios.py").read_text() == benchmark_module(), \
        "benchmarks/bench_scenarios.py must stay the generated few lines (one suite: harness/frontends/asv_suite.py)"


def test_init_asv_points_the_module_at_the_scenarios_and_the_plugin(user_repo):
    done = _samedevice("init", "asv", ".", "--scenarios", "bench", "--plugin", "my_engine", cwd=user_repo)
    assert done.returncode == 0, done.stderr
    assert "3 benchmark cases: scenarios tiny-decode; engines tiny-greedy; devices cpu, cuda:0, sim:cuda:0" in done.stdout
    module = (user_repo / "benchmarks" / "bench_samedevice.py").read_text()
    assert module == benchmark_module(["bench"], ["my_engine"])
    assert 'scenarios=["bench"]' in module
    assert 'plugins=["my_engine"]' in module
    assert (user_repo / "benchmarks" / "__init__.py").exists(), "asv imports the benchmark directory as a package"
    conf = json.loads("\n".join(line for line in (user_repo / "asv.conf.json").read_text().splitlines()
                                if not line.startswith("//")))
    assert conf["environment_type"] == "existing"
    assert conf["benchmark_dir"] == "benchmarks"
    assert conf["branches"] == ["main"], "the repository's branch"
    assert (conf["results_dir"], conf["html_dir"]) == (".asv/results", ".asv/html")
    status = subprocess.run(["git", "status", "--porcelain"], cwd=user_repo, capture_output=True, text=True).stdout
    assert ".asv" not in status, ".asv/ ignores itself: results are not sources"


def test_init_asv_refuses_to_replace_existing_files_without_force(user_repo):
    (user_repo / "asv.conf.json").write_text("{}  // the user's own\n")
    (user_repo / "benchmarks").mkdir()
    (user_repo / "benchmarks" / "__init__.py").write_text("# theirs\n")
    done = _samedevice("init", "asv", "--scenarios", "bench", cwd=user_repo)
    assert done.returncode == 2
    assert f"{user_repo / 'asv.conf.json'} exists; not replaced (--force replaces it)" in done.stderr
    assert (user_repo / "asv.conf.json").read_text() == "{}  // the user's own\n"
    assert not (user_repo / "benchmarks" / "bench_samedevice.py").exists(), "nothing is written when refused"

    forced = _samedevice("init", "asv", "--scenarios", "bench", "--plugin", "my_engine", "--force", cwd=user_repo)
    assert forced.returncode == 0, forced.stderr
    assert '"environment_type": "existing"' in (user_repo / "asv.conf.json").read_text()
    assert (user_repo / "benchmarks" / "__init__.py").read_text() == "# theirs\n", "a package init is kept"
    assert f"kept  {user_repo / 'benchmarks' / '__init__.py'}" in forced.stdout


def test_init_asv_needs_scenarios_and_warns_about_what_would_not_work(tmp_path, capsys):
    assert main(["init", "asv", str(tmp_path)]) == 2
    assert "no scenarios/ in" in capsys.readouterr().err
    assert main(["init", "asv", str(tmp_path), "--scenarios", str(tmp_path / "nowhere")]) == 2
    assert "no such scenario file or directory" in capsys.readouterr().err
    assert not (tmp_path / "asv.conf.json").exists()
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "plain.yaml").write_text(textwrap.dedent("""\
        - name: plain
          description: not marked for benchmarks
          devices: [cpu]
          prompt: "The cat"
          max_new_tokens: 3
        """))
    # In a process of its own: the survey imports the plugins, and the engine registry of
    # this one would remember the broken module for every later test.
    done = _samedevice("init", "asv", str(tmp_path), "--plugin", "no_such_engine_module_here", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "is marked `benchmark: true`" in done.stderr
    assert "plugin module 'no_such_engine_module_here' is not importable" in done.stderr
    assert "is not a git work tree" in done.stderr


def _asv(*args: str, repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "asv", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"asv {' '.join(args)}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.skipif(importlib.util.find_spec("asv") is None, reason="asv is not installed (pip install 'samedevice[bench]')")
def test_asv_discovers_runs_and_publishes_the_suite_in_a_fresh_repository(user_repo, tmp_path):
    done = _samedevice("init", "asv", "--scenarios", "bench", "--plugin", "my_engine", cwd=user_repo)
    assert done.returncode == 0, done.stderr
    models = os.environ.get("SAMEDEVICE_CACHE", str(Path.home() / ".cache" / "samedevice"))  # not under the new $HOME
    env = _clean_env(HOME=str(tmp_path / "home"), SAMEDEVICE_CACHE=models, SAMEDEVICE_BENCH_REPEATS="1",
                     SAMEDEVICE_BENCH_ROUNDS="1")
    (tmp_path / "home").mkdir()
    _asv("machine", "--yes", "--machine", "ci-box", repo=user_repo, env=env)  # into $HOME/.asv-machine.json
    run = _asv("run", "--quick", "--set-commit-hash", "HEAD", "--machine", "ci-box", "--show-stderr",
               repo=user_repo, env=env)
    assert "Running 11 total benchmarks (1 commits * 1 environments * 11 benchmarks)" in run.stdout, run.stdout[-3000:]
    discovered = json.loads((user_repo / ".asv" / "results" / "benchmarks.json").read_text())
    for metric in ("track_decode_tokens_per_s", "track_d2h_per_token", "track_h2d_per_token", "track_syncs_per_token"):
        assert discovered[f"bench_samedevice.Scenarios.{metric}"]["params"][2] == ["'cpu'", "'cuda:0'", "'sim:cuda:0'"]
    assert "needs 1 CUDA device, 0 visible" in run.stdout, "cuda:0 is an asv skip where no GPU is"

    results = [p for p in (user_repo / ".asv" / "results" / "ci-box").glob("*.json") if p.name != "machine.json"]
    assert len(results) == 1, results
    saved = json.loads(results[0].read_text())
    values = {name.rsplit(".", 1)[1]: entry[0] for name, entry in saved["results"].items()}
    cpu, cuda, sim = values["track_d2h_per_token"]
    assert (cpu, sim) == (0.0, 1.0), "the engine reads each token back once: one D2H per token on sim, none on cpu"
    assert cuda is None or math.isnan(cuda), "no GPU here: skipped"
    assert all(tps > 0 for tps in (values["track_decode_tokens_per_s"][0], values["track_decode_tokens_per_s"][2]))
    assert values["track_syncs_per_token"][2] == 0.0

    _asv("publish", repo=user_repo, env=env)
    html = user_repo / ".asv" / "html"
    index = json.loads((html / "index.json").read_text())
    shown = {name.rsplit(".", 1)[1]: bench.get("pretty_name") for name, bench in index["benchmarks"].items()}
    assert shown["track_decode_tokens_per_s"] == "decode tokens/s"
    for metric, pretty in (("track_h2d_per_token", "H2D copies per token"), ("track_d2h_per_token", "D2H copies per token"),
                           ("track_d2d_per_token", "D2D copies per token"), ("track_syncs_per_token", "host syncs per token")):
        assert shown[metric] == pretty, "the per-token transfer counts are on the dashboard beside throughput"
        assert list(html.glob(f"graphs/**/bench_samedevice.Scenarios.{metric}.json")), f"no graph for {metric}"
    assert list(html.glob("graphs/**/bench_samedevice.Scenarios.track_decode_tokens_per_s.json"))


def test_the_wheel_carries_every_harness_package():
    """Another repository installs samedevice from a wheel, not this checkout: the suite
    needs harness.devices (simulated GPUs) there too."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in REPO.glob("harness/**/__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
