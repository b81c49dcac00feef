"""Library versions: what is installed, what each built-in engine needs, and the file-format
generations the tiny-model cache depends on.

Everything here reads package metadata (importlib.metadata), never imports the library:
`samedevice doctor`, listing cases and writing run.json stay fast, and a version is known
even where the library fails to import. Under PYTHONPATH stacks (old libraries installed
side by side with `pip install --target`) metadata and import agree: both take the first
match on sys.path.
"""

from __future__ import annotations

import re
from importlib import metadata

from packaging.version import Version

# Reported in run.json and by `samedevice doctor`: the engines' libraries and what they stand
# on. Key -> distribution names to try (the first installed one is reported).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "accelerate": ("accelerate",),
    "tokenizers": ("tokenizers",),
    "safetensors": ("safetensors",),
    "huggingface_hub": ("huggingface_hub",),
    "peft": ("peft",),
    "outlines": ("outlines",),
    "outlines_core": ("outlines_core",),
    "datasets": ("datasets",),  # Outlines before 1.0 needs it
    "llguidance": ("llguidance",),
    "xgrammar": ("xgrammar",),
    "mistralrs": ("mistralrs", "mistralrs-cuda", "mistralrs-metal", "mistralrs-mkl", "mistralrs-accelerate"),
    "llama_cpp": ("llama-cpp-python",),
    "gguf": ("gguf",),
    "numpy": ("numpy",),
    "jsonschema": ("jsonschema",),
    "pydantic": ("pydantic",),
}

INSTALL_HINT = "pip install 'samedevice[engines]'"

# What each built-in engine needs: library -> lowest version it is known to work with. The
# floors are the lowest releases `nox -s compat` runs green (see noxfile.py); a version
# below one skips the engine's cases with "X v is not supported: needs >= floor".
ENGINE_REQUIREMENTS: dict[str, dict[str, str]] = {
    "transformers": {"transformers": "4.44", "accelerate": "0.34"},
    "outlines": {"outlines": "0.0.28", "transformers": "4.44", "accelerate": "0.34"},
}


def installed_version(library: str) -> str | None:
    """The installed version of `library` (a LIBRARIES key or a distribution name), or None."""
    for distribution in LIBRARIES.get(library, (library,)):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str | None]:
    """Every library in LIBRARIES with its installed version (None: not installed)."""
    return {name: installed_version(name) for name in LIBRARIES}


def at_least(library: str, version: str) -> bool:
    """Whether `library` is installed at `version` or later."""
    installed = installed_version(library)
    return installed is not None and Version(installed) >= Version(version)


def requirement_problem(requirements: dict[str, str]) -> str | None:
    """Why `requirements` (library -> minimum) are not met here, or None."""
    for library, floor in requirements.items():
        installed = installed_version(library)
        if installed is None:
            return f"{library} is not installed ({INSTALL_HINT})"
        if Version(installed) < Version(floor):
            return f"{library} {installed} is not supported: needs >= {floor}"
    return None


def engine_problem(engine: str) -> str | None:
    """Why the built-in `engine` cannot run with the libraries installed here, or None."""
    return requirement_problem(ENGINE_REQUIREMENTS.get(engine, {}))


def import_problem(library: str, exc: ImportError) -> str:
    """`environment: transformers 4.44.0 cannot import: huggingface_hub 1.2.0 beside it: cannot
    import name 'X' from 'huggingface_hub' (...)`: an installed `library` that fails to import
    here, naming the package the failure is in where the error says which (the module Python
    names, else the one `from 'M'` or `No module named 'M'` quotes), with its installed version."""
    message = f"{type(exc).__name__}: {exc}"
    module = exc.name
    if module is None or module.split(".")[0] == library:
        quoted = re.search(r"(?:from|No module named) '([\w.]+)'", str(exc))
        module = quoted.group(1) if quoted else module
    top = (module or "").split(".")[0]
    if top and top != library:
        distributions = metadata.packages_distributions().get(top, [top])
        version = installed_version(distributions[0])
        clash = f"{top} {version}" if version else f"{top} (not installed)"
        message = f"{clash} beside it: {message}"
    return f"environment: {library} {installed_version(library) or '(version unknown)'} cannot import: {message}"


def describe_requirements(engine: str) -> str:
    """`transformers>=4.44 (5.24.0), accelerate>=0.34 (1.15.0)` for doctor."""
    return ", ".join(f"{library}>={floor} ({installed_version(library) or 'not installed'})"
                     for library, floor in ENGINE_REQUIREMENTS.get(engine, {}).items())


def tokenizer_json_generation() -> str:
    """The tokenizer.json format the installed tokenizers writes. 0.20.0 changed how BPE merges
    are written (pairs `["a", "b"]` instead of strings `"a b"`), and 0.19 cannot read the new
    form ("data did not match any variant of untagged enum ModelWrapper"); 0.20 through 0.23
    write the same bytes and read both (checked by writing and reading across releases)."""
    installed = installed_version("tokenizers")
    if installed is None:
        return "none"
    return "merges-pairs" if Version(installed) >= Version("0.20") else "merges-strings"
