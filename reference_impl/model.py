"""Llama and Mixtral-style MoE decoders in the style of gpt-fast: device-clean by construction.

The model never takes a device argument: `placement.load_model` puts each block on its
device once, and caches and RoPE tables are allocated beside the weights that use them, so
nothing in `forward` moves a tensor except the hand-over of activations at a device
boundary (`auto` placement), which the transfer ledger counts and budgets.

Projections are fused (q, k and v in `wqkv`; gate and up in `w13`) and stored transposed
(`quantize.Linear`); activations are [B, S, C] and the head runs on the last position only
when generating.

At batch 1 a decode step is bound by per-op overhead, so what is fixed per sequence is built
once, at load, beside the layers: RoPE tables in the model's dtype and a position row (for
masks), shared by the layers of a device. q, k and v are split as views of one projection
with a single transpose, and the cache is written and read through `narrow` views.

Positions: `start` is a host int (eager: RoPE rows and cache writes by slicing, attention
over the cache's first start + S positions), or a [1] position tensor on the device (the
compiled decode step, see `compiled`: every shape is fixed, so RoPE rows and cache writes
are indexed with the tensor and attention reads the whole static cache, masked past the
position, as gpt-fast does).

Padded batches (`Padded`, see `batched`): rows of different lengths share the cache's slots;
each row has its own RoPE positions and a mask of the slots that hold its real tokens, both
kept on every device of the model, so a decode step moves neither.

Axes: B batch (beams, or padded rows), S sequence, H heads, K kv heads, D head dim, C hidden (channels),
V vocab, I intermediate, T tokens (B * S), E experts, A active experts per token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impl.cache import Cache, KVCache, OffloadedKVCache, Past, import_past
from reference_impl.quantize import DenseWeight, Linear


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
        unsupported = unsupported_config(config)
        if unsupported:
            raise NotImplementedError(f"reference_impl cannot load this model faithfully: {unsupported}")
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


def unsupported_config(config: dict) -> str | None:
    """What in a llama/mixtral config.json this implementation does not compute (a local
    checkpoint may use it), or None."""
    if config.get("model_type") not in ("llama", "mixtral"):
        return f"model_type {config.get('model_type')!r} (it runs llama and mixtral)"
    scaling = config.get("rope_scaling") or {}
    rope_type = (config.get("rope_parameters") or {}).get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    checks = {
        f"rope scaling {rope_type!r}": rope_type not in ("default", None),
        "a tied lm_head (tie_word_embeddings)": bool(config.get("tie_word_embeddings")),
        "attention biases": bool(config.get("attention_bias")),
        "MLP biases": bool(config.get("mlp_bias")),
        f"activation {config.get('hidden_act')!r}": config.get("hidden_act", "silu") != "silu",
        "a head_dim other than hidden_size / num_attention_heads": config.get("head_dim") not in (
            None, config["hidden_size"] // config["num_attention_heads"]),
        "sliding-window attention": bool(config.get("sliding_window")) and config.get("model_type") == "mixtral"
        and config["sliding_window"] < config.get("max_position_embeddings", 0),
    }
    found = [what for what, present in checks.items() if present]
    return ", ".join(found) or None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:  # one fused op; the same numbers as the line below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # transformers' order: normalise in float32, cast back, then scale by the weight.
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def rope_tables(args: ModelArgs, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and signed sin, [S_max, D], for transformers' half-rotation layout, on `device`.
    Computed in float32 and cast to the model's dtype once: the values transformers casts
    to the activations' dtype at every step. The sin table's first half is negated so that
    rotate_half(x) * sin == roll(x) * table."""
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, device=device).float() / args.head_dim))
    freqs = torch.outer(torch.arange(args.max_seq_len, device=device).float(), inv_freq)  # [S_max, D/2]
    cos, sin = torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-freqs.sin(), freqs.sin()), dim=-1)
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, heads, S, D] rotated by the table rows [S, D]: x * cos + rotate_half(x) * sin."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


def rows(table: Tensor, start: int | Tensor, length: int) -> Tensor:
    """table[start : start + length]; a position tensor (the compiled step) indexes instead."""
    return table[start : start + length] if isinstance(start, int) else table[start]


@dataclass
class Padded:
    """A padded batch's per-row state, one copy per device of the model (`batched` builds it):
    `valid` [B, L] bool, which cache slots hold a real token of the row (padding does not), and
    `positions` [B, 1] int64, each row's RoPE position for the slot the next token is written to."""

    valid: dict[torch.device, Tensor]
    positions: dict[torch.device, Tensor]

    def advance(self) -> None:
        """One slot on: every row's position + 1, on each device (no transfer)."""
        for positions in self.positions.values():
            positions += 1


class Attention(nn.Module):
    cos: Tensor  # [S_max, D], in the model's dtype
    sin: Tensor
    positions: Tensor  # [S_max] int64: 0, 1, ... (for masks)

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        d = args.head_dim
        self.wqkv = Linear(args.hidden_size, (args.num_heads + 2 * args.num_kv_heads) * d)  # q, k, v
        self.wo = Linear(args.num_heads * d, args.hidden_size)
        # Set by placement: one set per device, shared by the layers on it.
        self.register_buffer("cos", torch.empty(args.max_seq_len, d), persistent=False)
        self.register_buffer("sin", torch.empty(args.max_seq_len, d), persistent=False)
        self.register_buffer("positions", torch.empty(args.max_seq_len, dtype=torch.long), persistent=False)
        self.cache: Cache | None = None

    def forward(self, x: Tensor, start: int | Tensor, padded: Padded | None = None) -> Tensor:
        a = self.args
        B, S, _ = x.shape
        H, K = a.num_heads, a.num_kv_heads
        qkv = self.wqkv(x).view(B, S, H + 2 * K, a.head_dim).transpose(1, 2)  # [B, H + 2K, S, D]: views
        qk, v = qkv.split((H + K, K), dim=1)
        if padded is None:
            cos, sin = rows(self.cos, start, S), rows(self.sin, start, S)
        else:  # each row's own positions: [B, S] -> table rows [B, 1, S, D]
            positions = padded.positions[x.device].reshape(-1)
            cos, sin = (t.index_select(0, positions).view(B, 1, S, -1) for t in (self.cos, self.sin))
        q, k = apply_rope(qk, cos, sin).split((H, K), dim=1)
        if self.cache is not None:
            k, v = self.cache.update(start, k, v)  # [B, K, start+S, D], or the whole static cache
        if padded is not None:  # causal over the slots, and only the row's real ones
            assert isinstance(start, int), "padded batches decode eagerly"
            slots, here = self.positions[: k.shape[2]], self.positions[start : start + S, None]
            mask = padded.valid[x.device][:, None, None, : k.shape[2]] & (slots <= here)  # [B, 1, S, L]
            # a padding query that sees no real slot sees itself: no softmax over nothing (NaN)
            mask, causal = mask | (slots == here), False
        elif isinstance(start, Tensor):  # compiled decode step: mask the cache past the position
            mask, causal = self.positions[: k.shape[2]] <= start[:, None], False  # [1, L]
        elif S == 1 or start == 0:  # one new token sees every cached one; a prompt is causal
            mask, causal = None, S > 1
        else:  # a chunk of S tokens after `start` cached ones
            mask, causal = self.positions[: start + S] <= self.positions[start : start + S, None], False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=K != H)  # [B, H, S, D]
        return self.wo(out.transpose(1, 2).reshape(B, S, -1))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w13 = Linear(args.hidden_size, 2 * args.intermediate_size)  # gate and up, fused
        self.w2 = Linear(args.intermediate_size, args.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class MoEFeedForward(nn.Module):
    """Mixtral's sparse MoE: the router (`gate`) picks A of E experts per token, and their
    outputs are mixed by the router's probabilities renormalised over the A picked.
    Sync-free: no nonzero, no per-expert token lists. Decode gathers only the picked
    experts' weights; prefill runs every expert and zeroes the unpicked ones' weights."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.active = args.experts_per_token
        experts, hidden, inter = args.num_experts, args.hidden_size, args.intermediate_size
        self.gate = Linear(hidden, experts)  # the router
        self.w13 = DenseWeight((experts, 2 * inter, hidden))  # [E, 2I, C]: gate (w1) and up (w3)
        self.w2 = DenseWeight((experts, hidden, inter))  # [E, C, I]: down

    def forward(self, x: Tensor) -> Tensor:
        B, S, C = x.shape
        x = x.view(-1, C)  # [T, C]
        probs = self.gate(x).float().softmax(dim=-1)  # [T, E]
        weights, experts = probs.topk(self.active, dim=-1)  # [T, A]
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        if experts.numel() <= probs.shape[-1]:  # decode: T * A <= E, gather the picked experts
            gate, up = torch.einsum("tc,taoc->tao", x, self.w13.dequantize(x.dtype, experts)).chunk(2, dim=-1)
            y = torch.einsum("tai,taci->tac", F.silu(gate) * up, self.w2.dequantize(x.dtype, experts))  # [T, A, C]
            out = torch.einsum("tac,ta->tc", y, weights)
        else:  # prefill: every expert, weighted by a dense [T, E] routing matrix
            routing = torch.zeros_like(probs, dtype=x.dtype).scatter_(1, experts, weights)  # [T, E]
            gate, up = torch.einsum("tc,eoc->teo", x, self.w13.dequantize(x.dtype)).chunk(2, dim=-1)
            y = torch.einsum("tei,eci->tec", F.silu(gate) * up, self.w2.dequantize(x.dtype))  # [T, E, C]
            out = torch.einsum("tec,te->tc", y, routing)
        return out.view(B, S, C)


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.hidden_size, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.hidden_size, args.norm_eps)
        self.feed_forward: nn.Module = MoEFeedForward(args) if args.num_experts else FeedForward(args)

    def forward(self, x: Tensor, start: int | Tensor, padded: Padded | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), start, padded)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    faults: frozenset[str] = frozenset()

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.tok_embeddings.weight.requires_grad_(False)
        self.layers: list[Block] = nn.ModuleList(Block(args) for _ in range(args.num_layers))  # type: ignore[assignment]
        self.norm = RMSNorm(args.hidden_size, args.norm_eps)
        self.output = Linear(args.hidden_size, args.vocab_size)
        # Where each block lives; set by placement. Boundaries are where activations hop.
        self.block_devices: list[torch.device] = [torch.device("cpu")] * args.num_layers

    @property
    def input_device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def output_device(self) -> torch.device:
        return self.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def set_faults(self, faults: frozenset[str]) -> None:
        """Hand the fault switches to every module that has some."""
        for module in self.modules():
            if hasattr(module, "faults"):
                setattr(module, "faults", faults)  # noqa: B010

    def setup_caches(self, batch: int, kind: str = "static", length: int | None = None) -> None:
        """A KV cache per layer, beside it: on its device, or on the host when offloaded.
        `length` positions (default: max_seq_len). A static cache of the same shape is kept
        from the previous generation."""
        a = self.args
        shape = (batch, a.num_kv_heads, length or a.max_seq_len, a.head_dim)
        for block, device in zip(self.layers, self.block_devices, strict=True):
            attention = block.attention
            old = attention.cache
            if kind == "static":  # kept from the previous generation if the shape fits
                if not (isinstance(old, KVCache) and old.k.shape == shape and old.k.device == device):
                    attention.cache = KVCache(shape, self.dtype, device)
            elif kind == "offloaded":
                offloaded = OffloadedKVCache(shape, self.dtype, pinned=device.type == "cuda")
                offloaded.faults = self.faults
                attention.cache = offloaded
            else:
                raise ValueError(f"setup_caches: kind must be static or offloaded, got {kind!r} (external pasts come from use_past)")

    def export_past(self, length: int) -> Past:
        """Each layer's first `length` cached positions, copied to the host in float32: what a
        Petals server hands back to its client."""
        past = []
        for block in self.layers:
            assert block.attention.cache is not None
            k, v = block.attention.cache.past(length)
            past.append((k.to("cpu", torch.float32), v.to("cpu", torch.float32)))
        return past

    def use_past(self, past: Past) -> None:
        """Install a caller's past (host tensors, any dtype) as each layer's external cache."""
        for block, device, (k, v) in zip(self.layers, self.block_devices, past, strict=True):
            block.attention.cache = import_past(k, v, self.dtype, device, self.faults)

    def reorder_caches(self, ancestors: Tensor, host_ancestors: Tensor, length: int) -> None:
        """Beam search: row i of every cache becomes row ancestors[i]. The index goes to each
        layer's own device, once per device (Outlines #660's fix); a host cache takes the
        host copy of the index."""
        per_device: dict[torch.device, Tensor] = {}
        for block, device in zip(self.layers, self.block_devices, strict=True):
            cache = block.attention.cache
            assert cache is not None, "reorder_caches() before setup_caches()"
            if cache.on_host:
                index = host_ancestors
            elif "ancestors_on_cpu" in self.faults:
                index = ancestors  # Outlines #651: a host-built index, used as it came
            elif "ancestors_on_first_device" in self.faults:
                index = ancestors.to(self.input_device)  # Outlines #660: one device for every layer
            else:
                if device not in per_device:
                    per_device[device] = ancestors.to(device)  # a no-op on the logits' device
                index = per_device[device]
            cache.reorder(index, length)

    def forward(self, ids: Tensor, start: int | Tensor, last_only: bool = False, padded: Padded | None = None) -> Tensor:
        """Logits [B, S, V] float32 for token ids [B, S] at positions start..start+S-1, or
        [B, V] for the last position only when `last_only`. `start`: see the module docstring;
        `padded`: a padded batch's rows (their positions and real slots), see `Padded`."""
        x = self.tok_embeddings(ids)  # [B, S, C]
        for block, device in zip(self.layers, self.block_devices, strict=True):
            if x.device != device:
                x = x.to(device)  # the one legal hop: a device boundary under `auto`
            x = block(x, start, padded)
        if last_only:
            x = x[:, -1]  # [B, C]
        if x.device != self.output_device:
            x = x.to(self.output_device)
        logits = self.output(self.norm(x))
        return logits if logits.dtype == torch.float32 else logits.float()
