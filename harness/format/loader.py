"""Read scenario files: safe YAML with node marks, one clear line per problem.

A bad file never raises past `load_file` or `load_paths`: it comes back as
`ScenarioError`s (`path:line:col: field: what was expected`) and every other file still
loads. What is refused before validation, because pydantic or PyYAML would otherwise
crash, hang or guess: nesting deeper than `MAX_DEPTH` (PyYAML's composer recurses),
alias bombs and recursive aliases, duplicate keys (YAML would keep the last silently),
lone surrogates (not text), files that are not regular readable files.

What the format alone cannot know comes from the caller (`harness.frontends.scenarios`
passes both): the engine names a scenario may use (`KnownEngines`, the registry's, plugins
included) and a `ModelChecker` for a model's own limits. Reading a file imports no engine,
plugin or model-source code; without them, names and models are not checked.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ValidationError

from harness.format.scenario import MODEL_SOURCES, FieldError, Scenario
from harness.format.suggest import did_you_mean

MAX_FILE_BYTES = 1_000_000
# Collections inside collections, counted through aliases too. Scenario files need about
# ten; each level costs PyYAML, pydantic and jsonschema a few stack frames.
MAX_DEPTH = 50
# Aliases let a 1 KB file expand to billions of nodes ("billion laughs"); PyYAML shares the
# objects, but validation walks them. What is capped is the nodes aliases add, not the
# file's own nodes (those are bounded by MAX_FILE_BYTES).
MAX_ALIAS_NODES = 50_000
SCENARIO_SUFFIXES = (".yaml", ".yml")
_SURROGATE = re.compile("[\ud800-\udfff]")
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class ScenarioError:
    path: str
    line: int  # 1-based; 0 when the file could not be read at all
    column: int
    field: str
    message: str
    scenario: str = ""  # the scenario's name where the item has a readable one

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}" if self.line else self.path
        what = f"{self.field}: {self.message}" if self.field else self.message
        return f"{where}: {what}"


@dataclass(frozen=True)
class LoadedScenario:
    scenario: Scenario
    path: str
    line: int


@dataclass(frozen=True)
class KnownEngines:
    """The engine names a scenario may use, given by the loader's caller (the registry's:
    `harness.engines.known_engines()`), and why a name is none of them (a "did you mean", the
    plugins that failed to load), in the registry's words."""

    names: tuple[str, ...]
    unknown_message: Callable[[str], str]


# Where a model problem is (a pydantic-style location in the scenario) and what it is.
ModelProblem = tuple[tuple[str | int, ...], str]


class ModelChecker(Protocol):
    """Every way a valid scenario exceeds its model (`harness.models.checks.model_problems`)."""

    def __call__(self, scenario: Scenario) -> list[ModelProblem]: ...


@dataclass
class LoadResult:
    scenarios: list[LoadedScenario] = field(default_factory=list)
    errors: list[ScenarioError] = field(default_factory=list)


def _walk(paths: list[Path]) -> tuple[list[Path], list[ScenarioError]]:
    """Scenario-looking entries under `paths` (dangling symlinks, FIFOs and directories named
    *.yaml included: they are errors, not silence) and the directories that cannot be listed."""
    found: dict[Path, None] = {}
    errors: list[ScenarioError] = []

    def unlistable(exc: OSError) -> None:
        errors.append(ScenarioError(str(exc.filename), 0, 0, "", f"cannot list directory: {exc.strerror or exc}"))

    for path in paths:
        if not path.is_dir():
            found[path] = None
            continue
        entries: list[Path] = []
        for directory, dirnames, filenames in os.walk(path, onerror=unlistable):
            names = filenames + [d for d in dirnames if d.endswith(SCENARIO_SUFFIXES)]
            entries += [Path(directory, n) for n in names if n.endswith(SCENARIO_SUFFIXES)]
        found.update(dict.fromkeys(sorted(entries)))
    return list(found), errors


def load_paths(paths: list[Path], engines: KnownEngines | None = None,
               models: ModelChecker | None = None) -> LoadResult:
    """Load every scenario file under `paths`; names must be unique across all of them.
    `engines`, `models`: see `load_file`."""
    files, walk_errors = _walk(paths)
    result = LoadResult(errors=walk_errors)
    seen: dict[str, LoadedScenario] = {}
    for path in files:
        one = load_file(path, engines, models)
        result.errors.extend(one.errors)
        for loaded in one.scenarios:
            duplicate = duplicate_name(loaded, seen)
            if duplicate is not None:
                result.errors.append(duplicate)
                continue
            result.scenarios.append(loaded)
    return result


def duplicate_name(loaded: LoadedScenario, seen: dict[str, LoadedScenario]) -> ScenarioError | None:
    """The error when `loaded`'s name was already taken (by a scenario in `seen`, which
    this updates): names are unique across every file of a run, whichever front end runs it."""
    first = seen.setdefault(loaded.scenario.name, loaded)
    if first is loaded:
        return None
    return ScenarioError(loaded.path, loaded.line, 1, "name",
                         f"duplicate scenario name {loaded.scenario.name!r} (first defined at {first.path}:{first.line})",
                         loaded.scenario.name)


def load_file(path: Path, engines: KnownEngines | None = None, models: ModelChecker | None = None) -> LoadResult:
    """One scenario file. `engines`: the names `engines:` may list (None: not checked);
    `models`: checks each scenario against its model (None: not checked)."""
    display = str(path)
    try:
        return _load_file(path, display, engines, models)
    except Exception as exc:  # the promise: a bad file is a line, never a traceback
        return LoadResult(errors=[ScenarioError(display, 0, 0, "", f"could not be loaded ({type(exc).__name__}: {exc})")])


def _load_file(path: Path, display: str, engines: KnownEngines | None, models: ModelChecker | None) -> LoadResult:
    text, error = _read(path, display)
    if error is not None:
        return LoadResult(errors=[error])
    node, error = _compose(text, display)
    if error is not None:
        return LoadResult(errors=[error])
    if node is None:
        return LoadResult(errors=[ScenarioError(display, 1, 1, "", "empty file: expected a scenario mapping or a list of them")])
    error = _alias_problem(display, node)
    if error is not None:
        return LoadResult(errors=[error])

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
        name = _name_of(item)
        try:
            loaded = _load_item(display, item, prefix, engines, models)
        except Exception as exc:  # this item only: the others in the list still load
            loaded = [_at(display, item, prefix.rstrip("."), f"could not be loaded ({type(exc).__name__}: {exc})")]
        for one in loaded:
            if isinstance(one, LoadedScenario):
                result.scenarios.append(one)
            else:
                result.errors.extend(_named([one], name))
    return result


def _load_item(display: str, item: yaml.MappingNode, prefix: str, engines: KnownEngines | None,
               models: ModelChecker | None) -> list[LoadedScenario] | list[ScenarioError]:
    """One scenario mapping: its scenarios (one per family where `model.family` is a list or
    `all`), or its problems."""
    problems = _node_problems(display, item, prefix)
    if problems:
        return problems
    try:
        data = _Constructor().construct_document(item)
    except yaml.YAMLError as exc:
        return [_yaml_error(display, exc)]
    variants = _family_variants(data)
    if isinstance(variants, ScenarioError):
        node, _, _ = _node_at(item, ("model", "family"))
        return [_at(display, node, f"{prefix}model.family", variants.message)]
    context = {"base_dir": str(Path(display).parent.absolute())}
    scenarios: list[LoadedScenario] = []
    errors: dict[tuple[int, int, str, str], ScenarioError] = {}  # one line for what every variant says
    for variant, family_index in variants:
        try:
            scenario = Scenario.model_validate(variant, context=context)
        except ValidationError as exc:
            for error in _validation_errors(display, item, exc, prefix, family_index):
                errors.setdefault((error.line, error.column, error.field, error.message), error)
            continue
        found = _unknown_engines(display, item, scenario, prefix, engines) + _model_problems(display, item, scenario, prefix, models)
        for error in found:
            errors.setdefault((error.line, error.column, error.field, error.message), error)
        if not found:
            scenarios.append(LoadedScenario(scenario, display, item.start_mark.line + 1))
    return list(errors.values()) or scenarios


def _family_variants(data: Any) -> list[tuple[Any, int | None]] | ScenarioError:
    """The scenario data once per family where `model.family` is a list or `all` (each named
    NAME.FAMILY, with its index in the list for error lines), else the data as it is."""
    from harness.models.families import ALL_FAMILIES, all_families

    model = data.get("model") if isinstance(data, dict) else None
    family = model.get("family") if isinstance(model, dict) else None
    if family == ALL_FAMILIES:
        inputs = data.get("inputs")  # an image input: the image-text families
        names = all_families(multimodal=isinstance(inputs, dict) and "image" in inputs)
        if names is None:
            return ScenarioError("", 0, 0, "", "family: all needs the installed transformers' list of causal-LM "
                                                "model types, which could not be read (is transformers installed?)")
        indexed: list[tuple[Any, int | None]] = [(name, None) for name in names]
    elif isinstance(family, list) and family:
        indexed = [(name, index) for index, name in enumerate(family)]
    else:
        return [(data, None)]
    variants = []
    for name, index in indexed:
        variant = dict(data, model=dict(model or {}, family=name))
        if isinstance(data.get("name"), str):
            variant["name"] = f"{data['name']}.{name}"
        variants.append((variant, index))
    return variants


def _model_problems(display: str, root: yaml.MappingNode, scenario: Scenario, prefix: str,
                    models: ModelChecker | None) -> list[ScenarioError]:
    problems = []
    for loc, message in models(scenario) if models is not None else []:
        node, path, _ = _node_at(root, loc)
        problems.append(_at(display, node, prefix + _join(path), message))
    return problems


def _unknown_engines(display: str, root: yaml.MappingNode, scenario: Scenario, prefix: str,
                     engines: KnownEngines | None) -> list[ScenarioError]:
    errors = []
    for index, name in enumerate(scenario.engines):
        if engines is not None and name not in engines.names:
            node, _, _ = _node_at(root, ("engines", index))
            errors.append(_at(display, node, f"{prefix}engines[{index}]", engines.unknown_message(name)))
    return errors


class _Constructor(yaml.SafeLoader):
    """SafeLoader's constructor on an already composed node (no stream of its own)."""

    def __init__(self) -> None:
        yaml.constructor.SafeConstructor.__init__(self)


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark, path: list[str | int]) -> None:
        self.mark, self.path = mark, path


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader whose (recursive) composer stops at MAX_DEPTH, before Python's stack does."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._path: list[str | int | None] = []  # where the composer is, for the error's field

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # index: the key node of a mapping value, a list position, or None (root, a key)
        self._path.append(index.value if isinstance(index, yaml.ScalarNode) else index)
        try:
            if len(self._path) > MAX_DEPTH + 1:
                raise _TooDeep(self.peek_event().start_mark, [p for p in self._path if p is not None])
            return super().compose_node(parent, index)
        finally:
            self._path.pop()


def _read(path: Path, display: str) -> tuple[str, ScenarioError | None]:
    """The file's text, or why it is not a readable scenario file."""
    def refuse(message: str, line: int = 0) -> tuple[str, ScenarioError]:
        return "", ScenarioError(display, line, 1 if line else 0, "", message)

    try:
        # O_NONBLOCK: a FIFO named x.yaml must not hang the run before fstat says what it is.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        return refuse(_open_problem(path, exc))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return refuse("is a directory, not a scenario file")
        if not stat.S_ISREG(info.st_mode):
            return refuse("not a regular file (a FIFO, socket or device): not a scenario file")
        if info.st_size > MAX_FILE_BYTES:
            return refuse(f"file is {info.st_size} bytes; scenario files are limited to {MAX_FILE_BYTES}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return refuse(f"cannot read: {exc.strerror or exc}")
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:  # it grew after fstat
        return refuse(f"file is more than {MAX_FILE_BYTES} bytes; scenario files are limited to {MAX_FILE_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return refuse(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", line)
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        return refuse("binary content (NUL byte): not a YAML scenario file", line)
    return text, None


def _open_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "cannot read: symlink loop (the link leads back to itself)"
    if exc.errno == errno.ENOENT and path.is_symlink():
        return f"cannot read: dangling symlink (its target {os.readlink(path)!r} does not exist)"
    if exc.errno == errno.EISDIR:
        return "is a directory, not a scenario file"
    return f"cannot read: {exc.strerror or exc}"


def _reader_error(display: str, text: str, exc: yaml.reader.ReaderError) -> ScenarioError:
    """A character YAML does not allow (a raw control character): its line and column,
    which the reader gives only as an offset."""
    before = text[: exc.position]
    line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
    code = exc.character if isinstance(exc.character, int) else ord(exc.character)
    escape = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ScenarioError(display, line, column, "", f"invalid YAML: character U+{code:04X} is not allowed (a raw "
                         f"control character: write it as the escape \"{escape}\" in a double-quoted string)")


def _compose(text: str, display: str) -> tuple[yaml.Node | None, ScenarioError | None]:
    try:  # the reader checks every character up front
        loader = _DepthLimitedLoader(text)
    except yaml.reader.ReaderError as exc:
        return None, _reader_error(display, text, exc)
    try:
        documents: list[yaml.Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                documents.append(node)
    except _TooDeep as exc:
        return None, _too_deep(display, exc.mark, exc.path)
    except RecursionError:  # a stack already deep when loading began: still one line
        return None, ScenarioError(display, 1, 1, "", f"nested too deeply to read (at most {MAX_DEPTH} levels)")
    except yaml.YAMLError as exc:
        return None, _yaml_error(display, exc)
    finally:
        loader.dispose()
    if len(documents) > 1:
        return None, _at(display, documents[1], "", "several YAML documents ('---') in one file: put scenarios in a list instead")
    return (documents[0] if documents else None), None


def _too_deep(display: str, mark: yaml.Mark, path: list[str | int]) -> ScenarioError:
    field_name = _join(path)
    if len(field_name) > 80:
        field_name = field_name[:77] + "..."
    return ScenarioError(display, mark.line + 1, mark.column + 1, field_name,
                         f"nested more than {MAX_DEPTH} levels deep; scenario files are limited to {MAX_DEPTH}")


def _alias_problem(display: str, root: yaml.Node) -> ScenarioError | None:
    """Aliases measured, not expanded: the nodes they add, the depth they reach, cycles.

    One post-order pass over the distinct nodes, memoising each node's expanded size and
    height; an alias is a node reached a second time.
    """
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    distinct = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = (1 + max((height[id(c)] for c in children), default=0)) if children else 0
            on_path.discard(key)
            continue
        if key in size:
            continue
        if key in on_path:
            return _at(display, node, "", "recursive YAML alias (an anchor used inside itself); refusing to load")
        distinct += 1
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                return _at(display, child, "", "recursive YAML alias (an anchor used inside itself); refusing to load")
            if id(child) not in size:
                stack.append((child, False))
    if size[id(root)] - distinct > MAX_ALIAS_NODES:
        return _at(display, root, "", f"document expands to more than {MAX_ALIAS_NODES} extra nodes through "
                                      "YAML aliases; refusing to load")
    if height[id(root)] > MAX_DEPTH:
        return _at(display, root, "", f"nested more than {MAX_DEPTH} levels deep once YAML aliases are "
                                      f"expanded; scenario files are limited to {MAX_DEPTH}")
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _node_problems(display: str, item: yaml.MappingNode, prefix: str) -> list[ScenarioError]:
    """Duplicate keys (both lines named) and lone surrogates, each at its own node and field."""
    errors: list[ScenarioError] = []
    visited: set[int] = set()
    stack: list[tuple[yaml.Node, list[str | int]]] = [(item, [])]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            found = _SURROGATE.search(node.value)
            if found:
                errors.append(_at(display, node, prefix + _join(path), f"lone surrogate {found.group()!r} in a string: "
                                                                     "not valid Unicode text"))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, [*path, i]) for i, child in reversed(list(enumerate(node.value))))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key, _value in node.value:
                label = key.value if isinstance(key, yaml.ScalarNode) else "?"
                identity = _key_identity(key)
                if identity is not None and identity in first_line:
                    errors.append(_at(display, key, prefix + _join([*path, label]),
                                      f"duplicate key (first at line {first_line[identity]}); YAML would keep only the last"))
                elif identity is not None:
                    first_line[identity] = key.start_mark.line + 1
            for key, value in reversed(node.value):
                label = key.value if isinstance(key, yaml.ScalarNode) else "?"
                stack.append((value, [*path, label]))
                stack.append((key, [*path, label]))
    errors.sort(key=lambda e: (e.line, e.column))
    return errors


def _key_identity(key: yaml.Node) -> Any:
    """What a key becomes in the constructed dict (1, 0x1, 1.0 and true are one key), or None."""
    if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
        return None
    if key.tag == _STR_TAG:
        return key.value
    try:
        value = _Constructor().construct_object(key, deep=True)
        hash(value)
    except Exception:  # not constructible or unhashable: the constructor reports it
        return None
    return value


def _name_of(item: yaml.MappingNode) -> str:
    for key, value in item.value:
        if getattr(key, "value", None) == "name" and isinstance(value, yaml.ScalarNode):
            return value.value if value.value.isprintable() else _label(value.value)
    return ""


def _named(errors: list[ScenarioError], name: str) -> list[ScenarioError]:
    return [ScenarioError(e.path, e.line, e.column, e.field, e.message, name) for e in errors]


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


def _validation_errors(display: str, root: yaml.MappingNode, exc: ValidationError, prefix: str,
                       family_index: int | None = None) -> list[ScenarioError]:
    errors = []
    for detail in exc.errors(include_url=False):
        loc = tuple(detail["loc"])
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):  # a rule that names the field it is about
            loc += cause.loc
        if family_index is not None and [p for p in loc if p not in MODEL_SOURCES] == ["model", "family"]:
            loc += (family_index,)  # this family of the list
        node, path, parent = _node_at(root, loc, want_key=detail["type"] == "extra_forbidden")
        field_name = prefix + _join(path)
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = _unknown_key_message(loc[-1] if loc else "", parent)
        elif detail["type"] == "missing":
            message = "required field is missing"
        elif "input" in detail and detail["type"] not in ("value_error", "assertion_error"):
            message += f" (got {_short(detail['input'])})"
        errors.append(_at(display, node, field_name, message))
    return errors


def _node_at(root: yaml.Node, loc: tuple[Any, ...], want_key: bool = False) -> tuple[yaml.Node, list[str | int], type[BaseModel] | None]:
    """Follow a pydantic error location through the YAML node tree.

    Returns the deepest node reached, the readable field path and the pydantic model that
    owns the last key (for 'did you mean'). A location part names a mapping key (of a model
    or of a plain dict), a list index, or '[key]' (the key itself is wrong: point at it).
    Parts past a scalar (a shorthand such as `- cuda:0` for `{device: cuda:0}`) and
    pydantic's union tags name no node and are skipped.
    """
    node: yaml.Node = root
    path: list[str | int] = []
    model: type[BaseModel] | None = Scenario
    owner: type[BaseModel] | None = Scenario
    parts = [p for p in loc if p != "[key]"]
    key_parts = {i - 1 for i, p in enumerate(loc) if p == "[key]"}
    depth = 0
    for index, part in enumerate(loc):
        if part == "[key]":
            continue
        last = depth == len(parts) - 1
        depth += 1
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                node = node.value[part]
            path.append(part)
            continue
        if not isinstance(node, yaml.MappingNode):
            continue  # past a scalar: the shorthand's own fields name no node
        if isinstance(part, str) and part in MODEL_SOURCES:  # the tag of the `model:` union
            model = MODEL_SOURCES[part]
            continue
        pair = _find_key(node, part)
        if pair is None and model is not None and part not in _field_names(model):
            continue  # a union tag such as 'function-after[...]'
        if pair is not None:
            node = pair[0] if (want_key and last) or index in key_parts else pair[1]
        path.append(str(part))  # a key, even an int one (logit_bias ids)
        owner = model
        model = _submodel(model, part) if isinstance(part, str) else None
    return node, path, owner


def _find_key(node: yaml.MappingNode, part: Any) -> tuple[yaml.Node, yaml.Node] | None:
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and (key.value == part or (not isinstance(part, str) and _key_identity(key) == part)):
            return key, value
    return None


def _field_names(model: type[BaseModel]) -> set[str]:
    return {n for name, f in model.model_fields.items() for n in (name, f.alias) if n}


def _submodel(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    if model is None:
        return None
    fields = {f.alias or n: f for n, f in model.model_fields.items()} | model.model_fields
    if name not in fields:
        return None
    annotation = fields[name].annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _unknown_key_message(key: Any, owner: type[BaseModel] | None) -> str:
    known = sorted(
        (f.alias or name) for name, f in (owner.model_fields.items() if owner else [])
    )
    hint = did_you_mean(key, known, otherwise=f"expected one of: {', '.join(known)}")
    return f"unknown key {key!r} ({hint})"


def _label(key: str) -> str:
    """A key as a field name: unprintable characters escaped (the field is printed)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in key) if key else "''"


def _join(path: list[str | int]) -> str:
    """['devices', 2, 'gpus'] -> 'devices[2].gpus' (str parts are keys, int parts indices)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + _label(part)
    return text


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
