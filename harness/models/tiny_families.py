"""Tiny random models of any causal-LM architecture the installed transformers ships.

`write_model(directory, spec, dims)` builds the family's config class (AutoConfig.for_model)
with the spec's tiny dimensions laid over the size keys that config has, constructs the model
from it, sets every parameter from the seed and saves it with `save_pretrained`, next to the
bundled tokenizer (vocab 512). llama and mixtral do not come here: `harness.models.tinymodel` writes
their exact layout, so their files stay byte-identical.

Weights, per parameter: a generator seeded from the spec's seed and the parameter's name (adding
a tensor never shifts the others, the scheme of `tinymodel`); norms 1 (biases 0), embeddings
N(0, 1), everything else N(0, 1/fan_in), 1-D parameters N(0, 0.02). Persistent buffers keep the
values the model computed. The output head is untied (`tie_word_embeddings: false` where the
config has it) and scaled by `lm_head_scale`, so top-1 margins are clear; a head that stays
tied is not scaled (scaling it would scale the embeddings too) and the model's
`samedevice.json` says so.

What cannot be built tiny raises `CannotBuildTiny` with the reason: encoder architectures
(BERT-style, whose causal-LM head is the encoder run with is_decoder=True), multimodal and
other composite models (a vision or audio tower, sub-models), configs transformers cannot
build a model from, and configs whose size keys this module does not know (the model would
not be tiny). `unbuildable_reason()` answers the first two without building anything.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import torch

from harness.models.model_dims import MIXTRAL_EXPERTS, VOCAB_SIZE, Dims

BUILDER_VERSION = 1  # bump when what this module writes for a spec changes (it is in the cache key)
MAX_PARAMETERS = 10_000_000  # far above any tiny preset (tiny llama: 0.12 M); beyond it a size key was missed
BOS_ID, EOS_ID = 0, 1
SLIDING_WINDOW = 8  # short enough that a 16-token case crosses it: the sliding-window cache path runs
# Sub-configs of models that are more than one decoder: a vision or audio tower (multimodal),
# or other sub-models (a byte patcher, a text encoder, a wrapper around a text_config).
MULTIMODAL_SUBCONFIGS = ("vision_config", "audio_config", "vq_config", "audio_encoder_config", "audio_encoder")
COMPOSITE_SUBCONFIGS = ("text_encoder", "patcher_config", "encoder_config", "decoder_config", "text_config")


class CannotBuildTiny(Exception):
    """This family has no tiny causal-LM form here; the message says why."""


def _size_keys(dims: Dims, max_seq_len: int) -> dict[str, int]:
    """Config keys (as architectures spell them) that set a size, and the tiny value of each."""
    h, heads, kv, head = dims.hidden_size, dims.num_heads, dims.num_kv_heads, dims.head_dim
    experts = dims.num_experts or MIXTRAL_EXPERTS["num_experts"]
    per_token = dims.experts_per_token or MIXTRAL_EXPERTS["experts_per_token"]
    table: dict[tuple[str, ...], int] = {
        ("hidden_size", "d_model", "n_embd", "embedding_size", "embedding_dim", "word_embed_proj_dim", "lru_width",
         "hidden_dim"): h,
        ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers", "num_blocks"): dims.num_layers,
        ("num_attention_heads", "n_head", "n_heads", "num_heads", "decoder_attention_heads", "attention_heads",
         "swa_num_attention_heads"): heads,
        ("num_key_value_heads", "num_kv_heads", "multi_query_group_num", "num_query_groups",
         "swa_num_key_value_heads"): kv,
        ("head_dim", "attention_head_dim", "kv_channels", "d_head", "dim_head", "swa_head_dim",
         "attention_head_size", "v_head_dim", "linear_key_head_dim", "linear_value_head_dim",
         "linear_head_dim"): head,
        ("intermediate_size", "n_inner", "ffn_dim", "decoder_ffn_dim", "moe_intermediate_size",
         "shared_expert_intermediate_size", "shared_intermediate_size", "moe_shared_expert_intermediate_size",
         "dense_intermediate_size", "intermediate_size_mlp", "expert_ffn_hidden_size", "ffn_hidden_size",
         "feed_forward_size", "dim_ff", "dff", "shared_experts_intermediate_size", "d_inner"): dims.intermediate_size,
        ("vocab_size", "unpadded_vocab_size", "decoder_vocab_size", "vocab_size_per_layer_input"): VOCAB_SIZE,
        ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "context_length",
         "max_target_positions", "model_max_length"): max_seq_len,
        ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"): experts,
        ("num_experts_per_tok", "moe_topk", "moe_k", "num_experts_per_token"): per_token,
        ("kv_lora_rank", "q_lora_rank", "o_lora_rank"): 32,  # multi-head latent attention
        ("qk_rope_head_dim", "qk_nope_head_dim"): head // 2,
        ("qk_head_dim", "index_head_dim"): head,
        ("index_n_heads", "linear_num_key_heads"): max(kv, 1),
        ("linear_num_value_heads", "linear_num_heads"): heads,
        ("mamba_d_state", "state_size", "ssm_state_size"): 16,
        ("mamba_d_head", "mamba_head_dim", "mamba_headdim"): 16,
        ("time_step_rank", "mamba_dt_rank"): 8,
        ("hidden_size_per_layer_input",): 16,
        ("laurel_rank",): 8,
        ("sliding_window", "sliding_window_size", "attention_window_size", "attention_chunk_size"): SLIDING_WINDOW,
        ("rotary_dim",): head // 2,  # partial rotary stays partial
    }
    return {key: value for keys, value in table.items() for key in keys}


# Size keys an architecture leaves unset (None) by default and derives at build time from
# other keys, at sizes that would not be tiny, or fails without.
_UNSET_SIZES = frozenset({"head_dim", "num_key_value_heads", "n_inner", "kv_channels", "num_experts_per_tok"})
_PER_TOKEN = frozenset({"num_experts_per_tok", "moe_topk", "moe_k", "num_experts_per_token"})
# Counts that must not exceed a small value (and stay as they are when already smaller).
_CAPS = {"n_shared_experts": 1, "num_shared_experts": 1, "moe_num_shared_experts": 1, "n_group": 1,
         "num_expert_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "num_dense_layers": 1,
         "n_groups": 1, "mamba_n_groups": 1, "index_topk": 8, "num_kv_shared_layers": 0,
         "n_input_layers": 1, "n_output_layers": 1}
# Layer periods and offsets: with them, a 2-layer hybrid still has one layer of each kind.
_PERIODS = {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1}
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers", "num_blocks")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kinds(values: list[Any]) -> list[Any]:
    """The distinct entries of a per-layer list, in order of first appearance."""
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(json.dumps(value, sort_keys=True), value)
    return list(seen.values())


def config_overrides(default: Any, dims: Dims, max_seq_len: int) -> dict[str, Any]:
    """What to pass to the family's config class: the tiny value of every size key its default
    config has, per-layer lists cut to the tiny depth with one layer of each kind where the depth
    allows, EOS/BOS of the bundled tokenizer, and an untied head. Derived keys are left out, so
    the config class recomputes them from the tiny values."""
    data = default.to_dict()
    sizes = _size_keys(dims, max_seq_len)
    depth = next((data[k] for k in _LAYER_COUNT_KEYS if _is_count(data.get(k))), None)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in _PER_TOKEN and _is_count(value):
            out[key] = min(value, sizes[key])  # an architecture that routes to one expert keeps one
        elif key in sizes and (_is_count(value) or (value is None and key in _UNSET_SIZES)):
            out[key] = sizes[key]
        elif key in _CAPS and _is_count(value):
            out[key] = min(value, _CAPS[key])
        elif key in _PERIODS and _is_count(value):
            out[key] = _PERIODS[key]
        elif isinstance(value, list) and value and all(isinstance(v, (str, bool, int)) for v in value):
            if depth is not None and len(value) == depth:  # one entry per layer
                kinds = _kinds(value)
                out[key] = [kinds[i % len(kinds)] for i in range(dims.num_layers)]
            elif all(isinstance(v, str) for v in value):  # a repeating pattern of layer kinds
                out[key] = _kinds(value)
            elif all(_is_count(v) for v in value) and ("layer" in key or "idx" in key):  # layer indices
                kept = [v for v in value if v < dims.num_layers]
                out[key] = kept or [dims.num_layers - 1]
    # Multi-head latent attention: the rotary tables follow the rope part of the head, and keys
    # and values have a head per query head (as every released MLA model's config says).
    if "kv_lora_rank" in data:
        if "head_dim" in data:
            out["head_dim"] = sizes["qk_rope_head_dim"]
        if "num_key_value_heads" in data:
            out["num_key_value_heads"] = sizes["num_attention_heads"]
    # Mamba-2 style mixers: heads x head size must be expand x hidden.
    if "expand" in data and "state_size" in data and "num_heads" in data and "num_attention_heads" not in data:
        out["head_dim"] = 16
        out["num_heads"] = (data.get("expand") or 2) * dims.hidden_size // 16
    for key in ("mamba_n_heads", "mamba_num_heads", "n_mamba_heads"):
        if _is_count(data.get(key)):
            out[key] = (data.get("mamba_expand") or 2) * dims.hidden_size // 16
    if _is_count(data.get("mamba_d_ssm")):  # the mixer's width: heads x head size
        out["mamba_d_ssm"] = (data.get("mamba_expand") or 2) * dims.hidden_size
    # A hybrid whose attention layers are listed: the last of the tiny layers is one. (Defaults of
    # no attention at all, as bamba's and granitemoehybrid's, cannot generate: transformers'
    # cache needs one attention layer to count the sequence.)
    if "attn_layer_indices" in data and not data["attn_layer_indices"]:
        out["attn_layer_indices"] = [dims.num_layers - 1]
    if set(out.get("layer_types") or ()) == {"linear_attention"}:
        out["layer_types"] = [*out["layer_types"][:-1], "full_attention"]
    # Keys an attribute_map aliases (gpt2's n_embd is hidden_size) but to_dict() spells otherwise.
    aliases = getattr(default, "attribute_map", {}) or {}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "max_position_embeddings"):
        if key in aliases and aliases[key] not in out:
            out[key] = sizes[key]
    if "tie_word_embeddings" in data:
        out["tie_word_embeddings"] = False
    out |= {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
    pad = data.get("pad_token_id")
    if pad is not None and not (_is_count(pad) and 0 <= pad < VOCAB_SIZE):  # kept where it is a token id
        out["pad_token_id"] = EOS_ID  # (ProphetNet's positions count from its padding id: 1 breaks them)
    return out


@cache
def unbuildable_reason(family: str) -> str | None:
    """Why `family` has no tiny decoder-only form, decided from its classes without building."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    from harness.models.tiny_multimodal import RECIPES, no_recipe_reason

    if family in RECIPES:  # an image-text model with its processor (harness.models.tiny_multimodal)
        return None
    class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(family)
    if class_name is None:
        if family in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            return no_recipe_reason(family)
        return f"{family} is not a causal-LM model type of this transformers"
    try:
        default = AutoConfig.for_model(family)
    except Exception as exc:
        return f"its default config does not build: {_short(exc, validation=True)}"
    subconfigs = list(getattr(default, "sub_configs", {}) or {})
    multimodal = [k for k in subconfigs if k in MULTIMODAL_SUBCONFIGS]
    if multimodal:
        return (f"multimodal: {class_name} needs {', '.join(multimodal)} (a vision or audio tower and its "
                f"processor), and harness/models/tiny_multimodal.py has no recipe for {family}")
    composite = [k for k in subconfigs if k in COMPOSITE_SUBCONFIGS]
    if composite:
        return f"composite: {class_name} is built from sub-models ({', '.join(composite)}), not one decoder"
    model_class = _model_class(class_name)
    with contextlib.suppress(OSError, TypeError):
        if "is_decoder=True" in inspect.getsource(model_class):
            return (f"encoder architecture: {class_name} is a BERT-style encoder run with is_decoder=True, "
                    "not a decoder-only model")
    return None


def _model_class(class_name: str) -> Any:
    import transformers

    return getattr(transformers, class_name)


def tiny_config(spec: Any, dims: Dims) -> Any:
    """The family's config class at the spec's tiny dimensions."""
    from transformers import AutoConfig

    from harness.models import tiny_multimodal

    reason = unbuildable_reason(spec.family)
    if reason is not None:
        raise CannotBuildTiny(reason)
    if spec.family in tiny_multimodal.RECIPES:
        return tiny_multimodal.tiny_config(spec, dims)
    default = AutoConfig.for_model(spec.family)
    overrides = config_overrides(default, dims, spec.max_seq_len)
    if (spec.num_experts or spec.experts_per_token) and not any(
            k in overrides for k in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")):
        raise ValueError(f"num_experts and experts_per_token: family {spec.family} has no experts")
    try:
        return AutoConfig.for_model(spec.family, **overrides)
    except Exception as exc:
        refused = exc
    if overrides.get("num_key_value_heads", dims.num_heads) != dims.num_heads:
        # Some architectures take no grouped-query attention: one key/value head per query head.
        with contextlib.suppress(Exception):
            return AutoConfig.for_model(spec.family, **(overrides | {"num_key_value_heads": dims.num_heads}))
    raise CannotBuildTiny(f"its config refuses the tiny dimensions: {_short(refused, validation=True)}") from refused


def config_fingerprint(spec: Any) -> str:
    """A digest of the tiny config this spec builds (for the cache key: a change to the size
    table, or to the config class's defaults, is a new model)."""
    import hashlib

    from harness.models.model_dims import resolve_dims

    config = tiny_config(spec, resolve_dims(spec)).to_dict()
    config.pop("transformers_version", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_model(directory: Path, spec: Any, dims: Dims) -> None:
    """The tiny model of `spec.family` in transformers' format, into `directory`."""
    from transformers import AutoModelForCausalLM

    from harness.models import tiny_multimodal

    if spec.family in tiny_multimodal.RECIPES:
        tiny_multimodal.write_model(directory, spec, dims)
        return
    config = tiny_config(spec, dims)
    try:
        with torch.device("meta"):  # count before allocating: a missed size key could mean billions
            meta = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # the architecture's own code refuses its config: news about transformers
        raise CannotBuildTiny(f"transformers cannot build it from its config: {_short(exc)}{_library_site(exc)}") from exc
    count = sum(p.numel() for p in meta.parameters())
    if count > MAX_PARAMETERS:
        name, largest = max(meta.named_parameters(), key=lambda item: item[1].numel())
        raise CannotBuildTiny(f"not tiny with the size keys this harness knows: {count / 1e6:.0f} M parameters "
                              f"(largest {name} {tuple(largest.shape)})")
    del meta
    with torch.random.fork_rng(devices=[]):  # from_config's own init draws from the global RNG
        model = AutoModelForCausalLM.from_config(config).float().eval()
    notes = _set_weights(model, spec.seed, spec.lm_head_scale)
    model.save_pretrained(directory, safe_serialization=True)
    _finish_config(directory / "config.json")
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False}))
    (directory / "samedevice.json").write_text(json.dumps(
        {"family": spec.family, "parameters": count, "notes": notes}, indent=2))


def _set_weights(model: torch.nn.Module, seed: int, head_scale: float) -> list[str]:
    owners = {id(p): module for module in model.modules() for p in module.parameters(recurse=False)}
    head: Any = model.get_output_embeddings()  # type: ignore[operator]  # a PreTrainedModel
    embeddings: Any = model.get_input_embeddings()  # type: ignore[operator]
    tied = head is not None and embeddings is not None and head.weight is embeddings.weight
    with torch.no_grad():
        for name, param in model.named_parameters():
            owner = owners.get(id(param))
            generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**64)
            if owner is not None and "norm" in type(owner).__name__.lower():
                param.fill_(0.0 if name.endswith("bias") else 1.0)
                continue
            if isinstance(owner, torch.nn.Embedding):
                std = 1.0
            elif param.dim() >= 2:
                std = param.shape[-1] ** -0.5
            else:
                std = 0.02
            param.copy_(torch.randn(param.shape, generator=generator) * std)
        if head is not None and not tied:
            head.weight.mul_(head_scale)
    if head is None:
        return ["no output embeddings found: the head is not scaled"]
    return ["lm_head is tied to the embeddings: not scaled"] if tied else []


def _finish_config(path: Path) -> None:
    """rope_theta at the top level where the architecture has rope (transformers 5 writes only
    rope_parameters; other engines read rope_theta)."""
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _library_site(exc: BaseException) -> str:
    """" at transformers/models/x/modeling_x.py:N", the innermost frame in site-packages."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "site-packages" in f.filename]
    return f" at {frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno}" if frames else ""


def _short(exc: BaseException, validation: bool = False) -> str:
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if validation and len(text) > 1:  # "Class validation error for validator ...:" then the reason
        text = text[1:]
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
