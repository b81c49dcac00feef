"""Where an engine's weights actually live, and whether that is the placement asked for.

After `load`, the harness walks the engine object for torch modules (their parameters and
buffers; for an engine with no module, the tensors it holds directly) and summarises them
by device. A `cuda:N` case
needs every weight on cuda:N; an `auto` case over k devices needs weights on each of the k
devices and on no other; a `cpu` case needs every weight on the CPU.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

_MAX_DEPTH = 3


def _children(value: Any) -> list[Any]:
    """What to look inside: plain objects' attributes, lists, tuples and dict values."""
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, bytes, int, float, bool, type(None), type, torch.device, torch.dtype)):
        return []
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict) and not callable(value):
        return list(attributes.values())
    if isinstance(attributes, dict):  # a callable object such as a pipeline: still look inside
        return [v for k, v in attributes.items() if not k.startswith("__")]
    return []


def _walk(root: Any) -> tuple[list[torch.nn.Module], list[torch.Tensor]]:
    """Modules and loose tensors reachable from `root`'s attributes, in attribute order."""
    modules: list[torch.nn.Module] = []
    tensors: list[torch.Tensor] = []
    seen: set[int] = {id(root)}
    frontier = [(child, 1) for child in _children(root)]
    while frontier:
        value, depth = frontier.pop(0)
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, torch.nn.Module):
            modules.append(value)
        elif isinstance(value, torch.Tensor):
            tensors.append(value)
        elif depth < _MAX_DEPTH:
            frontier += [(child, depth + 1) for child in _children(value)]
    inside = {id(sub) for m in modules for sub in m.modules() if sub is not m}
    return [m for m in modules if id(m) not in inside], tensors


def find_modules(engine: Any) -> list[torch.nn.Module]:
    """The top-level torch modules an engine holds, in attribute order."""
    return _walk(engine)[0]


@dataclass
class WeightMap:
    """Tensors and bytes per device, and the devices of each top-level part."""

    tensors: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    parts: dict[str, list[str]] = field(default_factory=dict)  # part name -> devices

    @property
    def devices(self) -> list[str]:
        return sorted(self.tensors, key=_device_order)

    def describe(self, limit: int = 8) -> str:
        """'cuda:0 (12 tensors, 1.2 MB): model.embed_tokens, model.layers.0-1, lm_head'."""
        lines = []
        for device in self.devices:
            names = [name for name, devs in self.parts.items() if device in devs]
            shown = ", ".join(_compress(names)[:limit]) + (", ..." if len(names) > limit else "")
            lines.append(f"{device} ({self.tensors[device]} tensors, {_size(self.bytes[device])}): {shown}")
        return "; ".join(lines) or "no tensors found"

    def to_json(self) -> dict[str, Any]:
        return {"devices": {d: {"tensors": self.tensors[d], "bytes": self.bytes[d]} for d in self.devices},
                "parts": self.parts}


def weight_map(engine: Any, modules: list[torch.nn.Module] | None = None) -> WeightMap:
    """Where the parameters and buffers of the engine's modules live (`modules` defaults to
    what the walk finds). An engine with no module at all is judged by the tensors it holds
    directly; next to modules, such tensors are host-side helpers and are left out."""
    found_modules, loose = _walk(engine)
    modules = found_modules if modules is None else modules
    result = WeightMap()
    for index, module in enumerate(modules):
        prefix = f"[{index}]." if len(modules) > 1 else ""
        for name, tensor in _named_tensors(module):
            _add(result, prefix + _part(name), tensor)
    if not modules:
        for index, tensor in enumerate(loose):
            _add(result, f"tensor[{index}]", tensor)
    return result


def _named_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    named: list[tuple[str, torch.Tensor]] = list(module.named_parameters(remove_duplicate=True))
    named += [(n, b) for n, b in module.named_buffers(remove_duplicate=True) if b is not None]
    return named


def _add(result: WeightMap, part: str, tensor: torch.Tensor) -> None:
    device = str(tensor.device)
    result.tensors[device] += 1
    result.bytes[device] += tensor.numel() * tensor.element_size()
    devices = result.parts.setdefault(part, [])
    if device not in devices:
        devices.append(device)


def _part(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'model.layers.3'; 'lm_head.weight' -> 'lm_head'."""
    pieces = name.split(".")
    for i, piece in enumerate(pieces):
        if piece.isdigit():
            return ".".join(pieces[: i + 1])
    return ".".join(pieces[:-1]) or name


def _compress(names: list[str]) -> list[str]:
    """Runs of numbered parts shown as ranges: model.layers.0, .1, .2 -> model.layers.0-2."""
    out: list[str] = []
    run: tuple[str, int, int] | None = None
    for name in names:
        head, _, tail = name.rpartition(".")
        if tail.isdigit() and run and run[0] == head and int(tail) == run[2] + 1:
            run = (head, run[1], int(tail))
            continue
        if run:
            out.append(_range(run))
            run = None
        if tail.isdigit():
            run = (head, int(tail), int(tail))
        else:
            out.append(name)
    if run:
        out.append(_range(run))
    return out


def _range(run: tuple[str, int, int]) -> str:
    head, first, last = run
    return f"{head}.{first}" if first == last else f"{head}.{first}-{last}"


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024  # type: ignore[assignment]
    return f"{nbytes} B"


def _device_order(device: str) -> tuple[int, int, str]:
    kind, _, index = device.partition(":")
    return ({"cpu": 0, "cuda": 1}.get(kind, 2), int(index) if index.isdigit() else -1, device)


def placement_problem(found: WeightMap, kind: str, asked: tuple[str, ...]) -> str | None:
    """Why the weights are not where the case asked, or None."""
    if not found.tensors:
        return None
    where = found.devices
    if kind == "auto":
        missing = [d for d in asked if d not in where]
        stray = [d for d in where if d not in asked]
        if missing or stray:
            what = []
            if missing:
                what.append(f"no weights on {', '.join(missing)}")
            if stray:
                what.append(f"weights on {', '.join(stray)}, which the case did not ask for")
            return (f"auto over {', '.join(asked)} asked for the model split over {len(asked)} devices, "
                    f"but {' and '.join(what)}: {found.describe()}")
        return None
    stray = [d for d in where if d != asked[0]]
    if stray:
        return f"the case asked for every weight on {asked[0]}, but some are on {', '.join(stray)}: {found.describe()}"
    return None
