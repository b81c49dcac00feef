"""A llama-style decoder in the style of gpt-fast: device-clean by construction.

The model never takes a device argument: `place()` puts each block on its device once, and
caches and RoPE tables are buffers allocated beside the weights that use them, so nothing
in `forward` moves a tensor except the one hand-over of activations at a device boundary
(`auto` placement), which the transfer ledger counts and budgets.

Axes: B batch, S sequence, H heads, K kv heads, D head dim, C hidden (channels), V vocab.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ModelArgs:
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    num_experts: int = 0  # > 0: mixtral-style MoE feed-forward
    experts_per_token: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_config(cls, path: Path) -> ModelArgs:
        config = json.loads((path / "config.json").read_text())
        rope = config.get("rope_parameters") or {}
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            num_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
            intermediate_size=config["intermediate_size"],
            max_seq_len=config.get("max_position_embeddings", 512),
            rope_theta=config.get("rope_theta", rope.get("rope_theta", 10000.0)),
            norm_eps=config.get("rms_norm_eps", 1e-5),
            num_experts=config.get("num_local_experts", 0),
            experts_per_token=config.get("num_experts_per_tok", 2),
        )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class KVCache(nn.Module):
    """Preallocated keys and values of one layer: [B, K, S_max, D], on the layer's device."""

    def __init__(self, batch: int, args: ModelArgs, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch, args.num_kv_heads, args.max_seq_len, args.head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


def rope_tables(args: ModelArgs) -> tuple[Tensor, Tensor]:
    """cos and sin, [S_max, D], in transformers' half-rotation layout."""
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2).float() / args.head_dim))
    freqs = torch.outer(torch.arange(args.max_seq_len).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        kv_dim = args.num_kv_heads * args.head_dim
        self.q_proj = nn.Linear(args.hidden_size, args.hidden_size, bias=False)
        self.k_proj = nn.Linear(args.hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(args.hidden_size, kv_dim, bias=False)
        self.o_proj = nn.Linear(args.hidden_size, args.hidden_size, bias=False)
        cos, sin = rope_tables(args)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, start: int) -> Tensor:
        a = self.args
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, a.num_heads, a.head_dim).transpose(1, 2)  # [B, H, S, D]
        k = self.k_proj(x).view(B, S, a.num_kv_heads, a.head_dim).transpose(1, 2)  # [B, K, S, D]
        v = self.v_proj(x).view(B, S, a.num_kv_heads, a.head_dim).transpose(1, 2)
        cos, sin = self.cos[start : start + S].to(x.dtype), self.sin[start : start + S].to(x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.cache is not None:
            k, v = self.cache.update(start, k, v)  # [B, K, start+S, D]
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=S > 1 and start == 0, enable_gqa=a.num_kv_heads != a.num_heads,
            attn_mask=None if S == 1 or start == 0 else _chunk_mask(start, S, x.device),
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, S, a.hidden_size))


def _chunk_mask(start: int, length: int, device: torch.device) -> Tensor:
    """Causal mask for a chunk of `length` new tokens after `start` cached ones."""
    rows = torch.arange(start, start + length, device=device)[:, None]
    cols = torch.arange(start + length, device=device)[None, :]
    return cols <= rows


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.norm_eps)
        self.mlp: nn.Module = FeedForward(args)

    def forward(self, x: Tensor, start: int) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        # Where each block lives; set by place(). Boundaries are where activations hop.
        self.block_devices: list[torch.device] = [torch.device("cpu")] * args.num_layers

    @property
    def input_device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def output_device(self) -> torch.device:
        return self.lm_head.weight.device

    def setup_caches(self, batch: int) -> None:
        """Allocate each layer's KV cache on that layer's device, once per generation."""
        for block, device in zip(self.layers, self.block_devices):
            with torch.device(device):
                block.self_attn.cache = KVCache(batch, self.args, self.embed_tokens.weight.dtype)

    def forward(self, ids: Tensor, start: int) -> Tensor:
        """Logits [B, S, V] for token ids [B, S] at positions start..start+S-1."""
        x = self.embed_tokens(ids)
        for block, device in zip(self.layers, self.block_devices):
            if x.device != device:
                x = x.to(device)  # the one legal hop: a device boundary under `auto`
            x = block(x, start)
        if x.device != self.output_device:
            x = x.to(self.output_device)
        return self.lm_head(self.norm(x)).float()
