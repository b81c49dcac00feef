"""Plugins for the worker-lifecycle tests, loaded in case workers through $SAMEDEVICE_PLUGINS.

- engine `test-spawn-hang`: starts a subprocess of its own, writes both pids to
  $SAMEDEVICE_TEST_PIDS, then hangs;
- $SAMEDEVICE_TEST_IMPORT_DELAY: importing this module takes that many seconds (a slow
  engine library: worker start and imports must not count toward a case's timeout);
- $SAMEDEVICE_TEST_SLOW_SEED: building the tiny model of that seed hangs after the staging
  directory is created (a model build killed halfway).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from harness.engines import register
from harness.engines.base import Capabilities, Engine, Generation, Placement, Request
from harness.models import tinymodel

time.sleep(float(os.environ.get("SAMEDEVICE_TEST_IMPORT_DELAY", "0")))


@register
class SpawnAndHangEngine(Engine):
    name = "test-spawn-hang"
    capabilities = Capabilities()

    def load(self, request: Request, placement: Placement) -> None:
        pass

    def generate(self, request: Request) -> Generation:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
        Path(os.environ["SAMEDEVICE_TEST_PIDS"]).write_text(f"{os.getpid()} {child.pid}\n")
        time.sleep(3600)
        raise AssertionError("unreachable")


_write_model = tinymodel._write_model


def _slow_write_model(directory: Path, spec, dims) -> None:
    if spec.seed == int(os.environ.get("SAMEDEVICE_TEST_SLOW_SEED", "-1")):
        (directory / "building").write_text(str(os.getpid()))
        time.sleep(1000)
    _write_model(directory, spec, dims)


tinymodel._write_model = _slow_write_model
