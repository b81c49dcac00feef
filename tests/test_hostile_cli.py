"""`samedevice run` fed hostile text end to end: a YAML key that clears the screen and forges
a progress line, ESC and NUL in an error pattern, a scenario directory named `[main]` and a
results root named `[/]`. Every output is read back: stderr, report.md, junit.xml."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.markdown_check import code_spans_of_safe_markdown

FORGED_KEY = '"bad\\e[2J\\n[9/9] passed  forged[reference-cpu]": 1'
FAILING = """\
name: esc-match
description: an expect_error pattern holding ESC and NUL; the case fails (nothing raises)
devices: [cpu]
prompt: hi
max_new_tokens: 2
checks: {expect_error: {match: "x\\e\\0y`<b>`"}}
"""


def test_hostile_keys_messages_and_paths_never_act_on_any_output(tmp_path: Path) -> None:
    scenarios = tmp_path / "sc[main]"
    scenarios.mkdir()
    (scenarios / "fails.yaml").write_text(FAILING)
    (scenarios / "key.yaml").write_text(f"name: k\ndescription: d\nprompt: hi\n{FORGED_KEY}\n")
    out = subprocess.run(
        [sys.executable, "-m", "harness.frontends.cli", "run", "sc[main]", "--results", "res[/]", "--junit", "out[/]/j.xml",
         "--no-progress", "--isolation", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 1, out.stderr  # one case failed, one file is invalid: not a crash
    assert "Traceback" not in out.stderr and "MarkupError" not in out.stderr
    assert [c for c in out.stderr if not c.isprintable() and c != "\n"] == [], "raw control characters on stderr"
    progress = [line for line in out.stderr.splitlines() if line.startswith("[")]
    assert progress == ["[1/1] failed  esc-match[reference-cpu]"], "data must not forge a progress line"
    assert "FAILED esc-match[reference-cpu] (sc[main]/fails.yaml:1)" in out.stderr, "[main] in a path prints as it is"
    assert "bad\\x1b[2J\\n[9/9] passed" in out.stderr, "the key is shown, escaped"

    [run_dir] = list((tmp_path / "res[/]").iterdir())
    for junit in (run_dir / "junit.xml", tmp_path / "out[/]" / "j.xml"):
        failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
        assert failure is not None and "x\\x1b\\x00y" in failure.get("message", "")
    report = (run_dir / "report.md").read_text()
    spans = code_spans_of_safe_markdown(report)
    assert any("\\x1b[2J\\n[9/9] passed" in span for span in spans), "the key sits inside a code span"
