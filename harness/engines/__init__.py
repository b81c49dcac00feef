"""Engine registry: built-in adapters plus user engines from the `samedevice.engines`
entry point group. A name is registered once; a miss lists the known names."""

from __future__ import annotations

import difflib
import importlib
import os
from importlib.metadata import entry_points

from harness.engines.base import Capabilities, Engine, Generation, Placement, Request

__all__ = ["Capabilities", "Engine", "Generation", "Placement", "Request", "all_engines", "get_engine", "register"]

ENTRY_POINT_GROUP = "samedevice.engines"
_REGISTRY: dict[str, type[Engine]] = {}
_loaded_plugins = False


class UnknownEngine(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(cls: type[Engine]) -> type[Engine]:
    """Class decorator: make an engine known by its `name`."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"engine name {cls.name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins_and_plugins() -> None:
    global _loaded_plugins
    if _loaded_plugins:
        return
    _loaded_plugins = True
    import harness.engines.hf_transformers
    import harness.engines.llamacpp_engine
    import harness.engines.mistralrs_engine
    import harness.engines.outlines_engine
    import harness.engines.reference  # noqa: F401

    # Modules named in $SAMEDEVICE_PLUGINS register engines on import: a plugin without packaging.
    for module in filter(None, os.environ.get("SAMEDEVICE_PLUGINS", "").split(",")):
        try:
            importlib.import_module(module.strip())
        except Exception as exc:
            _BROKEN_PLUGINS[module] = f"{type(exc).__name__}: {exc}"
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = point.load()
        except Exception as exc:  # a broken plugin must not take the run down
            _BROKEN_PLUGINS[point.name] = f"{type(exc).__name__}: {exc}"
            continue
        if isinstance(cls, type) and issubclass(cls, Engine):
            register(cls)


_BROKEN_PLUGINS: dict[str, str] = {}


def all_engines() -> dict[str, type[Engine]]:
    _load_builtins_and_plugins()
    return dict(_REGISTRY)


def broken_plugins() -> dict[str, str]:
    _load_builtins_and_plugins()
    return dict(_BROKEN_PLUGINS)


def get_engine(name: str) -> type[Engine]:
    engines = all_engines()
    if name in engines:
        return engines[name]
    if name in _BROKEN_PLUGINS:
        raise UnknownEngine(f"engine {name!r} is unavailable: its plugin failed to load: {_BROKEN_PLUGINS[name]}")
    close = difflib.get_close_matches(name, engines, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known engines: {', '.join(sorted(engines))}"
    if _BROKEN_PLUGINS:  # the engine may live in a plugin that did not load
        hint += "; plugins that failed to load: " + "; ".join(f"{k} ({v})" for k, v in sorted(_BROKEN_PLUGINS.items()))
    raise UnknownEngine(f"unknown engine {name!r} ({hint})")
