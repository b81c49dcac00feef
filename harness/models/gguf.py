"""Write a tiny model directory as a GGUF file (f32 or Q8_0) for llama.cpp, from the same
weights every other engine loads. Mirrors what llama.cpp's convert_hf_to_gguf.py does for
a llama: tensor names, the Q/K row permutation for its rotary layout, and a gpt2-style
byte-level BPE vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
QTYPES = ("f32", "q8_0")


def gguf_name(name: str) -> str:
    if name in _NAMES:
        return _NAMES[name]
    _, _, layer, rest = name.split(".", 3)
    return f"blk.{layer}.{_LAYER_NAMES[rest]}"


def permute_for_rope(weights: np.ndarray, heads: int) -> np.ndarray:
    """transformers' half-rotation layout to llama.cpp's interleaved one (per head)."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def gguf_file(model_dir: Path, qtype: str = "f32") -> Path:
    """The GGUF file for `model_dir`, written on first use."""
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}, got {qtype!r}")
    path = model_dir / f"model-{qtype}.gguf"
    if not path.exists():
        staging = path.with_suffix(".tmp")
        _write(model_dir, staging, qtype)
        staging.replace(path)
    return path


def _write(model_dir: Path, path: Path, qtype: str) -> None:
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    if config["model_type"] != "llama":
        raise NotImplementedError(f"GGUF export supports llama models, not {config['model_type']}")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("samedevice-tiny")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == "f32" else gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_vocabulary(writer, model_dir, config)

    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        data = tensor.astype(np.float32)
        if name.endswith("q_proj.weight"):
            data = permute_for_rope(data, heads)
        elif name.endswith("k_proj.weight"):
            data = permute_for_rope(data, kv_heads)
        if qtype == "q8_0" and data.ndim == 2 and data.shape[-1] % 32 == 0:
            raw = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name(name), raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name(name), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_vocabulary(writer, model_dir: Path, config: dict) -> None:
    import gguf

    if not (model_dir / "tokenizer.json").is_file():
        raise NotImplementedError(f"GGUF export needs a tokenizer.json (byte-level BPE) in {model_dir}")
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    special = {t["content"] for t in tokenizer.get("added_tokens", [])}
    tokens = [""] * config["vocab_size"]
    for token, index in vocab.items():
        tokens[index] = token
    types = [
        gguf.TokenType.CONTROL if t in special else gguf.TokenType.UNUSED if t == "" else gguf.TokenType.NORMAL
        for t in tokens
    ]
    tokens = [t or f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_add_bos_token(False)
