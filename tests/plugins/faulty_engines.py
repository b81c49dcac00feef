"""Engines that misbehave on purpose, loaded through $SAMEDEVICE_PLUGINS by the isolation
tests: one aborts the process, one hangs, one raises an ordinary error, one calls sys.exit(3),
one os._exit(3), one raises KeyboardInterrupt."""

from __future__ import annotations

import os
import sys
import time

from harness.engines import register
from harness.engines.base import Capabilities, Engine, Generation, Placement, Request


class _Faulty(Engine):
    capabilities = Capabilities()

    def load(self, request: Request, placement: Placement) -> None:
        pass

    def generate(self, request: Request) -> Generation:
        raise NotImplementedError


@register
class AbortingEngine(_Faulty):
    name = "test-abort"

    def generate(self, request: Request) -> Generation:
        os.abort()


@register
class HangingEngine(_Faulty):
    name = "test-hang"

    def generate(self, request: Request) -> Generation:
        time.sleep(3600)
        raise AssertionError("unreachable")


@register
class RaisingEngine(_Faulty):
    name = "test-raise"

    def generate(self, request: Request) -> Generation:
        raise ValueError("the engine rejected the request")


@register
class SysExitEngine(_Faulty):
    name = "test-sys-exit"

    def generate(self, request: Request) -> Generation:
        sys.exit(3)


@register
class OsExitEngine(_Faulty):
    name = "test-os-exit"

    def generate(self, request: Request) -> Generation:
        os._exit(3)


@register
class InterruptingEngine(_Faulty):
    name = "test-interrupt"

    def generate(self, request: Request) -> Generation:
        raise KeyboardInterrupt
