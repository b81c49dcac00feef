"""`samedevice architectures`: every model family a scenario may name, whether it has a tiny
decoder-only form here and why not, and, given a run of the architecture sweep
(`sweeps/architectures.yaml`), how each family did per feature and device; the same table
for a run of the generation-options sweep (`sweeps/options.yaml`), a row per option.

A sweep scenario is named BASE.FAMILY (the loader's expansion of `family: all`); its cases'
device labels are the columns. Failures and errors are listed with the scenario's file:line
and the line of library code the error came from: they are findings about the library.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from harness.record.results import CaseResult

SYMBOLS = {"passed": "ok", "failed": "FAIL", "error": "ERR", "skipped": "skip"}
_DEVICE_ORDER = {"cpu": 0, "sim:cuda:0": 1, "sim:auto": 2}


def family_rows(build: bool = False) -> list[tuple[str, str]]:
    """(family, "bundled" | "tiny" | "cannot be built tiny: why") for every known family.
    `build`: build each tiny model too (cached), so build failures show as well."""
    from harness.models.families import BUNDLED_FAMILIES, known_families
    from harness.models.tiny_families import CannotBuildTiny, unbuildable_reason

    rows = []
    for family in known_families() or BUNDLED_FAMILIES:
        if family in BUNDLED_FAMILIES:
            rows.append((family, "bundled layout"))
            continue
        reason = unbuildable_reason(family)
        if reason is None and build:
            from harness.format.scenario import ModelSpec
            from harness.models import tinymodel

            try:
                tinymodel.model_dir(ModelSpec(family=family))
            except CannotBuildTiny as exc:
                reason = str(exc)
            except Exception as exc:
                reason = f"building failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append((family, "tiny" if reason is None else f"cannot be built tiny: {reason}"))
    return rows


def split_name(scenario: str) -> tuple[str, str]:
    """'arch-greedy.qwen2' -> ('arch-greedy', 'qwen2'); a name without a family -> (name, '')."""
    base, _, family = scenario.partition(".")
    return base, family


def sweep_table(results: list[CaseResult], title: str = "Architecture sweep", row: str = "family",
                rows: str = "families") -> str:
    """Markdown: one row per family (or option: `row`), one column per scenario x device, then what failed."""
    cells: dict[str, dict[tuple[str, str], CaseResult]] = defaultdict(dict)
    columns: dict[tuple[str, str], None] = {}
    for result in results:
        base, family = split_name(result.scenario)
        cells[family][(base, result.device)] = result
        columns[(base, result.device)] = None
    order = sorted(columns, key=lambda c: (list(dict.fromkeys(b for b, _ in columns)).index(c[0]),
                                          _DEVICE_ORDER.get(c[1], 9), c[1]))
    counts = {status: sum(r.status == status for r in results) for status in SYMBOLS}
    bases = list(dict.fromkeys(b for b, _ in order))
    prefix = _common_words(bases) if len(bases) > 1 else ""  # arch-greedy, arch-sampled -> greedy, sampled
    lines = [
        f"# {title}",
        "",
        f"{len(cells)} {rows}, {len(results)} cases: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        "",
        f"| {row} | " + " | ".join(f"{base.removeprefix(prefix)} {device}" for base, device in order) + " |",
        "|---" * (len(order) + 1) + "|",
    ]
    for family in sorted(cells):
        by_column = cells[family]
        lines.append(f"| {family} | " + " | ".join(SYMBOLS[by_column[c].status] if c in by_column else ""
                                                   for c in order) + " |")
    unbuildable: dict[str, str] = {}
    skips: dict[str, list[str]] = defaultdict(list)
    for family in sorted(cells):
        for reason in sorted({r.reason for r in cells[family].values() if r.status == "skipped"}):
            prefix = f"model family {family} cannot be built tiny: "
            if reason.startswith(prefix):
                unbuildable[family] = reason.removeprefix(prefix)
            else:
                skips[reason].append(family)
    if unbuildable:
        lines += ["", f"## Cannot be built tiny ({len(unbuildable)} families)", ""]
        lines += [f"- {family}: {reason}" for family, reason in unbuildable.items()]
    if skips:
        lines += ["", "## Other skips, and why", ""]
        lines += [f"- {reason}: {', '.join(families)}" for reason, families in sorted(skips.items())]
    bad = [r for r in results if r.status in ("failed", "error")]
    if bad:
        lines += ["", "## Findings (failures and errors)", ""]
        for result in sorted(bad, key=lambda r: r.id):
            lines.append(f"- `{result.id}` ({result.file}:{result.line}): {_what(result)}")
    return "\n".join(lines) + "\n"


def _common_words(names: list[str]) -> str:
    """The leading dash-separated words every name shares, with the dash ("arch-")."""
    common = []
    for words in zip(*(name.split("-")[:-1] for name in names), strict=False):
        if len(set(words)) != 1:
            break
        common.append(words[0])
    return "".join(f"{word}-" for word in common)


def _what(result: CaseResult) -> str:
    if result.error is not None:
        return result.error.one_line()
    return "; ".join(f"{f.check}: {f.message}" for f in result.failures)[:600]


def main(results_dir: Path | None, build: bool, output: Path | None, fail_on_failures: bool) -> int:
    if results_dir is not None:
        from harness.record.results import RunDirectory

        results = RunDirectory(results_dir).read_cases()
        if results and all(r.file.endswith("sweeps/options.yaml") for r in results):
            text = sweep_table(results, "Generation-options sweep", "option", "options")
        else:
            text = sweep_table(results)
        bad = sum(r.status in ("failed", "error") for r in results)
    else:
        rows = family_rows(build)
        text = "\n".join(f"{family}\t{state}" for family, state in rows) + "\n"
        tiny = sum(state in ("tiny", "bundled layout") for _, state in rows)
        text += f"{len(rows)} families, {tiny} with a tiny decoder-only form here\n"
        bad = 0
    if output is not None:
        output.write_text(text)
    else:
        print(text, end="")
    return 1 if fail_on_failures and bad else 0
