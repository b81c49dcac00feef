"""JUnit XML for CLI runs (the pytest path has pytest's own --junitxml)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.results import CaseResult


def write_junit(results: list[CaseResult], path: Path, suite: str = "samedevice") -> None:
    counts = {s: sum(r.status == s for r in results) for s in ("failed", "error", "skipped")}
    root = ET.Element("testsuites")
    testsuite = ET.SubElement(
        root, "testsuite", name=suite, tests=str(len(results)), failures=str(counts["failed"]),
        errors=str(counts["error"]), skipped=str(counts["skipped"]),
        time=f"{sum(r.duration_s for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(testsuite, "testcase", classname=f"{Path(r.file).stem}.{r.scenario}",
                             name=r.id, file=r.file, line=str(r.line), time=f"{r.duration_s:.3f}")
        if r.status == "skipped":
            ET.SubElement(case, "skipped", message=r.reason)
        elif r.status == "failed":
            element = ET.SubElement(case, "failure", message=r.summary_line()[:500])
            element.text = "\n".join(f"{f.check}: {f.message}" for f in r.failures)
        elif r.status == "error":
            element = ET.SubElement(case, "error", message=r.summary_line()[:500])
            element.text = (r.error.message + "\n" + (r.error.traceback or "")) if r.error is not None else ""
        if r.notes:
            ET.SubElement(case, "system-out").text = "\n".join(r.notes)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
