"""Tiny image-text models of the installed transformers' multimodal families, with their processors.

`write_model(directory, spec, dims)` builds the family's composite config (AutoConfig.for_model)
with the text model at the spec's tiny dimensions (the text families' size table,
`tiny_families.config_overrides`) and a vision tower of `VISION` dims, constructs the
image-text-to-text model, sets every parameter from the seed (`tiny_families._set_weights`: same
scheme, head scaled) and saves it next to a processor built here, nothing from the Hub: the
family's image processor class at a small image size, and the bundled tokenizer (vocab 512) with
the family's image tokens added after it (ids 512...). `samedevice.json` records the prompt
format (where the image goes in the text) the transformers engine hands the processor.

Only families with a recipe in `RECIPES` are built; every other multimodal family of the
installed transformers is listed by `unbuildable_reason` with why. `generated_image` is the
scenario's `inputs.image`: deterministic from its seed and size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.models.model_dims import VOCAB_SIZE, Dims

# Vision towers: 2 layers (llava reads the second-to-last hidden state), width 32.
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


@dataclass(frozen=True)
class Recipe:
    tokens: dict[str, str]  # the tokenizer's named multimodal tokens (image_token, boi_token, ...), added in order
    vision: dict[str, Any]  # vision_config keys over VISION
    top: dict[str, Any]  # composite-config keys; a value naming a token ("<image>") becomes its id
    image_size: int  # side of the square image the image processor resizes to
    prompt: str  # the text handed to the processor: {prompt} is the scenario's prompt
    processor: dict[str, Any] = field(default_factory=dict)  # processor-class arguments
    image_processor: dict[str, Any] = field(default_factory=dict)  # image-processor arguments, over the size
    text: dict[str, Any] = field(default_factory=dict)  # text_config keys over the tiny sizes
    image_attributes: dict[str, Any] = field(default_factory=dict)  # set on the image processor after building


RECIPES: dict[str, Recipe] = {
    # CLIP tower, 28 px / patch 7: 16 patches (+ CLS, dropped), 16 image tokens.
    "llava": Recipe(
        tokens={"image_token": "<image>"},
        vision={"image_size": 28, "patch_size": 7, "projection_dim": 32},
        top={"image_token_index": "<image>", "image_seq_length": 16},
        image_size=28,
        prompt="USER: <image>\n{prompt} ASSISTANT:",
        processor={"patch_size": 7, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
        image_processor={"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}},
    ),
    # SigLIP tower, 28 px / patch 7: 16 image tokens after the BOS-less prefix the processor writes.
    "paligemma": Recipe(
        tokens={"image_token": "<image>"},
        vision={"image_size": 28, "patch_size": 7, "projection_dim": 64},
        top={"image_token_index": "<image>", "projection_dim": 64, "hidden_size": 64},
        text={"num_image_tokens": 16},
        image_size=28,
        prompt="<image>{prompt}",
        image_processor={"size": {"height": 28, "width": 28}},
        image_attributes={"image_seq_length": 16},
    ),
    # SigLIP tower, 32 px / patch 8: 16 patches pooled to 4 image tokens between BOI and EOI.
    "gemma3": Recipe(
        tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
        vision={"image_size": 32, "patch_size": 8},
        top={"image_token_index": "<image_soft_token>", "boi_token_index": "<start_of_image>",
             "eoi_token_index": "<end_of_image>", "mm_tokens_per_image": 4},
        image_size=32,
        prompt="<start_of_image>{prompt}",
        processor={"image_seq_length": 4},
        image_processor={"size": {"height": 32, "width": 32}},
    ),
}


# Families of the installed transformers with an image processor this module cannot build here.
_NEEDS_TORCHVISION = ("qwen2_vl", "qwen2_5_vl")


def no_recipe_reason(family: str) -> str:
    """Why an image-text family of the installed transformers has no tiny model here."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    class_name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(family, family)
    if family in _NEEDS_TORCHVISION:
        return (f"multimodal: {class_name}'s processor takes a video processor, which needs torchvision "
                "(not installed here)")
    return (f"multimodal: {class_name} (a vision tower and its processor): harness/models/tiny_multimodal.py has no "
            f"recipe for {family} (built tiny: {', '.join(RECIPES)})")


def generated_image(size: int, seed: int) -> Any:
    """A square RGB image (PIL) of `size` pixels: smooth colour gradients plus seeded noise,
    the same for the same seed and size on every machine."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    axis = np.linspace(0.0, 1.0, size)
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [np.sin(2 * np.pi * (np.add.outer(axis, axis * (c + 1))) + phase[c]) for c in range(3)]
    pixels = (np.stack(channels, -1) * 0.4 + 0.5 + rng.normal(0, 0.08, (size, size, 3))).clip(0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8), "RGB")


def is_multimodal_dir(directory: Path) -> bool:
    info = directory / "samedevice.json"
    return info.is_file() and "image_prompt" in json.loads(info.read_text())


def image_prompt(directory: Path) -> str:
    return json.loads((directory / "samedevice.json").read_text())["image_prompt"]


def _token_ids(recipe: Recipe) -> dict[str, int]:
    return {token: VOCAB_SIZE + index for index, token in enumerate(recipe.tokens.values())}


def tiny_config(spec: Any, dims: Dims) -> Any:
    """The family's composite config: tiny text model, tiny vision tower, token ids past the
    bundled vocabulary."""
    from transformers import AutoConfig

    from harness.models.tiny_families import EOS_ID, config_overrides

    recipe = RECIPES[spec.family]
    default = AutoConfig.for_model(spec.family)
    ids = _token_ids(recipe)
    text_default = default.get_text_config()
    text = config_overrides(text_default, dims, spec.max_seq_len) | recipe.text
    text["vocab_size"] = VOCAB_SIZE + len(ids)
    if text.get("pad_token_id") is not None or "pad_token_id" in text_default.to_dict():
        text["pad_token_id"] = EOS_ID
    vision = VISION | recipe.vision
    top = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in recipe.top.items()}
    top |= {"text_config": text, "vision_config": vision}
    if "tie_word_embeddings" in default.to_dict():
        top["tie_word_embeddings"] = False
    if "vocab_size" in default.to_dict():
        top["vocab_size"] = text["vocab_size"]
    return AutoConfig.for_model(spec.family, **top)


def build_processor(directory: Path, family: str) -> Any:
    """The family's processor from local parts: its image processor class at the recipe's
    size, and the bundled tokenizer (already in `directory`) with the image tokens added."""
    import transformers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.auto.image_processing_auto import (
        IMAGE_PROCESSOR_MAPPING_NAMES,
        get_image_processor_class_from_name,
    )
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    recipe = RECIPES[family]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", pad_token="</s>",
                                        extra_special_tokens=dict(recipe.tokens))
    tokenizer.add_special_tokens({"additional_special_tokens": list(recipe.tokens.values())})
    assert [tokenizer.convert_tokens_to_ids(t) for t in recipe.tokens.values()] == list(_token_ids(recipe).values())
    classes = IMAGE_PROCESSOR_MAPPING_NAMES[family]
    name = classes.get("pil") if isinstance(classes, dict) else classes[0]
    assert name is not None, f"transformers names no PIL image processor for {family}"
    image_processor = get_image_processor_class_from_name(name)(**recipe.image_processor)
    for key, value in recipe.image_attributes.items():
        setattr(image_processor, key, value)
    processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES[family])
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, **recipe.processor)


def write_model(directory: Path, spec: Any, dims: Dims) -> None:
    """The tiny image-text model of `spec.family` and its processor, into `directory`."""
    from transformers import AutoModelForImageTextToText

    from harness.models.tiny_families import (
        BOS_ID,
        EOS_ID,
        MAX_PARAMETERS,
        CannotBuildTiny,
        _finish_config,
        _library_site,
        _set_weights,
        _short,
    )

    config = tiny_config(spec, dims)
    try:
        with torch.random.fork_rng(devices=[]):
            model = AutoModelForImageTextToText.from_config(config).float().eval()
    except Exception as exc:
        raise CannotBuildTiny(f"transformers cannot build it from its config: {_short(exc)}{_library_site(exc)}") from exc
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise CannotBuildTiny(f"not tiny: {count / 1e6:.0f} M parameters")
    notes = _set_weights(model, spec.seed, spec.lm_head_scale)
    model.save_pretrained(directory, safe_serialization=True)
    _finish_config(directory / "config.json")
    build_processor(directory, spec.family).save_pretrained(directory)
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False}))
    (directory / "samedevice.json").write_text(json.dumps(
        {"family": spec.family, "parameters": count, "notes": notes,
         "image_prompt": RECIPES[spec.family].prompt, "image_size": RECIPES[spec.family].image_size}, indent=2))
