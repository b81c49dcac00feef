"""Engine registry: built-in adapters plus user engines from the `samedevice.engines`
entry point group. A name is registered once; a miss lists the known names.

`engine_names()` answers which names exist without importing an adapter (or torch), so the
scenario loader's callers can check `engines:` (`known_engines()`); `get_engine()` imports what it needs to return a class.
An entry point's name is its engine's name.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from harness.format.suggest import did_you_mean

if TYPE_CHECKING:
    from harness.engines.base import (
        Capabilities,
        Engine,
        Generation,
        Placement,
        Request,
        Unsupported,
    )
    from harness.format.loader import KnownEngines

__all__ = ["Capabilities", "Engine", "Generation", "Placement", "Request", "Unsupported", "all_engines",
           "engine_names", "get_engine", "known_engines", "register"]

ENTRY_POINT_GROUP = "samedevice.engines"
# The names the built-in adapter modules register (tests/test_loader.py keeps them in step).
BUILTIN_ENGINES = ("llamacpp", "mistralrs", "outlines", "reference", "transformers")
_BASE_NAMES = frozenset({"Capabilities", "Engine", "Generation", "Placement", "Request", "Unsupported"})
_REGISTRY: dict[str, type[Engine]] = {}
_BROKEN_PLUGINS: dict[str, str] = {}
_imported_env_plugins: set[str] = set()
_loaded_plugins = False


def __getattr__(name: str) -> Any:
    """The adapter interface (`harness.engines.base`) imports torch: load it on first use."""
    if name in _BASE_NAMES:
        from harness.engines import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class UnknownEngine(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(cls: type[Engine]) -> type[Engine]:
    """Class decorator: make an engine known by its `name`."""
    if cls.name in BUILTIN_ENGINES and not cls.__module__.startswith("harness.engines."):
        raise ValueError(f"engine name {cls.name!r} is already registered by a built-in engine")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"engine name {cls.name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def engine_names() -> tuple[str, ...]:
    """Every engine name a scenario may use, sorted: the built-ins, the entry points' names
    (not loaded) and the engines registered so far, including by $SAMEDEVICE_PLUGINS modules
    (imported here: their names are known no other way; they are the user's code)."""
    _import_env_plugins()
    return tuple(sorted({*BUILTIN_ENGINES, *_entry_point_names(), *_REGISTRY}))


def known_engines() -> KnownEngines:
    """The names a scenario may use, for the scenario loader (which imports no engine code)."""
    from harness.format.loader import KnownEngines

    names = engine_names()
    return KnownEngines(names, lambda name: unknown_engine_message(name, names))


def unknown_engine_message(name: str, known: tuple[str, ...] | list[str]) -> str:
    """Why `name` is no engine: its plugin failed to load, or a "did you mean", naming any
    plugin that failed to load (the engine may live in one)."""
    if name in _BROKEN_PLUGINS:
        return f"engine {name!r} is unavailable: its plugin failed to load: {_BROKEN_PLUGINS[name]}"
    hint = did_you_mean(name, known, otherwise=f"known engines: {', '.join(sorted(known))}")
    if _BROKEN_PLUGINS:
        hint += "; plugins that failed to load: " + "; ".join(f"{k} ({v})" for k, v in sorted(_BROKEN_PLUGINS.items()))
    return f"unknown engine {name!r} ({hint})"


@lru_cache(maxsize=1)
def _entry_point_names() -> tuple[str, ...]:
    return tuple(point.name for point in entry_points(group=ENTRY_POINT_GROUP))


def _import_env_plugins() -> None:
    """Modules named in $SAMEDEVICE_PLUGINS register engines on import: a plugin without packaging."""
    for module in filter(None, (m.strip() for m in os.environ.get("SAMEDEVICE_PLUGINS", "").split(","))):
        if module in _imported_env_plugins:
            continue
        _imported_env_plugins.add(module)
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as exc:  # a broken plugin must not take the run down
            _BROKEN_PLUGINS[module] = _import_failure(exc)


def _import_failure(exc: BaseException) -> str:
    """Why a plugin failed to import. SystemExit (sys.exit in the module) is one more such
    failure; KeyboardInterrupt is never caught: a Ctrl-C during the import stops the run."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: it called sys.exit({exc.code!r}) on import"
    return f"{type(exc).__name__}: {exc}"


def _load_builtins_and_plugins() -> None:
    global _loaded_plugins
    _import_env_plugins()
    if _loaded_plugins:
        return
    _loaded_plugins = True
    import harness.engines.hf_transformers
    import harness.engines.llamacpp_engine
    import harness.engines.mistralrs_engine
    import harness.engines.outlines_engine
    import harness.engines.reference  # noqa: F401
    from harness.engines.base import Engine

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = point.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must not take the run down
            _BROKEN_PLUGINS[point.name] = _import_failure(exc)
            continue
        if isinstance(cls, type) and issubclass(cls, Engine):
            register(cls)
            if cls.name != point.name:  # engine_names() promised the entry point's name
                _BROKEN_PLUGINS[point.name] = f"its entry point names engine {cls.name!r}; name both alike"


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
    raise UnknownEngine(unknown_engine_message(name, list(engines)))
