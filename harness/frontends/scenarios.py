"""Scenario files as every front end loads them: the format (`harness.format.loader`) plus
what it cannot know alone, passed in: the registry's engine names ($SAMEDEVICE_PLUGINS
imported: they register engines) and each model's own limits."""

from __future__ import annotations

from pathlib import Path

from harness.format import loader
from harness.format.loader import LoadResult


def load_paths(paths: list[Path]) -> LoadResult:
    from harness.engines import known_engines
    from harness.models.checks import model_problems

    return loader.load_paths(paths, known_engines(), model_problems)


def load_file(path: Path) -> LoadResult:
    from harness.engines import known_engines
    from harness.models.checks import model_problems

    return loader.load_file(path, known_engines(), model_problems)
