"""Outlines before 1.0 for the outlines engine. The 1.x path stays in outlines_engine.py; the
engine calls `wrap_model` in load() and, before 1.0, `generate_legacy` in generate().

Before 1.0 there were two shapes of the same API (`outlines.generate.json` / `.text` with a
sampler object), told apart by what they offer rather than by version numbers:
- 0.0.28-0.0.36: `outlines.models.Transformer(model, TransformerTokenizer(model_name))` and
  Outlines' own token loop with a KV cache (`generator(prompt, max_tokens=, rng=)`);
- 0.0.37-0.2.x: `outlines.models.Transformers(model, hf_tokenizer)`; from 0.0.4x the
  generator is an adapter over transformers' generate() (`generator(prompt, max_tokens=, seed=)`).

Which releases take which path is read from package metadata (harness/engines/versions.py), and the
engine's requirements there say which ones are supported at all.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any

import torch

from harness.engines import versions
from harness.engines.base import Generation, Request
from harness.engines.versions import at_least


def is_legacy() -> bool:
    """Outlines before 1.0 (0.0.x to 0.2.x): the generate.json / samplers API."""
    return not at_least("outlines", "1.0")


def legacy_problem() -> str | None:
    """Why Outlines before 1.0 cannot run here, beyond the version floors: its
    TransformerTokenizer hashes itself with `datasets.fingerprint` when it builds a regex
    index, and 0.0.28-0.0.3x do not declare `datasets` as a dependency."""
    if is_legacy() and versions.installed_version("datasets") is None:
        return f"outlines {versions.installed_version('outlines')} needs datasets (pip install datasets)"
    return None


def wrap_model(hf_model: Any, hf_tokenizer: Any, model_dir: Any) -> Any:
    """The Outlines model object around an already placed transformers model."""
    if not is_legacy():
        import outlines

        return outlines.from_transformers(hf_model, hf_tokenizer)
    models = _legacy("outlines.models")
    if hasattr(models, "Transformers"):  # 0.0.37 and later: wraps the tokenizer object
        return models.Transformers(hf_model, hf_tokenizer)
    wrappers = _legacy("outlines.models.transformers")
    # Before 0.0.37 the tokenizer wrapper loads the tokenizer itself, from the model directory.
    return wrappers.Transformer(hf_model, wrappers.TransformerTokenizer(str(model_dir)))


def _legacy(module: str) -> Any:
    """An Outlines module, untyped: the installed Outlines' stubs (if 1.x) describe another API."""
    return importlib.import_module(module)


def _sampler(request: Request) -> Any:
    samplers = _legacy("outlines.samplers")
    sampling = request.spec.sampling
    if sampling.greedy:
        return samplers.greedy()
    knobs = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
    knobs = {name: value for name, value in knobs.items() if value}
    if knobs and not at_least("outlines", "0.0.30"):
        # 0.0.28/0.0.29's MultinomialSampler takes only `samples`: refuse rather than ignore.
        raise NotImplementedError(f"outlines before 0.0.30 cannot sample with {', '.join(knobs)}")
    return samplers.multinomial(**knobs)


def generate_legacy(engine: Any, request: Request) -> Generation:
    """The outlines engine's generate() on Outlines before 1.0: raw text out (the JSON is not parsed
    here, so a truncated or invalid document reaches the harness's checks as it came)."""
    generate = _legacy("outlines.generate")
    spec = request.spec
    if spec.beams is not None:
        raise NotImplementedError("the outlines engine does not run beam search")
    model = engine.model
    if spec.json_schema is not None:
        generator = generate.json(model, json.dumps(spec.json_schema), _sampler(request))
        generator.format_sequence = lambda text: text  # keep the text; it would json.loads it
    else:
        generator = generate.text(model, _sampler(request))
    takes_rng = "rng" in inspect.signature(generator.__call__).parameters
    seed = spec.sampling.seed
    texts = []
    for prompt in spec.prompts:
        request.on_phase("prefill")
        torch.manual_seed(seed)
        if takes_rng:  # its own token loop draws from `rng`, made on the model's device as it does
            seeding: dict[str, Any] = {"rng": torch.Generator(device=engine.hf.input_device).manual_seed(seed)}
        else:
            seeding = {"seed": seed}
        texts.append(str(generator(prompt, max_tokens=spec.max_new_tokens, **seeding)))
    return Generation(tokens=[[] for _ in texts], texts=texts)
