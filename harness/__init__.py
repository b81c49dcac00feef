"""samedevice: regression tests and benchmarks for LLM inference across devices.

The package is grouped in wings, one concern each (README, "Layout"): `format` (scenario files),
`models`, `engines`, `execute` (running cases), `checks`, `record` (results and reports),
`devices` (simulated GPUs, tracking, the ledger) and `frontends` (CLI, pytest, testing API, asv).
"""

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

# Import paths from before the wings, kept for plugins, users' tests and asv benchmark modules
# written against them (`harness.testing`, `harness.asv_suite`, ...): each old name is the new
# module itself (one module object under two names, so patching either patches both).
MOVED = {
    "harness.scenario": "harness.format.scenario",
    "harness.loader": "harness.format.loader",
    "harness.model_source": "harness.models.sources",
    "harness.tinymodel": "harness.models.tinymodel",
    "harness.tiny_families": "harness.models.tiny_families",
    "harness.families": "harness.models.families",
    "harness.model_dims": "harness.models.model_dims",
    "harness.bundled_tokenizer": "harness.models.tokenizer",
    "harness.gguf_export": "harness.models.gguf",
    "harness.versions": "harness.engines.versions",
    "harness.spec": "harness.engines.spec",
    "harness.placement": "harness.engines.weights",
    "harness.runner": "harness.execute.case",
    "harness.isolation": "harness.execute.worker",
    "harness.phases": "harness.execute.phases",
    "harness.capture": "harness.execute.capture",
    "harness.cases": "harness.execute.cases",
    "harness.sharding": "harness.execute.sharding",
    "harness.matrix": "harness.execute.matrix",
    "harness.errors": "harness.execute.case_errors",
    "harness.feature_checks": "harness.checks.features",
    "harness.results": "harness.record.results",
    "harness.run": "harness.record.lifecycle",
    "harness.report": "harness.record.report",
    "harness.junit": "harness.record.junit",
    "harness.merge": "harness.record.merge",
    "harness.compare": "harness.record.compare",
    "harness.figures": "harness.record.figures",
    "harness.render": "harness.record.render",
    "harness.ledger": "harness.devices.ledger",
    "harness.selftest": "harness.devices.selftest",
    "harness.cli": "harness.frontends.cli",
    "harness.pytest_plugin": "harness.frontends.pytest_plugin",
    "harness.testing": "harness.frontends.testing",
    "harness.asv_suite": "harness.frontends.asv_suite",
    "harness.asv_init": "harness.frontends.asv_init",
    "harness.doctor": "harness.frontends.doctor",
    "harness.conformance": "harness.frontends.check_engine",
    "harness.architectures": "harness.frontends.architectures",
    "harness.arguments": "harness.frontends.arguments",
    "harness.standard_suite": "harness.frontends.standard_suite",
}


def _moved_spec(name: str) -> Any:
    spec = importlib.util.find_spec(MOVED[name])
    if spec is None:
        raise ModuleNotFoundError(f"{name} moved to {MOVED[name]}, which is missing", name=name)
    return spec


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self, origin=_moved_spec(name).origin)

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):  # the module ran under its new name already
        pass

    def get_code(self, name):  # `python -m harness.cli` runs the moved module's code
        moved = _moved_spec(name)
        return moved.loader.get_code(moved.name)

    def is_package(self, name):
        return False


sys.meta_path.insert(0, _MovedModules())  # before path finders: an old file must not shadow it
