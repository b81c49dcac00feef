"""PyTorch's own device-error wording, and parsing it back.

The simulated GPUs must fail the way libtorch fails on a real GPU. The wording depends on
where libtorch checks (all strings below are in torch 2.13's libtorch_cpu.so; a test reads
them back from the binary):
- TensorIterator ops (pointwise, reductions: `device_check: NoCheck` in
  native_functions.yaml): "... found at least two devices, cuda:0 and cpu!", the common
  device being the first non-CPU operand; one 0-dim CPU input may ride along as a scalar.
- Ops with a CUDA kernel and the generated device check: "... but got index is on cpu,
  different from other tensors on cuda:0 (when checking argument in method
  wrapper_CUDA__index_select)", arguments checked in schema order, out= first. Tensor lists
  (cat) go through the same check in 2.13.
- Composite ops (linear, matmul, embedding) have no check of their own: the op they
  decompose into fails, so the simulation runs the decomposition and lets that op report.
Which case an op falls in comes from native_functions.yaml as shipped in torchgen (read
lazily, on the first mismatch only).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

SAME_DEVICE = "Expected all tensors to be on the same device, but "


def iter_message(common: object, other: object, method: str | None = None) -> str:
    """TensorIterator's wording. libtorch names no op here; the simulation adds the
    wrapper's name in the form the wrapper check uses, so the op is always in the message."""
    op = f" (when checking argument in method {method})" if method else ""
    return f"{SAME_DEVICE}found at least two devices, {common} and {other}!{op}"


def wrapper_message(method: str, arg: str, device: object, common: object) -> str:
    return (f"{SAME_DEVICE}got {arg} is on {device}, different from other tensors on {common} "
            f"(when checking argument in method {method})")


def index_message(self_device: object) -> str:
    return f"indices should be either on cpu or on the same device as the indexed tensor ({self_device})"


def index_put_values_message(self_device: object, value_device: object) -> str:
    return f"expected device {self_device} but got device {value_device} for value tensor"


def masked_fill_message(mask_device: object, self_device: object) -> str:
    return (f"expected self and mask to be on the same device, but got mask on {mask_device} "
            f"and self on {self_device}")


def sdpa_message(query: object, key: object, value: object) -> str:
    return ("Expected query, key, and value to have the same device type, but got "
            f"query.device: {query} key.device: {key} and value.device: {value} instead.")


def generator_message(expected_type: str, found_type: str, op: str | None = None) -> str:
    where = f" (in {op})" if op else ""
    return f"Expected a '{expected_type}' device type for generator but found '{found_type}'{where}"


def numpy_message(device: object) -> str:
    return (f"can't convert {device} device type tensor to numpy. Use Tensor.cpu() to copy the "
            "tensor to host memory first.")


# --- where libtorch checks devices, per op (from native_functions.yaml) ------------------

@dataclass(frozen=True)
class OpInfo:
    backend: str  # "cuda": a CUDA kernel; "implicit"/"explicit": composite; "unknown"
    checked: bool  # the generated wrapper checks devices (no `device_check: NoCheck`)
    method: str  # the wrapper's name, as libtorch prints it


def _yaml_path() -> Path | None:
    spec = importlib.util.find_spec("torchgen")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "packaged/ATen/native/native_functions.yaml"
    return path if path.exists() else None


@cache
def _native_functions() -> dict[str, dict]:
    """native_functions.yaml by "name.overload": read once, on the first mismatch (~0.3 s)."""
    path = _yaml_path()
    if path is None:
        return {}
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    entries = yaml.load(path.read_text(), Loader=loader)
    return {entry["func"].split("(", 1)[0]: entry for entry in entries if "func" in entry}


def _dispatch_keys(entry: dict | None) -> set[str]:
    keys: set[str] = set()
    for key in (entry or {}).get("dispatch", {}):
        keys.update(k.strip() for k in key.split(","))
    return keys


@cache
def op_info(func: torch._ops.OpOverload) -> OpInfo:
    schema = func._schema
    name = schema.name.split("::", 1)[-1]
    overload = schema.overload_name
    is_out = any(a.kwarg_only and a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    table = _native_functions()
    entry = table.get(f"{name}.{overload}" if overload else name)
    if entry is None:
        return OpInfo("unknown", True, f"wrapper_CUDA_{name}")
    delegate = table.get(entry.get("structured_delegate", ""))
    structured = bool(entry.get("structured") or delegate)
    keys = _dispatch_keys(entry) | _dispatch_keys(delegate)
    if "CUDA" in keys:
        backend = "cuda"
    elif "CompositeImplicitAutograd" in keys or not (keys or delegate):
        backend = "implicit"
    elif keys & {"CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional"}:
        backend = "explicit"
    else:
        backend = "unknown"
    # torchgen: structured wrappers are named after the native name, the others after
    # "<overload>_<name>" (so an empty overload gives wrapper_CUDA__index_select).
    base = name + ("_out" if is_out else "")
    method = (f"wrapper_CUDA_{base}{'_' + overload if overload else ''}" if structured
              else f"wrapper_CUDA_{overload}_{base}")
    return OpInfo(backend, entry.get("device_check") != "NoCheck", method)


def has_cuda_kernel(func: torch._ops.OpOverload) -> bool:
    """Whether libtorch has a CUDA kernel for the op (or a composite one that decomposes),
    per native_functions.yaml; True where the yaml does not know the op."""
    schema = func._schema
    name, overload = schema.name.split("::", 1)[-1], schema.overload_name
    table = _native_functions()
    entry = table.get(f"{name}.{overload}" if overload else name)
    if entry is None:
        return True
    keys = _dispatch_keys(entry) | _dispatch_keys(table.get(entry.get("structured_delegate", "")))
    composite = {"CompositeImplicitAutograd", "CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional"}
    return not keys or "CUDA" in keys or bool(keys & composite)


# --- reading errors back --------------------------------------------------------------------

_DEV = r"cuda:\d+|cpu|meta|cuda|mps|xpu:\d+|Cpu|Cuda ?\{ ?gpu_id: ?\d+ ?\}|Cuda\(\w*\(?\d*\)?\)"
_METHOD = r"(?: \(when checking ar\w+ (?:for argument \w+ )?in method (?P<method>\w+)\))?"
# (pattern, op when the text names none); device groups a, b, c in the order reported
_PATTERNS = [
    # torch >= 2.6 wrapper check: "... but got index is on cpu, different from other tensors
    # on cuda:0 (when checking argument in method wrapper_CUDA__index_select)"
    (re.compile(rf"but got \w+ is on (?P<b>{_DEV}), different from other tensors on (?P<a>{_DEV}){_METHOD}"), None),
    # TensorIterator, and the wrapper check before 2.6: "... found at least two devices,
    # cpu and cuda:0! (when checking argument for argument tensors in method wrapper_CUDA_cat)"
    (re.compile(rf"found at least two devices, (?P<a>{_DEV}) and (?P<b>{_DEV})!{_METHOD}"), None),
    (re.compile(rf"on the same device as the indexed tensor \((?P<a>{_DEV})\)"), "index"),
    (re.compile(rf"expected device (?P<a>{_DEV}) but got device (?P<b>{_DEV}) for value tensor"), "index_put_"),
    (re.compile(rf"but got mask on (?P<b>{_DEV}) and self on (?P<a>{_DEV})"), "masked_fill_"),
    (re.compile(rf"query\.device: (?P<a>{_DEV}) key\.device: (?P<b>{_DEV}) and value\.device: (?P<c>{_DEV})"),
     "scaled_dot_product_attention"),
    (re.compile(r"Expected a '(?P<a>\w+)' device type for generator but found '(?P<b>\w+)'(?: \(in (?P<op>\w+)\))?"),
     None),
    # Rust engines: mistral.rs "device mismatch in add, lhs: Cpu, rhs: Cuda { gpu_id: 0 }",
    # candle "DeviceMismatchBinaryOp { lhs: Cpu, rhs: Cuda(..), op: "matmul" }"
    (re.compile(rf"device mismatch in (?P<op>\w+), lhs: (?P<a>{_DEV}), rhs: (?P<b>{_DEV})"), None),
    (re.compile(rf"DeviceMismatchBinaryOp \{{ lhs: (?P<a>{_DEV}), rhs: (?P<b>{_DEV}), op: \"(?P<op>\w+)\""), None),
]


def _normal_device(text: str) -> str:
    if text in ("Cpu", "cpu"):
        return "cpu"
    if text.lower().startswith("cuda"):
        digits = re.search(r"\d+", text)
        return f"cuda:{digits.group(0)}" if digits else "cuda"
    return text


def op_from_method(method: str) -> str:
    """'wrapper_CUDA__index_select' -> 'index_select', 'wrapper_CUDA_add_Tensor' -> 'add'."""
    name = re.sub(r"^wrapper_[A-Za-z0-9]+?_", "", method)
    parts = name.split("_")
    for end in range(len(parts), 0, -1):  # drop overload segments until an aten op is named
        for start in range(0, len(parts) - end + 1):
            candidate = "_".join(parts[start : start + end])
            if candidate and hasattr(torch.ops.aten, candidate):
                return candidate
    return name.lstrip("_")


def classify_device_error(exc: BaseException) -> dict | None:
    """{"op", "devices", "message"} when `exc` is a device mismatch in PyTorch's (or a Rust
    engine's) wording, else None. `op` is None when the message names none."""
    message = str(exc)
    for pattern, fixed_op in _PATTERNS:
        found = pattern.search(message)
        if found is None:
            continue
        groups = found.groupdict()
        devices = [_normal_device(groups[k]) for k in ("a", "b", "c") if groups.get(k)]
        method = groups.get("method")
        op = groups.get("op") or (op_from_method(method) if method else fixed_op)
        return {"op": op, "devices": list(dict.fromkeys(devices)), "message": message}
    return None


_GAP = re.compile(
    r"not implemented for '\w+'"
    r"|Could not run '[\w:.]+' with arguments from the '\w+' backend"
    r"|is not (?:yet )?(?:implemented|supported) (?:for|on) (?:the )?'?(?:CPU|cpu)"
)


def is_kernel_gap(exc: BaseException) -> bool:
    """True when `exc` says the CPU lacks a kernel (e.g. histc on int32: "histogram_cpu" not
    implemented for 'Int'): a GPU-only path the simulation cannot run, not a user bug."""
    return classify_device_error(exc) is None and bool(_GAP.search(str(exc)))
