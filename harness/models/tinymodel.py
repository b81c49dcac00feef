"""Tiny models generated locally and deterministically: nothing is downloaded.

`model_dir(spec)` returns a transformers-format directory (config.json, model.safetensors,
tokenizer.json) built from the spec's seed, cached under `cache_root()`. Every engine loads
the same directory, so the reference and transformers run the *same* weights. llama and
mixtral are written here in their exact layout; every other family is built from its
transformers config class by `harness.models.tiny_families`.

Random weights give near-flat logits (top-1/top-2 gaps of 1e-3) and greedy parity would
flip on any rounding change; the lm_head is scaled up (`lm_head_scale`, x50 by default)
so top-1 margins are clear.

A model is written into a staging directory beside its target and renamed into place. A
staging directory is named `.build-<host>-<pid>-<random>` after the process building it, so
one left by a killed build is removed: by the harness right after it kills a case worker,
and on the next build or worker start (its builder is gone, or it is over an hour old).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import torch

from harness.format.scenario import ModelSpec
from harness.models.families import BUNDLED_FAMILIES
from harness.models.model_dims import PRESETS, VOCAB_SIZE, Dims, resolve_dims  # noqa: F401

# Dimensions and tokenizer live in torch-free modules (the scenario format checks with them);
# re-exported here for the factory's users.
from harness.models.tokenizer import CORPUS, SPECIAL_TOKENS  # noqa: F401
from harness.models.tokenizer import trained_tokenizer_json as _trained_tokenizer_json

FACTORY_VERSION = 1  # bump when the weights or tokenizer a spec produces change
BOS_ID, EOS_ID = 0, 1


def cache_root() -> Path:
    return Path(os.environ.get("SAMEDEVICE_CACHE", Path.home() / ".cache" / "samedevice"))


STAGING_PREFIX = ".build-"
STALE_STAGING_S = 3600.0  # a build takes seconds; an hour-old staging directory is abandoned


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"


def _staging_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) from a staging directory's name, or None for an older unnamed one."""
    parts = name[len(STAGING_PREFIX):].rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: rely on the age instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(owner: int | None = None) -> list[Path]:
    """Remove model staging directories left by killed builds: those built by process
    `owner` on this host (a worker just killed), or with no owner, every one whose builder
    on this host is gone or that is older than STALE_STAGING_S. Returns what was removed."""
    models = cache_root() / "models"
    try:
        entries = [e for e in models.iterdir() if e.name.startswith(STAGING_PREFIX)]
    except OSError:
        return []
    host, removed = _host_tag(), []
    for entry in entries:
        built_by = _staging_owner(entry.name)
        builder = built_by[1] if built_by is not None and built_by[0] == host else None  # a pid on this host
        if owner is not None:
            stale = builder == owner
        else:
            try:
                age = time.time() - entry.stat().st_mtime
            except OSError:
                continue
            stale = (builder is not None and not _pid_alive(builder)) or age > STALE_STAGING_S
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def model_dir(spec: ModelSpec) -> Path:
    """The model directory for `spec`, generating it on first use (safe across processes)."""
    dims = resolve_dims(spec)
    key = json.dumps(
        {"v": FACTORY_VERSION, "family": spec.family, "seed": spec.seed, "scale": spec.lm_head_scale,
         "max_seq_len": spec.max_seq_len, **asdict(dims), **file_format_generations(), **_family_key(spec)},
        sort_keys=True,
    )
    target = cache_root() / "models" / f"{spec.family}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging()
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{_host_tag()}-{os.getpid()}-", dir=target.parent))
    try:
        _write_model(staging, spec, dims)
        try:
            staging.rename(target)  # atomic: concurrent builders race, one wins
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def file_format_generations() -> dict[str, str]:
    """What, besides the spec and FACTORY_VERSION, changes the files `_write_model` writes: the
    tokenizer.json format of the installed tokenizers (0.19 cannot read what 0.20+ writes).
    config.json and generation_config.json are written here as plain JSON and the weights with
    safetensors' stable format, so the transformers and safetensors versions do not enter."""
    from harness.engines.versions import tokenizer_json_generation

    return {"tokenizer_json": tokenizer_json_generation()}


def _family_key(spec: ModelSpec) -> dict[str, str]:
    """What else decides the files of a family built from transformers' config classes: their
    defaults and the model's layout belong to the installed transformers. (Nothing for llama and
    mixtral, whose layout is written here: their cache keys stay as they were.)"""
    if spec.family in BUNDLED_FAMILIES:
        return {}
    import transformers

    from harness.models.tiny_families import BUILDER_VERSION, config_fingerprint

    return {"builder": str(BUILDER_VERSION), "transformers_release": transformers.__version__,
            "config": config_fingerprint(spec)}


def _write_model(directory: Path, spec: ModelSpec, dims: Dims) -> None:
    from safetensors.torch import save_file

    tokenizer_path(directory)
    if spec.family not in BUNDLED_FAMILIES:
        from harness.models.tiny_families import write_model

        write_model(directory, spec, dims)
        return
    save_file(_weights(spec, dims), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(_config(spec, dims), indent=2))
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False})
    )


def _config(spec: ModelSpec, dims: Dims) -> dict:
    config = {
        "architectures": ["MixtralForCausalLM" if spec.family == "mixtral" else "LlamaForCausalLM"],
        "model_type": spec.family,
        "hidden_size": dims.hidden_size,
        "intermediate_size": dims.intermediate_size,
        "num_hidden_layers": dims.num_layers,
        "num_attention_heads": dims.num_heads,
        "num_key_value_heads": dims.num_kv_heads,
        "head_dim": dims.hidden_size // dims.num_heads,
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": spec.max_seq_len,
        "rms_norm_eps": 1e-5,
        # transformers 5 writes rope_parameters only; other engines (mistral.rs) need rope_theta.
        "rope_theta": 10000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float32",
    }
    if spec.family == "mixtral":
        config.update(num_local_experts=dims.num_experts, num_experts_per_tok=dims.experts_per_token,
                      router_aux_loss_coef=0.0, output_router_logits=False)
    return config


def _shapes(spec: ModelSpec, dims: Dims) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes in transformers' checkpoint layout."""
    h, i, head = dims.hidden_size, dims.intermediate_size, dims.hidden_size // dims.num_heads
    kv = dims.num_kv_heads * head
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (VOCAB_SIZE, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (VOCAB_SIZE, h),
    }
    for layer in range(dims.num_layers):
        p = f"model.layers.{layer}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
        }
        if spec.family == "mixtral":
            shapes[p + "block_sparse_moe.gate.weight"] = (dims.num_experts, h)
            for e in range(dims.num_experts):
                q = f"{p}block_sparse_moe.experts.{e}."
                shapes |= {q + "w1.weight": (i, h), q + "w2.weight": (h, i), q + "w3.weight": (i, h)}
        else:
            shapes |= {p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i)}
    return shapes


def _weights(spec: ModelSpec, dims: Dims) -> dict[str, torch.Tensor]:
    weights = {}
    for name, shape in _shapes(spec, dims).items():
        if name.endswith("norm.weight"):
            weights[name] = torch.ones(shape)
            continue
        # One generator per tensor, seeded from its name: adding a tensor never shifts others.
        # Modulo 2**64: a seed near the format's 64-bit limit would overflow the generator
        # (no change for any seed below about 1.8e13, so cached models stay valid).
        generator = torch.Generator().manual_seed((spec.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**64)
        std = 1.0 if name == "model.embed_tokens.weight" else shape[-1] ** -0.5
        weights[name] = torch.randn(shape, generator=generator) * std
    weights["lm_head.weight"] *= spec.lm_head_scale
    return weights


def tokenizer_path(directory: Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json into `directory`."""
    (directory / "tokenizer.json").write_text(_trained_tokenizer_json())
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "unk_token": SPECIAL_TOKENS[2],
        "add_bos_token": False, "add_eos_token": False, "model_max_length": 8192,
    }))
    return directory / "tokenizer.json"
