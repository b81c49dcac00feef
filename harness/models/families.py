"""Which model families a scenario may name, without importing torch or transformers.

`llama` and `mixtral` are the harness's own layouts (`harness.models.tinymodel` writes them byte
for byte); every other name is a causal-LM model type of the installed transformers (its
`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`), built tiny from that architecture's config class by
`harness.models.tiny_families`. The list is read from transformers' source with `ast`: importing
the mapping would import torch, and the scenario format must check names without it.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path

from harness.format.suggest import did_you_mean

BUNDLED_FAMILIES = ("llama", "mixtral")
# `family: all` (or a list of names) makes the loader expand one scenario per family.
ALL_FAMILIES = "all"
_MAPPING = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
_IMAGE_TEXT_MAPPING = "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"


def causal_lm_families() -> tuple[str, ...] | None:
    """Every causal-LM model type of the installed transformers, in its own order; None when
    transformers is absent or its mapping cannot be read (names are then checked when a case
    builds its model)."""
    return _mapping_names(_MAPPING)


def image_text_families() -> tuple[str, ...] | None:
    """Every image-text-to-text model type of the installed transformers (llava, gemma3, ...):
    what `family: all` means in a scenario with `inputs: {image: ...}`."""
    return _mapping_names(_IMAGE_TEXT_MAPPING)


@lru_cache(maxsize=4)
def _mapping_names(mapping: str) -> tuple[str, ...] | None:
    try:
        spec = importlib.util.find_spec("transformers")  # locates the package, runs nothing
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "auto" / "modeling_auto.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == mapping for t in node.targets)
                and isinstance(node.value, ast.Call) and node.value.args):
            try:
                pairs = ast.literal_eval(node.value.args[0])
            except ValueError:
                return None
            return tuple(dict.fromkeys(name for name, _ in pairs))
    return None


def known_families() -> tuple[str, ...] | None:
    """The names a scenario may use: the bundled two, transformers' causal LMs and its
    image-text models."""
    shipped = causal_lm_families()
    if shipped is None:
        return None
    return tuple(dict.fromkeys((*BUNDLED_FAMILIES, *shipped, *(image_text_families() or ()))))


def all_families(multimodal: bool) -> tuple[str, ...] | None:
    """What `family: all` expands to: the causal LMs (and the bundled two), or for a scenario
    with an image input, the image-text families."""
    if multimodal:
        return image_text_families()
    shipped = causal_lm_families()
    return None if shipped is None else tuple(dict.fromkeys((*BUNDLED_FAMILIES, *shipped)))


def unknown_family_message(name: str) -> str | None:
    """Why `name` is no family ("did you mean"), or None when it is one (or unknowable here)."""
    known = known_families()
    if known is None or name in known:
        return None
    hint = did_you_mean(name, known, otherwise="see `samedevice architectures` for the list")
    return (f"unknown model family {name!r}: not llama, mixtral or a causal-LM or image-text model type of the "
            f"installed transformers ({hint})")
