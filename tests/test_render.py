"""Hostile text through every sink: terminal, markdown (report.md, the CI job summary) and
XML (junit.xml). Each sink's output is parsed back: nothing in the data may act on it."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import pytest

from harness.execute.case_errors import ErrorInfo
from harness.record import render
from harness.record.junit import junit_xml
from harness.record.report import console_table, markdown
from harness.record.results import CaseResult, DamagedLine, Failure
from tests.markdown_check import MD, code_spans_of_safe_markdown, inline_tokens

HOSTILE = [
    "clear\x1b[2Jscreen",
    "forged\n[99/99] passed  fake[reference-cpu]",
    "carriage\rreturn",
    "nul\x00and bell\x07",
    "c1 \x9b31m csi",
    "bidi \u202eevil\u202c",
    "lone \udcff surrogate",
    "non-char \ufffe",
    "markup [main] and [/] and [bold red]x[/bold red]",
    "tick ` and `` and ```fence",
    "`starts and ends`",
    " spaced ",
    "<script>alert(1)</script> <b>bold</b>",
    "[link](https://example.com) ![img](x.png) <https://auto.link>",
    "pipe | in | cell \\| escaped",
    "**bold** _em_ # heading",
    "blank\n\nline then <img src=x onerror=alert(1)>",
    "backslash at end \\",
    "",
]


def _unsafe_terminal_chars(text: str) -> list[str]:
    return [c for c in text if not c.isprintable()]


@pytest.mark.parametrize("value", HOSTILE)
def test_terminal_text_has_no_control_character_and_no_line_break(value: str) -> None:
    out = render.terminal(value)
    assert _unsafe_terminal_chars(out) == [], f"raw control characters reach the terminal: {out!r}"
    multi = render.terminal(value, indent="    ")
    lines = multi.split("\n")
    assert all(line.startswith("    ") for line in lines[1:]), "a continuation line must never start at column 0"
    assert all(not _unsafe_terminal_chars(line) for line in lines)


def test_terminal_escapes_are_visible() -> None:
    assert render.terminal("a\x1b[2J\nb\tc\u202e") == "a\\x1b[2J\\nb\\tc\\u202e"
    assert render.terminal("ünïcödé 中文 ok") == "ünïcödé 中文 ok", "printable text passes untouched"


@pytest.mark.parametrize("value", ["[/]", "[main]", "[bold]x[/bold]", "[link=https://x]y[/link]", ":smile:"])
def test_rich_never_reads_data_as_markup(value: str) -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, markup=True, highlight=False)  # even with markup on
    console.print(render.terminal_text(value))
    assert console.file.getvalue().rstrip("\n") == value


@pytest.mark.parametrize("value", HOSTILE)
def test_a_markdown_code_span_holds_the_value_and_nothing_escapes_it(value: str) -> None:
    text = f"before {render.markdown_code(value)} after"
    assert code_spans_of_safe_markdown(text) == [render.escape(value) or " "], "the span must hold exactly the value"
    assert text.endswith(" after") and inline_tokens(text)[-1].content == " after"


@pytest.mark.parametrize("value", HOSTILE)
def test_a_table_cell_stays_one_cell(value: str) -> None:
    table = f"| a | b |\n|---|---|\n| {render.markdown_code(value, table=True)} | second |\n"
    tokens = MD.parse(table)
    cells = [t for t in tokens if t.type == "td_open"]
    assert len(cells) == 2, "a | or a line break in data must not add or end a cell"
    inline = [t for t in tokens if t.type == "inline"]
    assert inline[-1].content == "second"
    assert code_spans_of_safe_markdown(table) == [render.escape(value) or " "]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_fenced_block_cannot_be_closed_by_its_content(value: str) -> None:
    text = f"{render.markdown_block(value)}\n\nafter <b>x</b>\n"
    tokens = MD.parse(text)
    assert tokens[0].type == "fence" and tokens[0].content == render.escape(value, keep="\n\t") + "\n"
    assert [t.type for t in tokens[1:4]] == ["paragraph_open", "inline", "paragraph_close"]


@pytest.mark.parametrize("value", HOSTILE)
def test_xml_text_and_attributes_always_parse_back(value: str) -> None:
    root = ET.Element("r", attr=render.xml(value))
    root.text = render.xml(value)
    parsed = ET.fromstring(ET.tostring(root, encoding="utf-8"))
    assert parsed.get("attr") == render.xml(value) and (parsed.text or "") == render.xml(value)


def _hostile_result(i: int, value: str) -> CaseResult:
    return CaseResult(
        id=f"case-{i}[{value}]", scenario=value, engine="reference", device="sim:cuda:0", file=f"dir[/]/{value}.yaml",
        line=1, status=("failed", "error", "skipped", "passed")[i % 4], reason=value,
        failures=[Failure(value or "check", value)] if i % 4 == 0 else [],
        error=ErrorInfo(value, value) if i % 4 == 1 else None,
        notes=[value], findings=[value],
    )


def test_report_markdown_keeps_every_hostile_value_inside_code() -> None:
    results = [_hostile_result(i, v) for i, v in enumerate(HOSTILE)]
    info = {"run_id": HOSTILE[1], "torch": HOSTILE[12], "devices": HOSTILE[:3], "expected_ids": [HOSTILE[13]],
            "selected_ids": [r.id for r in results] + [HOSTILE[9]], "finished": 1.0}
    text = markdown(results, info, invalid_files=HOSTILE, damaged=[DamagedLine(HOSTILE[0], 3, HOSTILE[12])])
    code_spans_of_safe_markdown(text)
    cells_per_row: list[int] = []
    for t in MD.parse(text):
        if t.type == "tr_open":
            cells_per_row.append(0)
        elif t.type in ("td_open", "th_open"):
            cells_per_row[-1] += 1
    assert cells_per_row.count(8) == len(results) + 1, "one row per case, each with its 8 columns"
    assert set(cells_per_row) == {2, 8}, "every table row keeps its columns (matrix: 2, cases: 8)"
    assert "\x1b" not in text and "\x00" not in text and "\r" not in text


def test_junit_xml_of_hostile_results_is_valid_xml() -> None:
    results = [_hostile_result(i, v) for i, v in enumerate(HOSTILE)]
    suite = ET.fromstring(junit_xml(results)).find("testsuite")
    assert suite is not None and suite.get("tests") == str(len(HOSTILE))
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names == [render.xml(r.id) for r in results]


def test_console_table_prints_hostile_values_escaped_and_literally() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=400, markup=True, highlight=False)
    console.print(console_table([_hostile_result(i, v) for i, v in enumerate(HOSTILE)]))
    out = console.file.getvalue()
    assert _unsafe_terminal_chars(out.replace("\n", "")) == []
    assert "[/]" in out and "[main]" in out, "markup-looking data prints as it is"


@pytest.mark.parametrize(("text", "width", "expected"), [
    ("short enough", 20, "short enough"),
    ("the engine placed layers.1 on cuda:1 but its cache on cuda:0", 30, "the engine placed layers.1..."),
    ("cut right after a word, at the space", 26, "cut right after a word..."),
    ("see /a/very/long/path/that/has/no/space/in/it/at/all", 24, "see /a/very/long/path..."),
])
def test_shorten_cuts_at_a_word_boundary_with_an_ellipsis(text: str, width: int, expected: str) -> None:
    assert render.shorten(text, width) == expected
    assert len(render.shorten(text, width)) <= width


def test_the_console_table_cuts_long_details_between_words() -> None:
    from rich.console import Console

    words = " ".join(f"wordy{i:03d}" for i in range(40))  # 359 characters; 120 falls inside a word
    result = CaseResult(id="c[reference-cpu]", scenario="c", engine="reference", device="cpu", file="s.yaml", line=1,
                        status="failed", failures=[Failure("output", words)])
    console = Console(file=io.StringIO(), width=400, highlight=False)
    console.print(console_table([result]))
    [row] = [line for line in console.file.getvalue().splitlines() if "c[reference-cpu]" in line]
    details = row.split("│")[-2].strip()
    assert details.endswith("...") and details[:-3].split()[-1] in words.split(), details
