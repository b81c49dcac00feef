"""Read scenario files: safe YAML with node marks, one clear line per problem.

A bad file never raises past `load_file`: it comes back as `ScenarioError`s
(`path:line:col: field: what was expected`) and every other file still loads.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from harness.scenario import Scenario

MAX_FILE_BYTES = 1_000_000
# Aliases let a 1 KB file expand to billions of nodes ("billion laughs"); PyYAML shares
# the objects, but validation walks them. Cap the expanded size before validating.
MAX_EXPANDED_NODES = 50_000
SCENARIO_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ScenarioError:
    path: str
    line: int  # 1-based; 0 when the file could not be read at all
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}" if self.line else self.path
        what = f"{self.field}: {self.message}" if self.field else self.message
        return f"{where}: {what}"


@dataclass(frozen=True)
class LoadedScenario:
    scenario: Scenario
    path: str
    line: int


@dataclass
class LoadResult:
    scenarios: list[LoadedScenario] = field(default_factory=list)
    errors: list[ScenarioError] = field(default_factory=list)


def find_scenario_files(paths: list[Path]) -> list[Path]:
    """Every .yaml/.yml under the given files or directories, sorted, deduplicated."""
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for sub in sorted(path.rglob("*")):
                if sub.suffix in SCENARIO_SUFFIXES and sub.is_file():
                    found[sub] = None
        else:
            found[path] = None
    return list(found)


def load_paths(paths: list[Path]) -> LoadResult:
    """Load every scenario file under `paths`; names must be unique across all of them."""
    result = LoadResult()
    seen: dict[str, LoadedScenario] = {}
    for path in find_scenario_files(paths):
        one = load_file(path)
        result.errors.extend(one.errors)
        for loaded in one.scenarios:
            first = seen.get(loaded.scenario.name)
            if first is not None:
                result.errors.append(
                    ScenarioError(
                        loaded.path, loaded.line, 1, "name",
                        f"duplicate scenario name {loaded.scenario.name!r} "
                        f"(first defined at {first.path}:{first.line})",
                    )
                )
                continue
            seen[loaded.scenario.name] = loaded
            result.scenarios.append(loaded)
    return result


def load_file(path: Path) -> LoadResult:
    display = str(path)
    node, error = _compose(path, display)
    if error is not None:
        return LoadResult(errors=[error])
    if node is None:
        return LoadResult(errors=[ScenarioError(display, 1, 1, "", "empty file: expected a scenario mapping or a list of them")])
    if _expanded_size(node) > MAX_EXPANDED_NODES:
        return LoadResult(errors=[_at(display, node, "", f"document expands to more than {MAX_EXPANDED_NODES} nodes (YAML aliases); refusing to load")])

    if isinstance(node, yaml.SequenceNode):
        items = list(node.value)
        if not items:
            return LoadResult(errors=[_at(display, node, "", "empty list: expected at least one scenario")])
    else:
        items = [node]

    result = LoadResult()
    for index, item in enumerate(items):
        prefix = f"[{index}]." if isinstance(node, yaml.SequenceNode) else ""
        if not isinstance(item, yaml.MappingNode):
            result.errors.append(_at(display, item, prefix.rstrip("."), f"expected a scenario mapping, got {_kind(item)}"))
            continue
        try:
            data = _Constructor().construct_document(item)
        except yaml.YAMLError as exc:
            result.errors.append(_yaml_error(display, exc))
            continue
        try:
            scenario = Scenario.model_validate(data)
        except ValidationError as exc:
            result.errors.extend(_validation_errors(display, item, exc, prefix))
            continue
        engine_errors = _unknown_engines(display, item, scenario, prefix)
        if engine_errors:
            result.errors.extend(engine_errors)
            continue
        result.scenarios.append(LoadedScenario(scenario, display, item.start_mark.line + 1))
    return result


def _unknown_engines(display: str, root: yaml.MappingNode, scenario: Scenario, prefix: str) -> list[ScenarioError]:
    from harness.engines import UnknownEngine, get_engine

    errors = []
    for index, name in enumerate(scenario.engines):
        try:
            get_engine(name)
        except UnknownEngine as exc:
            node, _, _ = _node_at(root, ("engines", index))
            errors.append(_at(display, node, f"{prefix}engines[{index}]", str(exc)))
    return errors


class _Constructor(yaml.SafeLoader):
    """SafeLoader's constructor on an already composed node (no stream of its own)."""

    def __init__(self) -> None:
        yaml.constructor.SafeConstructor.__init__(self)


def _compose(path: Path, display: str) -> tuple[yaml.Node | None, ScenarioError | None]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return None, ScenarioError(display, 0, 0, "", f"file is {size} bytes; scenario files are limited to {MAX_FILE_BYTES}")
        raw = path.read_bytes()
    except OSError as exc:
        return None, ScenarioError(display, 0, 0, "", f"cannot read: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, ScenarioError(display, line, 1, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        return None, ScenarioError(display, line, 1, "", "binary content (NUL byte): not a YAML scenario file")
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        return None, _yaml_error(display, exc)
    documents = [d for d in documents if d is not None]
    if len(documents) > 1:
        return None, _at(display, documents[1], "", "several YAML documents ('---') in one file: put scenarios in a list instead")
    return (documents[0] if documents else None), None


def _expanded_size(node: yaml.Node, budget: int = MAX_EXPANDED_NODES + 1) -> int:
    """Nodes visited when aliases are expanded, stopping early past the budget."""
    count = 0
    stack = [node]
    while stack and count <= budget:
        current = stack.pop()
        count += 1
        if isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.append(key)
                stack.append(value)
    return count


def _yaml_error(display: str, exc: yaml.YAMLError) -> ScenarioError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}" + (f" ({context})" if context and "python" not in problem else "")
    if "could not determine a constructor" in str(exc):
        tag = str(exc).split("tag '", 1)[-1].split("'", 1)[0]
        message = f"tag {tag} is not allowed: scenario files are plain YAML (safe_load semantics)"
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return ScenarioError(display, line, column, "", message)


def _validation_errors(display: str, root: yaml.MappingNode, exc: ValidationError, prefix: str) -> list[ScenarioError]:
    errors = []
    for detail in exc.errors(include_url=False):
        node, path, parent = _node_at(root, detail["loc"], want_key=detail["type"] == "extra_forbidden")
        field_name = prefix + ".".join(path)
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = _unknown_key_message(path[-1] if path else "", parent)
        elif detail["type"] == "missing":
            message = "required field is missing"
        elif "input" in detail and detail["type"] not in ("value_error", "assertion_error"):
            message += f" (got {_short(detail['input'])})"
        errors.append(_at(display, node, field_name, message))
    return errors


def _node_at(root: yaml.Node, loc: tuple[Any, ...], want_key: bool = False) -> tuple[yaml.Node, list[str], type[BaseModel] | None]:
    """Follow a pydantic error location through the YAML node tree.

    Parts that name no node (union tags such as 'function-after[...]') are skipped.
    Returns the deepest node reached, the readable field path and the pydantic model
    that owns the last key (for 'did you mean').
    """
    node: yaml.Node = root
    path: list[str] = []
    model: type[BaseModel] | None = Scenario
    owner: type[BaseModel] | None = Scenario
    for depth, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if key.value == part:
                    node = key if want_key and depth == len(loc) - 1 else value
                    break
            else:
                if part in (model.model_fields if model else {}):
                    path.append(part)
                    owner = model
                    continue
                # Unknown key (extra_forbidden) points at the key itself.
                for key, _ in node.value:
                    if getattr(key, "value", None) == part:
                        node = key
                path.append(str(part))
                owner = model
                continue
            path.append(part)
            owner = model
            model = _submodel(model, part)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            path[-1:] = [f"{path[-1]}[{part}]"] if path else [f"[{part}]"]
        elif isinstance(part, int):
            path[-1:] = [f"{path[-1]}[{part}]"] if path else [f"[{part}]"]
    return node, path, owner


def _submodel(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    if model is None or name not in model.model_fields:
        return None
    annotation = model.model_fields[name].annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _unknown_key_message(key: str, owner: type[BaseModel] | None) -> str:
    known = sorted(
        (f.alias or name) for name, f in (owner.model_fields.items() if owner else [])
    )
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
    return f"unknown key {key!r} ({hint})"


def _at(display: str, node: yaml.Node, field_name: str, message: str) -> ScenarioError:
    mark = node.start_mark
    return ScenarioError(display, mark.line + 1, mark.column + 1, field_name, message)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the scalar {_short(node.value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
