"""Scenario files: valid ones load; every malformed kind gives one line naming file:line:col
and the field, and never stops the other files from loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.loader import load_file, load_paths
from tests.conftest import REPO, TINY_GREEDY

BAD_FILES = {
    # file content -> (line, column, text the single error line must contain)
    "unknown_key.yaml": ("name: x\ndescription: d\nprompt: hi\nmodle: {seed: 1}\n", 4, 1, "modle: unknown key 'modle' (did you mean 'model'?)"),
    "nested_unknown.yaml": ("name: x\ndescription: d\nprompt: hi\nmodel:\n  sed: 1\n", 5, 3, "model.sed: unknown key 'sed' (did you mean 'seed'?)"),
    "wrong_type.yaml": ("name: x\ndescription: d\nprompt: hi\nmodel:\n  seed: abc\n", 5, 9, "model.seed: Input should be a valid integer"),
    "bad_yaml.yaml": ("name: x\n  description: [\n", 2, 14, "invalid YAML"),
    "python_tag.yaml": ('name: !!python/object/apply:os.system ["echo hi"]\ndescription: d\nprompt: hi\n', 1, 7, "is not allowed: scenario files are plain YAML"),
    "empty.yaml": ("", 1, 1, "empty file"),
    "non_utf8.yaml": (b"name: \xff\xfe\n", 1, 1, "not UTF-8 text"),
    "binary.yaml": (b"\x00\x01\x02\x03", 1, 1, "binary content"),
    "bad_device.yaml": ("name: x\ndescription: d\nprompt: hi\ndevices: [cpu, cuda:x]\n", 4, 16, "devices[1]: must be one of cpu, cuda:N, auto, but got 'cuda:x'"),
    "negative.yaml": ("name: x\ndescription: d\nprompt: hi\nmax_new_tokens: -5\n", 4, 17, "max_new_tokens: Input should be greater than or equal to 1 (got -5)"),
    "absurd.yaml": ("name: x\ndescription: d\nprompt: hi\nmax_new_tokens: 100000000\n", 4, 17, "max_new_tokens: Input should be less than or equal to 4096"),
    "unknown_fault.yaml": ("name: x\ndescription: d\nprompt: hi\nfaults: [nope]\n", 4, 10, "faults[0]: Input should be"),
    "unknown_feature.yaml": ("name: x\ndescription: d\nprompt: hi\nfeatures:\n  speculative: {}\n", 5, 3, "features.speculative: unknown key 'speculative'"),
    "unknown_engine.yaml": ("name: x\ndescription: d\nprompt: hi\nengines: [referense]\n", 4, 11, "engines[0]: unknown engine 'referense' (did you mean 'reference'?)"),
    "missing_field.yaml": ("name: x\nprompt: hi\n", 1, 1, "description: required field is missing"),
    "two_prompts.yaml": ("name: x\ndescription: d\nprompt: hi\nprompts: [a]\n", 1, 1, "give exactly one of prompt or prompts"),
    "greedy_knob.yaml": ("name: x\ndescription: d\nprompt: hi\nsampling: {top_k: 5}\n", 4, 11, "sampling: top_k only applies with mode: sample"),
    "scalar.yaml": ("just a string\n", 1, 1, "expected a scenario mapping"),
    "multi_doc.yaml": ("name: a\ndescription: d\nprompt: hi\n---\nname: b\n", 5, 1, "several YAML documents"),
    "bomb.yaml": ("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                  "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
                  1, 1, "expands to more than"),
}


@pytest.mark.parametrize("filename", sorted(BAD_FILES))
def test_malformed_file_gives_one_line_with_location_and_field(tmp_path: Path, filename: str) -> None:
    content, line, column, expected = BAD_FILES[filename]
    path = tmp_path / filename
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = load_file(path)
    assert result.scenarios == [], "a malformed file must not yield scenarios"
    assert len(result.errors) == 1, f"expected one error line, got {[str(e) for e in result.errors]}"
    text = str(result.errors[0])
    assert "\n" not in text, "an error is one line"
    assert text.startswith(f"{path}:{line}:{column}: "), text
    assert expected in text


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * 2_000_000 + "\n")
    [error] = load_file(path).errors
    assert "limited to" in str(error)


def test_other_files_still_load_next_to_broken_ones(write_scenario) -> None:
    good = write_scenario("good.yaml", TINY_GREEDY)
    write_scenario("bad.yaml", "name: [\n")
    result = load_paths([good.parent])
    assert [s.scenario.name for s in result.scenarios] == ["tiny-greedy", "tiny-sampled"]
    assert len(result.errors) == 1 and "bad.yaml:" in str(result.errors[0])


def test_one_bad_item_in_a_list_keeps_the_good_ones(write_scenario) -> None:
    path = write_scenario("mixed.yaml", """\
        - name: good
          description: d
          prompt: hi
        - name: bad
          description: d
          prompt: hi
          max_new_tokens: zero
        """)
    result = load_file(path)
    assert [s.scenario.name for s in result.scenarios] == ["good"]
    assert str(result.errors[0]).startswith(f"{path}:7:19: [1].max_new_tokens:")


def test_duplicate_names_across_files_are_reported_with_both_places(write_scenario) -> None:
    first = write_scenario("a.yaml", "name: same\ndescription: d\nprompt: hi\n")
    write_scenario("b.yaml", "name: same\ndescription: d\nprompt: hi\n")
    result = load_paths([first.parent])
    assert len(result.scenarios) == 1
    assert f"first defined at {first}:1" in str(result.errors[0])


def test_scenario_line_is_kept_for_each_item(write_scenario) -> None:
    result = load_file(write_scenario("two.yaml", TINY_GREEDY))
    assert [s.line for s in result.scenarios] == [1, 6]


def test_every_bundled_scenario_is_valid() -> None:
    result = load_paths([REPO / "scenarios"])
    assert result.errors == []
    assert len(result.scenarios) >= 6
    for loaded in result.scenarios:
        assert loaded.scenario.description.strip(), f"{loaded.scenario.name} needs a description naming its bug class"
