"""Where a scenario's model comes from, and what the harness needs to know about it.

Three sources (`model:` in a scenario): a generated tiny model (`family:`, built by
`harness.models.tinymodel`), a local transformers-format directory (`path:`) and a model in the
local Hugging Face cache (`hub:` + `revision:`, never downloaded). `locate()` gives the
directory; `read_info()` what the harness takes from it: the architecture (config.json's
model_type), the vocabulary size, the EOS id (generation_config.json, else config.json) and
the longest sequence. Problems are `ModelSourceError`s naming the `model` field they are
about and the path they concern, so the loader can report them as one line.

Torch-free: the loader checks path and hub models with this module when the file loads.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class ModelSourceError(Exception):
    """A model that cannot be used; `field` is the key under `model:` it is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ModelInfo:
    directory: Path
    family: str  # config.json's model_type
    vocab_size: int
    eos_id: int
    max_positions: int | None  # max_position_embeddings, where the config says
    tokenizer_json: Path | None  # None: AutoTokenizer reads the tokenizer's own files
    weight_bytes: int  # the *.safetensors files, summed
    num_layers: int | None = None  # decoder layers (num_hidden_layers, n_layer), where the config says


def hub_cache_dir() -> Path:
    """The Hugging Face cache, by huggingface_hub's own rules, read now (not at import)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def locate(spec: Any) -> Path:
    """The model directory of `spec`; a generated model is built on first use (imports torch)."""
    from harness.format.scenario import HubModel, PathModel

    if isinstance(spec, PathModel):
        directory = Path(spec.path)
        if not directory.exists():
            raise ModelSourceError("path", f"{directory}: no such directory")
        if not directory.is_dir():
            raise ModelSourceError("path", f"{directory}: not a directory")
        return directory
    if isinstance(spec, HubModel):
        return _hub_snapshot(spec.hub, spec.revision)
    from harness.models import tinymodel

    return tinymodel.model_dir(spec)


def _hub_snapshot(repo: str, revision: str) -> Path:
    cache = hub_cache_dir()
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise ModelSourceError("hub", "huggingface_hub is not installed (pip install huggingface_hub)") from None
    try:
        # local_files_only: the harness never downloads (HF_HUB_OFFLINE semantics).
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise ModelSourceError("hub", f"{repo} at revision {revision} is not in the local Hugging Face cache {cache} "
                                      "(samedevice never downloads: fetch it first, e.g. "
                                      f"`hf download {repo} --revision {revision}`, or point HF_HUB_CACHE "
                                      "at the cache that has it)") from None


def read_info(directory: Path, field: str = "path") -> ModelInfo:
    """What the harness needs from a transformers-format directory, or the file that is missing."""
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(field, f"{directory}: no config.json (not a transformers-format model directory)") from None
    except (OSError, ValueError) as exc:
        raise ModelSourceError(field, f"{config_path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelSourceError(field, f"{config_path}: not a JSON object")
    text: dict = config["text_config"] if isinstance(config.get("text_config"), dict) else {}
    vocab = config.get("vocab_size", text.get("vocab_size"))
    if not isinstance(vocab, int) or vocab <= 0:
        raise ModelSourceError(field, f"{config_path}: no vocab_size")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise ModelSourceError(field, f"{directory}: no *.safetensors weights")
    tokenizer_json = directory / "tokenizer.json"
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ModelSourceError(field, f"{directory}: no tokenizer (tokenizer.json, or tokenizer_config.json with "
                                      "its vocabulary files)")
    eos = _eos_id(directory, config, text)
    if eos is None:
        raise ModelSourceError(field, f"{directory}: no eos_token_id in generation_config.json or config.json")
    positions = config.get("max_position_embeddings", text.get("max_position_embeddings"))
    layers = next((c[key] for key in ("num_hidden_layers", "n_layer", "num_layers") for c in (config, text)
                   if isinstance(c.get(key), int) and not isinstance(c.get(key), bool) and c[key] > 0), None)
    return ModelInfo(
        directory=directory,
        family=str(config.get("model_type", "")),
        vocab_size=vocab,
        eos_id=eos,
        max_positions=positions if isinstance(positions, int) and positions > 0 else None,
        tokenizer_json=tokenizer_json if tokenizer_json.is_file() else None,
        weight_bytes=sum(p.stat().st_size for p in weights),
        num_layers=layers,
    )


def _eos_id(directory: Path, config: dict, text: dict) -> int | None:
    """generation_config.json's eos_token_id, else config.json's; the first of a list."""
    candidates = []
    with contextlib.suppress(OSError, ValueError, AttributeError):
        candidates.append(json.loads((directory / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id"))
    candidates += [config.get("eos_token_id"), text.get("eos_token_id")]
    for value in candidates:
        if isinstance(value, list) and value and isinstance(value[0], int):
            return value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@lru_cache(maxsize=32)
def describe_model(spec: Any) -> ModelInfo:
    """`read_info(locate(spec))`, once per process and spec."""
    from harness.format.scenario import HubModel

    return read_info(locate(spec), "hub" if isinstance(spec, HubModel) else "path")


def family_of(spec: Any) -> str:
    """The architecture a case runs (what engines declare in `Capabilities.families`)."""
    from harness.format.scenario import ModelSpec

    if isinstance(spec, ModelSpec):
        return spec.family
    return describe_model(spec).family
