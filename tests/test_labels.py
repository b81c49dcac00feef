"""Device labels and "did you mean": each parsed or computed in one place (harness.format)."""

from __future__ import annotations

import pytest

from harness.format.labels import MAX_GPUS, DeviceLabel
from harness.format.suggest import CUTOFF, closest, did_you_mean


@pytest.mark.parametrize(("text", "label"), [
    ("cpu", DeviceLabel("cpu")),
    ("auto", DeviceLabel("auto")),
    ("cuda:0", DeviceLabel("cuda", 0)),
    ("cuda:63", DeviceLabel("cuda", 63)),
    ("sim:cuda:1", DeviceLabel("cuda", 1, simulated=True)),
    ("sim:auto", DeviceLabel("auto", simulated=True)),
])
def test_a_label_parses_and_prints_back_the_same(text: str, label: DeviceLabel) -> None:
    assert DeviceLabel.parse(text) == label
    assert str(label) == text
    assert label.device == text.removeprefix("sim:")


@pytest.mark.parametrize(("text", "message"), [
    ("cuda:64", f"cuda:N takes N from 0 to {MAX_GPUS - 1} without leading zeros, but got 'cuda:64'"),
    ("cuda:01", "cuda:N takes N from 0 to 63 without leading zeros, but got 'cuda:01'"),
    ("sim:cuda:99", "cuda:N takes N from 0 to 63 without leading zeros, but got 'sim:cuda:99'"),
    ("gpu", "must be one of cpu, cuda:N, auto, sim:cuda:N, sim:auto, but got 'gpu'"),
    ("sim:cpu", "must be one of cpu, cuda:N, auto, sim:cuda:N, sim:auto, but got 'sim:cpu'"),
    ("cpu\n", "must be one of cpu, cuda:N, auto, sim:cuda:N, sim:auto, but got 'cpu\\n'"),
    (3, "must be one of cpu, cuda:N, auto, sim:cuda:N, sim:auto, but got 3"),
])
def test_a_wrong_label_is_one_line_naming_it(text: object, message: str) -> None:
    with pytest.raises(ValueError, match="but got") as caught:
        DeviceLabel.parse(text)
    assert str(caught.value) == message


def test_a_scenario_device_takes_no_sim_prefix() -> None:
    assert DeviceLabel.parse("cuda:2", simulated=False) == DeviceLabel("cuda", 2)
    with pytest.raises(ValueError, match=r"^must be one of cpu, cuda:N, auto, but got 'sim:auto'$"):
        DeviceLabel.parse("sim:auto", simulated=False)


def test_placement_and_gpus_needed_follow_the_kind() -> None:
    cpu, cuda3, auto = DeviceLabel.parse("cpu"), DeviceLabel.parse("sim:cuda:3"), DeviceLabel.parse("auto")
    assert (cpu.placement(4), cpu.gpus_needed(4)) == (("cpu",), 0)
    assert (cuda3.placement(4), cuda3.gpus_needed(4)) == (("cuda:3",), 4)
    assert (auto.placement(3), auto.gpus_needed(3)) == (("cuda:0", "cuda:1", "cuda:2"), 3)
    assert str(cuda3.with_simulated(False)) == "cuda:3"


@pytest.mark.parametrize(("word", "known", "hint"), [
    ("sed", ["seed", "size"], "seed"),  # every hint a test elsewhere asserts scores 0.8 or more
    ("simm", ["sim", "gpu", "all"], "sim"),
    ("cuda0", ["cpu", "cuda:0", "auto"], "cuda:0"),
    ("--timout", ["--timeout", "--engine"], "--timeout"),
    ("--bogus", ["--timeout", "--no-progress"], None),  # 0.5: no hint rather than a wrong one
    ("speculative", ["logit_bias", "kv_cache"], None),
    (7, ["seven"], None),  # a YAML key need not be a string
])
def test_closest_has_one_cutoff(word: object, known: list[str], hint: str | None) -> None:
    assert CUTOFF == 0.6
    assert closest(word, known) == hint


def test_did_you_mean_or_the_fallback() -> None:
    assert did_you_mean("refrence", ("reference", "transformers"), otherwise="x") == "did you mean 'reference'?"
    assert did_you_mean("zzz", ("reference", "transformers"), otherwise="known engines: x") == "known engines: x"
