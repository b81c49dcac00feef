"""JUnit XML for CLI runs (the pytest path has pytest's own --junitxml).

Every attribute and text node from data passes through `render.xml`, so an ESC or NUL in
an error message never makes the file invalid XML; the file is replaced atomically.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.record.render import xml
from harness.record.results import CaseResult, ResultsWriteError, write_file


def _element(parent: ET.Element, tag: str, text: str | None = None, **attributes: object) -> ET.Element:
    element = ET.SubElement(parent, tag, {name: xml(value) for name, value in attributes.items()})
    if text is not None:
        element.text = xml(text)
    return element


def junit_xml(results: list[CaseResult], suite: str = "samedevice") -> bytes:
    counts = {s: sum(r.status == s for r in results) for s in ("failed", "error", "skipped")}
    root = ET.Element("testsuites")
    testsuite = _element(
        root, "testsuite", name=suite, tests=len(results), failures=counts["failed"], errors=counts["error"],
        skipped=counts["skipped"], time=f"{sum(r.duration_s for r in results):.3f}",
    )
    for r in results:
        case = _element(testsuite, "testcase", classname=f"{Path(r.file).stem}.{r.scenario}", name=r.id,
                        file=r.file, line=r.line, time=f"{r.duration_s:.3f}")
        if r.status == "skipped":
            _element(case, "skipped", message=r.reason)
        elif r.status == "failed":
            _element(case, "failure", "\n".join(f"{f.check}: {f.message}" for f in r.failures),
                     message=r.summary_line()[:500])
        elif r.status == "error":
            text = (r.error.message + "\n" + (r.error.traceback or "")) if r.error is not None else ""
            _element(case, "error", text, message=r.summary_line()[:500])
        if r.notes:
            _element(case, "system-out", "\n".join(r.notes))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_junit(results: list[CaseResult], path: Path, suite: str = "samedevice") -> None:
    """Write the JUnit file (its directory is created); ResultsWriteError if it cannot be."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsWriteError(path, exc) from None
    write_file(path, junit_xml(results, suite))
