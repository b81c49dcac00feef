"""Scenario files: valid ones load; every malformed kind gives one line naming file:line:col
and the field, and never stops the other files from loading."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.frontends.scenarios import load_file, load_paths
from tests.conftest import REPO, TINY_GREEDY

BAD_FILES = {
    # file content -> (line, column, text the single error line must contain)
    "unknown_key.yaml": ("name: x\ndescription: d\nprompt: hi\nmodle: {seed: 1}\n", 4, 1, "modle: unknown key 'modle' (did you mean 'model'?)"),
    "nested_unknown.yaml": ("name: x\ndescription: d\nprompt: hi\nmodel:\n  sed: 1\n", 5, 3, "model.sed: unknown key 'sed' (did you mean 'seed'?)"),
    "wrong_type.yaml": ("name: x\ndescription: d\nprompt: hi\nmodel:\n  seed: abc\n", 5, 9, "model.seed: expected a number, got the string 'abc'"),
    "bool_as_number.yaml": ("name: x\ndescription: d\nprompt: hi\nmax_new_tokens: true\n", 4, 17, "max_new_tokens: expected a number, got true (a boolean)"),
    "float_as_int.yaml": ("name: x\ndescription: d\nprompt: hi\nmax_new_tokens: 4.0\n", 4, 17, "max_new_tokens: expected a whole number, got 4.0"),
    "string_as_bool.yaml": ("name: x\ndescription: d\nprompt: hi\nengine_options: {reference: {compile: 'yes'}}\n", 4, 39,
                            "engine_options.reference.compile: expected true or false, got the string 'yes'"),
    "bad_yaml.yaml": ("name: x\n  description: [\n", 2, 14, "invalid YAML"),
    "python_tag.yaml": ('name: !!python/object/apply:os.system ["echo hi"]\ndescription: d\nprompt: hi\n', 1, 7, "is not allowed: scenario files are plain YAML"),
    "empty.yaml": ("", 1, 1, "empty file"),
    "non_utf8.yaml": (b"name: \xff\xfe\n", 1, 1, "not UTF-8 text"),
    "binary.yaml": (b"\x00\x01\x02\x03", 1, 1, "binary content"),
    "control_char.yaml": ('name: x\ndescription: d\nprompt: "a\x07b"\n', 3, 11, 'character U+0007 is not allowed (a raw control character: write it as the escape "\\x07"'),
    "escape_at_line_start.yaml": ("name: x\ndescription: d\n\x1bprompt: hi\n", 3, 1, "character U+001B is not allowed"),
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


# --- Issue 11: the loader's own limits, and rules the format checks at load time ----------
# Every row: a bad file, written next to a good one. The bad file gives exactly this one line
# (after its path) and the good file still loads.

S = "name: x\ndescription: d\nprompt: hi\n"  # lines 1-3 of most bad files below
DEEP = "[" * 500 + "]" * 500
BIG_MODEL = "model: {hidden_size: 8192, num_layers: 64, intermediate_size: 32768, num_heads: 128, num_kv_heads: 128, max_seq_len: 8192}\n"

RULES = {
    # the loader
    "nesting": (S + f"tags: {DEEP}\n",
                f":4:57: {('tags' + '[0]' * 50)[:77]}...: nested more than 50 levels deep; scenario files are limited to 50"),
    "nesting_through_aliases": ("- &a [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n- &b [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
                                ":1:1: nested more than 50 levels deep once YAML aliases are expanded; scenario files are limited to 50"),
    "recursive_alias": (S + "tags: &t [a, *t]\n", ":4:7: recursive YAML alias (an anchor used inside itself); refusing to load"),
    "duplicate_key": (S + "name: y\n", ":4:1: name: duplicate key (first at line 1); YAML would keep only the last"),
    "duplicate_nested_key": (S + "model:\n  seed: 1\n  dtype: float32\n  seed: 2\n",
                             ":7:3: model.seed: duplicate key (first at line 5); YAML would keep only the last"),
    "duplicate_equal_ints": (S + "features: {logit_bias: {ids: {1: 5.0, 0x1: 6.0}}}\n",
                             ":4:39: features.logit_bias.ids.0x1: duplicate key (first at line 4); YAML would keep only the last"),
    "surrogate_key": (S + '"\\udc80": 1\n', ":4:1: \\udc80: lone surrogate '\\udc80' in a string: not valid Unicode text"),
    "surrogate_nested_key": (S + 'features: {logit_bias: {text: {"a\\ud800": 1.0}}}\n',
                             ":4:32: features.logit_bias.text.a\\ud800: lone surrogate '\\ud800' in a string: not valid Unicode text"),
    "surrogate_prompt": ('name: x\ndescription: d\nprompt: "hi \\udfff"\n', ":3:9: prompt: lone surrogate '\\udfff' in a string: not valid Unicode text"),
    # sequence length
    "max_new_tokens_past_context": (S + "max_new_tokens: 600\n",
                                    ":4:17: max_new_tokens: the prompt (2 tokens) plus max_new_tokens 600 exceeds model.max_seq_len 512"),
    "prompt_past_context": ('name: x\ndescription: d\nprompt: "' + "x" * 600 + '"\n',
                            ":3:9: prompt: the prompt (600 tokens) plus max_new_tokens 16 exceeds model.max_seq_len 512"),
    "one_of_prompts_past_context": ('name: x\ndescription: d\nprompts: [hi, "' + "x" * 20 + '"]\nmodel: {max_seq_len: 24}\n',
                                    ":3:15: prompts[1]: the prompt (20 tokens) plus max_new_tokens 16 exceeds model.max_seq_len 24"),
    # prompts
    "empty_prompt": ("name: x\ndescription: d\nprompt: ''\n", ":3:9: prompt: String should have at least 1 character (got '')"),
    "empty_entry_in_prompts": ("name: x\ndescription: d\nprompts: [hello, '']\n",
                               ":3:18: prompts[1]: String should have at least 1 character (got '')"),
    # logit bias
    "bias_id_negative": (S + "features: {logit_bias: {ids: {-1: 100.0}}}\n",
                         ":4:31: features.logit_bias.ids.-1: token id -1 is negative; ids count from 0"),
    "bias_id_past_vocabulary": (S + "features: {logit_bias: {ids: {512: -100.0}}}\n",
                                ":4:31: features.logit_bias.ids.512: token id 512 is outside the vocabulary (0 to 511)"),
    "bias_empty_text": (S + "features: {logit_bias: {text: {'': -100.0}}}\n",
                        ":4:32: features.logit_bias.text.'': String should have at least 1 character (got '')"),
    # finite floats
    "bias_nan": (S + "features: {logit_bias: {ids: {5: .nan}}}\n",
                 ":4:34: features.logit_bias.ids.5: Input should be a finite number (got nan)"),
    "bias_text_inf": (S + "features: {logit_bias: {text: {' the': -.inf}}}\n",
                      ":4:40: features.logit_bias.text. the: Input should be a finite number (got -inf)"),
    "lm_head_scale_inf": (S + "model: {lm_head_scale: .inf}\n", ":4:24: model.lm_head_scale: Input should be a finite number (got inf)"),
    "temperature_nan": (S + "sampling: {mode: sample, temperature: .nan}\n",
                        ":4:39: sampling.temperature: Input should be a finite number (got nan)"),
    "length_penalty_inf": (S + "features: {beam_search: {length_penalty: .inf}}\n",
                           ":4:42: features.beam_search.length_penalty: Input should be a finite number (got inf)"),
    "atol_nan": (S + "checks: {parity: {atol: .nan}}\n", ":4:25: checks.parity.atol: Input should be a finite number (got nan)"),
    "budget_inf": (S + "checks: {transfers: {decode: {h2d: .inf}}}\n",
                   ":4:36: checks.transfers.decode.h2d: Input should be a finite number (got inf)"),
    "timeout_inf": (S + "timeout: .inf\n", ":4:10: timeout: Input should be a finite number (got inf)"),
    "schema_nan": (S + "features: {json_schema: {schema: {type: number, maximum: .nan}}}\n",
                   ":4:58: features.json_schema.schema.maximum: nan is not a JSON number (JSON has no NaN or infinity)"),
    # seeds
    "model_seed_past_64_bits": (S + "model: {seed: 18446744073709551616}\n",
                                ":4:15: model.seed: Input should be less than or equal to 18446744073709551615 (got 18446744073709551616)"),
    "sampling_seed_past_64_bits": (S + "sampling: {mode: sample, seed: 18446744073709551616}\n",
                                   ":4:32: sampling.seed: Input should be less than or equal to 18446744073709551615 (got 18446744073709551616)"),
    "top_k_past_vocabulary": (S + "sampling: {mode: sample, top_k: 513}\n",
                              ":4:33: sampling.top_k: top_k 513 exceeds the vocabulary (512 tokens)"),
    # model dimensions
    "heads_do_not_divide_hidden": (S + "model: {hidden_size: 100, num_heads: 3}\n",
                                   ":4:38: model.num_heads: hidden_size 100 is not divisible by num_heads 3"),
    "hidden_does_not_fit_preset_heads": (S + "model: {hidden_size: 66}\n",
                                         ":4:22: model.hidden_size: hidden_size 66 is not divisible by num_heads 4 (size tiny)"),
    "odd_head_dim": (S + "model: {hidden_size: 12}\n",
                     ":4:22: model.hidden_size: head dimension 3 (hidden_size / num_heads) must be even: rotary embeddings rotate pairs of dimensions"),
    "kv_heads_do_not_divide_heads": (S + "model: {num_heads: 4, num_kv_heads: 3}\n",
                                     ":4:37: model.num_kv_heads: num_heads 4 is not divisible by num_kv_heads 3"),
    "experts_per_token_past_experts": (S + "model: {family: mixtral, experts_per_token: 8}\n",
                                       ":4:45: model.experts_per_token: experts_per_token 8 exceeds num_experts 4 (mixtral default)"),
    "lm_head_scale_absurd": (S + "model: {lm_head_scale: 1.0e+30}\n",
                             ":4:24: model.lm_head_scale: Input should be less than or equal to 1000 (got 1e+30)"),
    # beams
    "num_return_past_num_beams": (S + "features: {beam_search: {num_beams: 2, num_return: 3}}\n",
                                  ":4:52: features.beam_search.num_return: num_return 3 exceeds num_beams 2"),
    # GPU counts
    "auto_on_one_gpu": (S + "devices: [{device: auto, gpus: 1}]\n",
                        ":4:32: devices[0].gpus: Input should be greater than or equal to 2 (got 1)"),
    "auto_on_too_many_gpus": (S + "devices: [{device: auto, gpus: 65}]\n",
                              ":4:32: devices[0].gpus: Input should be less than or equal to 64 (got 65)"),
    "auto_over_more_gpus_than_layers": (S + "devices: [cpu, {device: auto, gpus: 9}]\n",
                                        ":4:37: devices[1].gpus: auto over 9 GPUs needs at least one layer per GPU, but "
                                        "the model has 2 layers: at most gpus: 2"),
    "auto_by_default_over_more_gpus_than_layers": (S + "model: {num_layers: 1}\ndevices: [auto]\n",
                                                   ":5:11: devices[0]: auto over 2 GPUs (the default) needs at least one "
                                                   "layer per GPU, but the model has 1 layer: at most gpus: 1"),
    "gpus_on_a_cuda_device": (S + "devices: [{device: 'cuda:0', gpus: 4}]\n",
                              ":4:36: devices[0].gpus: gpus only applies to device: auto, not cuda:0"),
    "cuda_index_past_max": (S + "devices: [cpu, 'cuda:64']\n",
                            ":4:16: devices[1]: cuda:N takes N from 0 to 63 without leading zeros, but got 'cuda:64'"),
    "cuda_index_leading_zero": (S + "devices: ['cuda:01']\n",
                                ":4:11: devices[0]: cuda:N takes N from 0 to 63 without leading zeros, but got 'cuda:01'"),
    "device_listed_twice": (S + "devices: [cpu, 'cuda:0', cpu]\n", ":4:26: devices[2]: device cpu is listed twice"),
    # JSON schemas
    "schema_against_meta_schema": (S + "features: {json_schema: {schema: {type: 12}}}\n",
                                   ":4:41: features.json_schema.schema.type: not a valid JSON Schema: 12 is not valid under any of the given schemas"),
    "schema_pattern_python_cannot_compile": (
        S + "features: {json_schema: {schema: {type: object, properties: {a: {type: string, pattern: '(?<n>x)'}}}}}\n",
        ":4:89: features.json_schema.schema.properties.a.pattern: not a valid JSON Schema: not a regular expression "
        "Python's re compiles: unknown extension ?<n at position 1 (got '(?<n>x)')"),
    "schema_pattern_properties": (
        S + "features: {json_schema: {schema: {type: object, patternProperties: {'[': {type: string}}}}}\n",
        ":4:69: features.json_schema.schema.patternProperties.[: not a valid JSON Schema: not a regular expression "
        "Python's re compiles: unterminated character set at position 0 (got '[')"),
    "schema_unknown_meta_schema": (S + "features: {json_schema: {schema: {$schema: 'https://example.com/s', type: string}}}\n",
                                   ":4:44: features.json_schema.schema.$schema: unknown meta-schema 'https://example.com/s'"),
    "schema_yaml_date": (S + "features: {json_schema: {schema: {const: 2024-01-01}}}\n",
                         ":4:42: features.json_schema.schema.const: a YAML date is not a JSON value (quote it to make a string)"),
    "schema_int_key": (S + "features: {json_schema: {schema: {type: object, properties: {1: {type: string}}}}}\n",
                       ":4:62: features.json_schema.schema.properties.1: key 1 is not a string: JSON object keys are strings"),
    # engines (checked without importing them)
    "unknown_engine_hint": (S + "engines: [reference, transformer]\n",
                            ":4:22: engines[1]: unknown engine 'transformer' (did you mean 'transformers'?)"),
}

GOOD = "name: good\ndescription: d\nprompt: hi\ndevices: [cpu]\n"


@pytest.mark.parametrize("kind", sorted(RULES))
def test_each_rule_gives_its_exact_line_and_the_other_file_loads(tmp_path: Path, kind: str) -> None:
    content, expected = RULES[kind]
    (tmp_path / "good.yaml").write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    result = load_paths([tmp_path])
    assert [s.scenario.name for s in result.scenarios] == ["good"]
    assert [str(e) for e in result.errors] == [f"{bad}{expected}"]


def test_an_item_with_a_problem_keeps_the_other_items_of_its_list(write_scenario) -> None:
    path = write_scenario("mixed.yaml", """\
        - name: first
          description: d
          prompt: hi
          description: again
        - name: second
          description: d
          prompt: hi
        """)
    result = load_file(path)
    assert [s.scenario.name for s in result.scenarios] == ["second"]
    assert [str(e) for e in result.errors] == [
        f"{path}:4:3: [0].description: duplicate key (first at line 2); YAML would keep only the last"]


def test_recursion_past_the_cap_is_still_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the depth cap PyYAML's composer recurses until RecursionError: still a line."""
    import harness.format.loader

    monkeypatch.setattr(harness.format.loader, "MAX_DEPTH", 10**6)
    path = tmp_path / "deep.yaml"
    path.write_text(S + "tags: " + "[" * 5000 + "]" * 5000 + "\n")
    assert [str(e) for e in load_file(path).errors] == [f"{path}:1:1: nested too deeply to read (at most 1000000 levels)"]


def test_an_unexpected_failure_is_one_line_and_the_rest_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inject a bug into the loader for one item, then for a whole file: one line each."""
    import harness.format.loader

    real_problems, real_read = harness.format.loader._node_problems, harness.format.loader._read

    def broken_problems(display: str, item, prefix: str):
        if prefix == "[1].":
            raise RuntimeError("an injected bug")
        return real_problems(display, item, prefix)

    def broken_read(path: Path, display: str):
        if path.name == "unreadable.yaml":
            raise RuntimeError("another injected bug")
        return real_read(path, display)

    monkeypatch.setattr(harness.format.loader, "_node_problems", broken_problems)
    monkeypatch.setattr(harness.format.loader, "_read", broken_read)
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "list.yaml").write_text("- " + GOOD.replace("\n", "\n  ").replace("good", "first").rstrip()
                                        + "\n- " + GOOD.replace("\n", "\n  ").replace("good", "second").rstrip() + "\n")
    (tmp_path / "unreadable.yaml").write_text(GOOD)
    result = load_paths([tmp_path])
    assert [s.scenario.name for s in result.scenarios] == ["good", "first"]
    assert [str(e) for e in result.errors] == [
        f"{tmp_path / 'list.yaml'}:5:3: [1]: could not be loaded (RuntimeError: an injected bug)",
        f"{tmp_path / 'unreadable.yaml'}: could not be loaded (RuntimeError: another injected bug)",
    ]


def test_a_plain_file_of_5000_scenarios_loads(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text("".join(f"- name: s{i}\n  description: d\n  prompt: hi\n  devices: [cpu]\n  tags: [a, b, c]\n"
                            for i in range(5000)))
    result = load_file(path)
    assert result.errors == []
    assert len(result.scenarios) == 5000


def test_an_alias_bomb_of_a_billion_nodes_is_refused_without_expanding_it(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10**10 nodes expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert [str(e) for e in load_file(path).errors] == [
        f"{path}:1:1: document expands to more than 50000 extra nodes through YAML aliases; refusing to load"]


def test_aliases_that_add_little_are_fine(write_scenario) -> None:
    path = write_scenario("aliases.yaml", """\
        - name: a
          description: d
          prompt: hi
          features: {json_schema: {schema: &s {type: object, properties: {n: {type: string}}}}}
        - name: b
          description: d
          prompt: hi
          features: {json_schema: {schema: *s}}
        """)
    result = load_file(path)
    assert result.errors == [] and [s.scenario.name for s in result.scenarios] == ["a", "b"]


def _unreadable_entries(directory: Path) -> dict[str, str]:
    """Entry name -> the message its error must carry."""
    directory.mkdir()
    (directory / "good.yaml").write_text(GOOD)
    (directory / "dangling.yaml").symlink_to(directory / "gone.yaml")
    (directory / "loop.yaml").symlink_to(directory / "loop.yaml")
    (directory / "folder.yaml").mkdir()
    os.mkfifo(directory / "fifo.yaml")
    (directory / "locked.yaml").write_text(GOOD)
    return {
        "dangling.yaml": f"cannot read: dangling symlink (its target {str(directory / 'gone.yaml')!r} does not exist)",
        "fifo.yaml": "not a regular file (a FIFO, socket or device): not a scenario file",
        "folder.yaml": "is a directory, not a scenario file",
        "locked.yaml": "cannot read: Permission denied",
        "loop.yaml": "cannot read: symlink loop (the link leads back to itself)",
    }


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs and symlinks")
def test_every_scenario_looking_entry_that_cannot_be_read_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "scenarios"
    expected = _unreadable_entries(directory)
    real_open = os.open

    def denying_open(path, flags, *args):  # chmod 000 does not stop root: deny it here
        if str(path).endswith("locked.yaml"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", denying_open)
    result = load_paths([directory])
    assert [s.scenario.name for s in result.scenarios] == ["good"]
    assert sorted(str(e) for e in result.errors) == sorted(f"{directory / name}: {message}" for name, message in expected.items())


def test_a_directory_that_cannot_be_listed_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "private").mkdir()
    real_scandir = os.scandir

    def denying_scandir(path="."):
        if str(path).endswith("private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denying_scandir)
    result = load_paths([tmp_path])
    assert [s.scenario.name for s in result.scenarios] == ["good"]
    assert [str(e) for e in result.errors] == [f"{tmp_path / 'private'}: cannot list directory: Permission denied"]


def test_the_memory_estimate_refuses_a_model_this_machine_cannot_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.models import model_dims

    monkeypatch.setattr(model_dims, "host_memory_bytes", lambda: 16 * 10**9)
    (tmp_path / "good.yaml").write_text(GOOD)
    weights = tmp_path / "weights.yaml"
    weights.write_text(S + BIG_MODEL)
    # Weights that fit (2.2 GB), a KV cache that does not: 16 beams of 8192 positions.
    cache = tmp_path / "cache.yaml"
    cache.write_text(S + "model: {hidden_size: 8192, num_layers: 2, num_heads: 64, num_kv_heads: 64, intermediate_size: 8, max_seq_len: 8192}\n"
                     "features: {beam_search: {num_beams: 16}}\n")
    result = load_paths([tmp_path])
    assert [s.scenario.name for s in result.scenarios] == ["good"]
    assert [str(e) for e in result.errors] == [
        f"{cache}:4:8: model: needs about 19.4 GB of memory (float32 weights 2.2 GB + KV cache 17.2 GB for 16 beams), "
        "more than half of this machine's 16.0 GB",
        f"{weights}:4:8: model: needs about 309.3 GB of memory (float32 weights 274.9 GB + KV cache 34.4 GB), "
        "more than half of this machine's 16.0 GB",
    ]


def test_host_memory_is_read_from_the_platform_with_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.models import model_dims

    model_dims.host_memory_bytes.cache_clear()
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}[name])
    assert model_dims.host_memory_bytes() == 4_096_000
    model_dims.host_memory_bytes.cache_clear()

    def unsupported(name):
        raise ValueError(f"unrecognized configuration name {name}")

    monkeypatch.setattr(os, "sysconf", unsupported)
    assert model_dims.host_memory_bytes() == model_dims.FALLBACK_MEMORY_BYTES
    model_dims.host_memory_bytes.cache_clear()


def test_the_parameter_estimate_counts_what_the_factory_builds() -> None:
    from harness.format.scenario import ModelSpec
    from harness.models import model_dims, tinymodel

    assert tinymodel.resolve_dims is model_dims.resolve_dims, "one resolution of the dims, shared"
    for spec in (ModelSpec(), ModelSpec(size="bench", num_kv_heads=2), ModelSpec(family="mixtral", num_layers=3)):
        shapes = tinymodel._shapes(spec, spec.dims)
        assert model_dims.parameter_count(spec.family, spec.dims) == sum(math.prod(s) for s in shapes.values())


def test_the_largest_seed_builds_a_model() -> None:
    from harness.format.scenario import MAX_SEED, ModelSpec
    from harness.models import tinymodel

    spec = ModelSpec(seed=MAX_SEED)
    weights = tinymodel._weights(spec, spec.dims)
    assert weights["lm_head.weight"].isfinite().all()


def test_the_byte_bound_on_prompt_tokens_holds() -> None:
    """The format counts a prompt as at most one token per UTF-8 byte (byte-level BPE)."""
    from harness.models.tokenizer import count_tokens

    texts = ["hi", "The quick brown fox", "<s></s><unk>", "ünïcødé ✓ 日本語 🙂🙂", "\n\t  x", "{\"a\": 1}" * 20, "é" * 50]
    for text in texts:
        assert 0 < count_tokens(text) <= len(text.encode()), text


def test_a_prompt_that_exactly_fills_the_context_runs(write_scenario) -> None:
    """The boundary the format allows is one the reference really generates to."""
    from harness.execute.case import OracleCache, RunOptions, run_case
    from harness.execute.cases import expand
    from harness.models.tokenizer import count_tokens

    prompt = "The cat sat on the mat."
    budget = 32 - count_tokens(prompt)
    path = write_scenario("edge.yaml", f"name: edge\ndescription: d\nprompt: {prompt}\ndevices: [cpu]\n"
                                       f"max_new_tokens: {budget}\nstop_at_eos: false\nmodel: {{max_seq_len: 32}}\n")
    [loaded] = load_file(path).scenarios
    [case] = expand(loaded)
    result = run_case(case, RunOptions(), OracleCache())
    assert result.status == "passed", result.summary_line()
    assert len(result.tokens[0]) == budget
    over = write_scenario("over.yaml", path.read_text().replace(f"max_new_tokens: {budget}", f"max_new_tokens: {budget + 1}"))
    assert "exceeds model.max_seq_len 32" in str(load_file(over).errors[0])


def test_every_float_field_of_the_format_is_finite() -> None:
    """allow_inf_nan=False on every model: also the ones added later, if they derive from _Strict."""
    from pydantic import BaseModel

    from harness.engines import options
    from harness.format import base, scenario

    models = [m for module in (scenario, base, options) for m in vars(module).values()
              if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel]
    assert len(models) > 10 and options.PeftAdapter in models
    for model in models:
        assert model.model_config.get("allow_inf_nan") is False, f"{model.__name__} accepts NaN and infinity"


# What the format may import of harness.engines: the engines' option models (pydantic only)
# and so the package itself, whose registry imports plugins only when asked for names.
OPTION_MODELS = ("harness.engines", "harness.engines.options")


def test_loading_scenarios_imports_neither_torch_nor_an_engine(tmp_path: Path) -> None:
    (tmp_path / "typo.yaml").write_text(S + "engines: [referense]\n")
    code = (
        "import sys; from pathlib import Path; from harness.frontends.scenarios import load_paths\n"
        f"bundled = load_paths([Path({str(REPO / 'scenarios')!r})])\n"
        f"typo = load_paths([Path({str(tmp_path)!r})])\n"
        "print(len(bundled.scenarios), len(bundled.errors))\n"
        "print([str(e) for e in typo.errors])\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'harness.engines.', 'transformers'))"
        f" and m not in {OPTION_MODELS!r}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SAMEDEVICE_PLUGINS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    counts, errors, imported = out.stdout.splitlines()
    assert int(counts.split()[0]) >= 6 and counts.split()[1] == "0", counts
    assert errors == repr([f"{tmp_path / 'typo.yaml'}:4:11: engines[0]: unknown engine 'referense' (did you mean 'reference'?)"])
    assert imported == "[]", f"the format layer imported {imported}"


def test_reading_a_file_runs_no_plugin_and_the_caller_names_the_engines(tmp_path: Path) -> None:
    """The loader imports no plugin, engine or model-source code: engine names come from its
    caller, and with them an unknown one reads as before (naming the plugin that failed)."""
    (tmp_path / "loud_plugin.py").write_text("print('PLUGIN IMPORTED')\nraise RuntimeError('boom')\n")
    (tmp_path / "typo.yaml").write_text(S + "engines: [referense]\n")
    code = (
        "import sys; from pathlib import Path; from harness.format.loader import load_file\n"
        f"path = Path({str(tmp_path / 'typo.yaml')!r})\n"
        "plain = load_file(path)\n"
        "print(len(plain.scenarios), plain.errors)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('harness.engines', 'harness.models.sources', "
        f"'harness.models.checks', 'loud_plugin')) and m not in {OPTION_MODELS!r}))\n"
        "from harness.engines import known_engines\n"
        "print([str(e) for e in load_file(path, known_engines()).errors])\n"
    )
    env = dict(os.environ, SAMEDEVICE_PLUGINS="loud_plugin", PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    plain, imported, named, *rest = out.stdout.splitlines()
    assert plain == "1 []", "without names from the caller, `engines:` is not checked"
    assert imported == "[]", f"reading a scenario file imported {imported}"
    assert named == "PLUGIN IMPORTED" and len(rest) == 1, "the plugin is imported once, by the registry"
    assert rest[0] == repr([f"{tmp_path / 'typo.yaml'}:4:11: engines[0]: unknown engine 'referense' (did you mean "
                            "'reference'?; plugins that failed to load: loud_plugin (RuntimeError: boom))"])


def test_the_static_builtin_names_are_the_ones_the_adapters_register() -> None:
    from harness.engines import BUILTIN_ENGINES, all_engines

    builtin = {name for name, cls in all_engines().items() if cls.__module__.startswith("harness.engines.")}
    assert builtin == set(BUILTIN_ENGINES)


def test_entry_point_engines_are_known_without_loading_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.engines as engines

    class NeverLoaded:
        name = "someones-engine"

        def load(self):
            raise AssertionError("engine_names() must not load an entry point")

    monkeypatch.setattr(engines, "entry_points", lambda group: [NeverLoaded()])
    engines._entry_point_names.cache_clear()
    try:
        assert "someones-engine" in engines.engine_names()
        assert "reference" in engines.engine_names()
    finally:
        engines._entry_point_names.cache_clear()


def test_plugin_modules_from_the_environment_name_their_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.engines as engines

    monkeypatch.setenv("SAMEDEVICE_PLUGINS", "tests.plugins.faulty_engines, no_such_plugin_module")
    assert {"test-abort", "test-hang", "test-raise"} <= set(engines.engine_names())
    assert "no_such_plugin_module" in engines.broken_plugins()
    (tmp_path / "s.yaml").write_text(S + "engines: [test-abort]\n")
    assert load_paths([tmp_path]).errors == []


def test_a_plugin_cannot_take_a_builtin_name() -> None:
    from harness.engines import register

    class Impostor:
        name = "reference"
        __module__ = "someones_plugin"

    with pytest.raises(ValueError, match=r"engine name .reference. is already registered by a built-in engine"):
        register(Impostor)  # type: ignore[arg-type]


def test_list_shows_an_invalid_scenario_as_invalid_never_runs(tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "good.yaml").write_text(GOOD)
    (scenarios / "bad.yaml").write_text(S.replace("name: x", "name: biased") + "features: {logit_bias: {ids: {-1: 100.0}}}\n")
    out = subprocess.run([sys.executable, "-m", "harness.frontends.cli", "list", "scenarios"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        "biased\tinvalid: scenarios/bad.yaml:4:31: features.logit_bias.ids.-1: token id -1 is negative; ids count from 0",
        "good[reference-cpu]\truns",
    ]


def test_pytest_collection_survives_a_file_that_breaks_pyyaml(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject='[tool.pytest.ini_options]\nsamedevice_paths = ["scenarios"]\n')
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "good.yaml").write_text(GOOD)
    (pytester.path / "scenarios" / "deep.yaml").write_text(S + f"tags: {DEEP}\n")
    result = pytester.runpytest_subprocess("scenarios", "-p", "no:cacheprovider", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert [line for line in result.outlines if "::" in line] == [
        "scenarios/deep.yaml::invalid[4:57]", "scenarios/good.yaml::good[reference-cpu]"]


def test_without_jsonschema_patterns_are_still_compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import jsonschema -> ImportError
    content, _ = RULES["schema_pattern_python_cannot_compile"]
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert [str(e) for e in load_file(path).errors] == [
        f"{path}:4:89: features.json_schema.schema.properties.a.pattern: not a valid JSON Schema: not a regular "
        "expression Python's re compiles: unknown extension ?<n at position 1"]
    path.write_text(RULES["schema_pattern_properties"][0])
    assert [str(e) for e in load_file(path).errors] == [
        f"{path}:4:69: features.json_schema.schema.patternProperties.[: not a valid JSON Schema: not a regular "
        "expression Python's re compiles: unterminated character set at position 0"]


@pytest.mark.parametrize(("schema", "expected"), [
    ("{$ref: 'http://example.com/x.json'}", "is not present in a registry"),
    ("{type: integer, minimum: 5, maximum: 1}", "Unsatisfiable schema: minimum (5) is greater than maximum (1)"),
    ("{type: string, pattern: '(?P<x>a)(?P=x)'}", "regex parse error: (?P<x>a)(?P=x) ^ error: unrecognized flag"),
])
def test_a_schema_the_constraint_engine_rejects_is_a_load_error_not_a_case_error(tmp_path: Path, schema: str,
                                                                                 expected: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\ndescription: d\nprompt: hi\nfeatures:\n  json_schema:\n    schema: {schema}\n")
    [error] = load_file(path).errors
    assert str(error).startswith(f"{path}:6:13: features.json_schema.schema: llguidance, which the reference and "
                                 "transformers engines constrain with, rejects it: "), str(error)
    assert expected in str(error) and "\n" not in str(error)


def test_readme_names_every_required_scenario_field(tmp_path: Path) -> None:
    """A first scenario without `description` must not be a surprise: the README's format
    paragraph names each field the schema requires, and the error it quotes is the loader's."""
    from harness.format.scenario import Scenario

    readme = (REPO / "README.md").read_text()
    paragraph = readme[readme.index("Every scenario needs"):].split("\n\n")[0]
    required = Scenario.model_json_schema()["required"]
    assert required and all(f"`{name}`" in paragraph for name in required), (required, paragraph)
    quoted = paragraph.split("load error on that line: `")[1].split("`")[0]
    path = tmp_path / "my_bias.yaml"  # the tour's file, without its description
    path.write_text("# yaml-language-server: $schema=../harness/data/scenario.schema.json\nname: my-logit-bias\nprompt: hi\n")
    [error] = load_file(path).errors
    assert str(error) == f"{tmp_path}/{quoted}"
