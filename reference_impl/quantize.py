"""Weight-only quantization: int8 per output channel, and GGUF's Q8_0 and Q4_0 blocks.

Quantized weights stay quantized, in buffers on their layer's device, and are dequantized
where those buffers are, inside forward, right before the matmul with the activations
(which live on the same device). Candle #1823 dequantized to the CPU unconditionally: the
`dequantize_to_cpu` switch puts that back.

Block formats are byte for byte what `gguf.quants.quantize` writes (rows of blocks of 32):
    Q8_0  34 bytes: f16 scale d, then 32 int8 q;            w = d * q
    Q4_0  18 bytes: f16 scale d, then 16 bytes of nibbles;   w = d * (nibble - 8)
          byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
Quantizing runs once on the host at load (numpy, through gguf); dequantizing is torch, on
whatever device holds the bytes.

Axes: O output features, I input features, N blocks per row (I / 32), E experts, T tokens,
A active experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMATS = ("int8", "q8_0", "q4_0")
BLOCK = 32
BLOCK_BYTES = {"q8_0": 2 + BLOCK, "q4_0": 2 + BLOCK // 2}


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output channel: q [..., O, I] int8, scales [..., O] float32."""
    weight = weight.float()
    scales = weight.abs().amax(dim=-1).clamp(min=1e-12) / 127
    q = torch.round(weight / scales[..., None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    return (q.float() * scales[..., None]).to(dtype)


def _ggml_type(fmt: str):
    from gguf import GGMLQuantizationType

    return {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}[fmt]


def quantize_blocks(weight: Tensor, fmt: str) -> Tensor:
    """GGUF blocks of `weight` [..., O, I] as uint8 [..., O, N * bytes per block] (host)."""
    from gguf import quants

    if weight.shape[-1] % BLOCK:
        raise ValueError(f"{fmt} needs rows that are a multiple of {BLOCK} wide, got {weight.shape[-1]}")
    raw = quants.quantize(weight.detach().float().cpu().numpy(), _ggml_type(fmt))
    return torch.from_numpy(raw.copy())


def dequantize_blocks(blocks: Tensor, fmt: str, dtype: torch.dtype) -> Tensor:
    """The weight [..., O, I] from GGUF blocks, computed on the blocks' device."""
    *lead, rows, nbytes = blocks.shape
    b = blocks.view(*lead, rows, nbytes // BLOCK_BYTES[fmt], BLOCK_BYTES[fmt])  # [..., O, N, bytes]
    d = b[..., :2].contiguous().view(torch.float16).float()  # [..., O, N, 1]
    if fmt == "q8_0":
        q = b[..., 2:].contiguous().view(torch.int8).float()  # [..., O, N, 32]
    else:
        packed = b[..., 2:]  # [..., O, N, 16]
        q = torch.cat((packed & 0x0F, packed >> 4), dim=-1).float() - 8  # [..., O, N, 32]
    return (d * q).view(*lead, rows, -1).to(dtype)


class Linear(nn.Module):
    """y = x @ weight, the weight stored transposed, [I, O]: the layout the CPU's gemv streams
    fastest at batch 1 (about 1.7x a row-major nn.Linear on the bench model)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight


class DenseWeight(nn.Module):
    """A float weight [..., O, I] (stacked experts), handed out whole or gathered by expert."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape), requires_grad=False)

    def dequantize(self, dtype: torch.dtype, index: Tensor | None = None) -> Tensor:
        return self.weight if index is None else self.weight[index]


class QuantizedWeight(nn.Module):
    """A weight [..., O, I] kept quantized in buffers: int8 `q` + `scales`, or GGUF `blocks`."""

    faults: frozenset[str] = frozenset()
    q: Tensor  # int8: [..., O, I]
    scales: Tensor  # int8: [..., O]
    blocks: Tensor  # q8_0 / q4_0: [..., O, N * bytes per block]

    def __init__(self, shape: tuple[int, ...], fmt: str) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"quantization format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.fmt, self.shape = fmt, shape
        *lead, rows, cols = shape
        if fmt == "int8":
            self.register_buffer("q", torch.empty(shape, dtype=torch.int8))
            self.register_buffer("scales", torch.empty(*lead, rows))
        else:
            nbytes = cols // BLOCK * BLOCK_BYTES[fmt]
            self.register_buffer("blocks", torch.empty(*lead, rows, nbytes, dtype=torch.uint8))

    @staticmethod
    def quantize(weight: Tensor, fmt: str) -> dict[str, Tensor]:
        """The buffers for a float weight, by name."""
        if fmt == "int8":
            q, scales = quantize_int8(weight)
            return {"q": q, "scales": scales}
        return {"blocks": quantize_blocks(weight, fmt)}

    def dequantize(self, dtype: torch.dtype, index: Tensor | None = None) -> Tensor:
        """The float weight (gathered to `index`'s experts if given), where the buffers are."""
        if self.fmt == "int8":
            q, scales = self.q, self.scales
            if index is not None:
                q, scales = q[index], scales[index]
            if "dequantize_to_cpu" in self.faults:
                q, scales = q.cpu(), scales.cpu()  # Candle #1823: dequantize(&Device::Cpu)
            return dequantize_int8(q, scales, dtype)
        blocks = self.blocks if index is None else self.blocks[index]
        if "dequantize_to_cpu" in self.faults:
            blocks = blocks.cpu()  # Candle #1823: dequantize(&Device::Cpu)
        return dequantize_blocks(blocks, self.fmt, dtype)


class QuantizedLinear(QuantizedWeight):
    def __init__(self, in_features: int, out_features: int, fmt: str) -> None:
        super().__init__((out_features, in_features), fmt)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantize(x.dtype))


def quantize_modules(model: nn.Module, fmt: str, router: bool) -> None:
    """Swap the block projections (and the MoE router when `router`) for quantized ones.
    Embeddings, norms and the output head stay float. Run on the meta device, before loading."""
    for name, module in list(model.named_modules()):
        if not name.startswith("layers."):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if child == "gate" and not router:
            continue
        if isinstance(module, Linear):
            in_features, out_features = module.weight.shape
            setattr(parent, child, QuantizedLinear(in_features, out_features, fmt))
        elif isinstance(module, DenseWeight):
            setattr(parent, child, QuantizedWeight(tuple(module.weight.shape), fmt))
