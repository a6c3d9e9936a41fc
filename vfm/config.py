"""YAML configs: `_base_` inheritance, OmegaConf interpolation, typed schema, CLI overrides (with a config's
`_aliases_`), dump.

Precedence, lowest first: schema defaults < `_base_` files (in list order) < the config file < CLI
overrides. Mappings merge key by key, lists are replaced, and a mapping whose `type` changes is
replaced whole (so switching `optim.type` from adamw to sgd drops adamw's keys without `_delete_`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vfm.errors import ConfigError

BASE_KEY = "_base_"
ALIASES_KEY = "_aliases_"  # short override names: {task: objective.task} lets `task=rotated` set objective.task
_OVERRIDE_RE = re.compile(r"^(\+?)([A-Za-z_][\w-]*(?:\.[\w-]+)*)=(.*)$", re.DOTALL)


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A key that appears twice in one YAML mapping (PyYAML keeps the last silently)."""


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`), refuses duplicate keys, and never
    executes code."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # Checked before merge keys (`<<: *base`) are flattened in: a key that overrides a merged one is fine.
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if seen:
                raise _DuplicateKeyError(None, None, f"duplicate key {key!r} (first at line {first_line[key]}); "
                                         "each key may appear once in a mapping", key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error names `source`, line and column."""
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = error.problem or error.context or "invalid YAML"
        kind = "YAML error" if isinstance(error, _DuplicateKeyError) else "YAML syntax error"
        raise ConfigError(f"{where}: {kind}: {problem}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: YAML error: {error}") from error


def read_utf8(path: Path) -> str:
    """The text of a config file, which must be UTF-8 (whatever the locale says)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
                          "expected a UTF-8 encoded YAML file") from error


def merge_trees(base: Any, override: Any) -> Any:
    """Deep-merge plain containers: mappings merge, lists and scalars replace, a new `type` replaces."""
    if not (isinstance(base, Mapping) and isinstance(override, Mapping)):
        return copy.deepcopy(override)
    if "type" in override and "type" in base and override["type"] != base["type"]:
        return copy.deepcopy(dict(override))
    merged = dict(copy.deepcopy(base))
    for key, value in override.items():
        merged[key] = merge_trees(merged[key], value) if key in merged else copy.deepcopy(value)
    return merged


def load_yaml_tree(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML file and its `_base_` files (relative to it) into one plain dict."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, resolved))
        raise ConfigError(f"{path}: _base_ cycle: {chain}")
    if not path.is_file():
        where = f" (a _base_ of {_stack[-1]})" if _stack else ""
        raise ConfigError(f"{path}: config file not found{where}")
    tree = parse_yaml(read_utf8(path), str(path))
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
    bases = tree.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = merge_trees(merged, load_yaml_tree(path.parent / base, (*_stack, resolved)))
    return merge_trees(merged, tree)


def parse_override(text: str) -> tuple[str, Any, bool]:
    """Parse `a.b=value` or `+a.new=value` into (key, YAML-typed value, adds_key)."""
    match = _OVERRIDE_RE.match(text)
    if not match:
        raise ConfigError(
            f"malformed override {text!r}: expected key.path=value (add a new key with +key.path=value)"
        )
    plus, key, raw = match.groups()
    value = parse_yaml(raw, f"override {text!r}") if raw.strip() else ""
    return key, value, bool(plus)


def _all_paths(node: Any, prefix: str = "") -> list[str]:
    paths = []
    if isinstance(node, DictConfig):
        items = [(str(k), node._get_node(k)) for k in node.keys()]
    elif isinstance(node, ListConfig):
        items = [(str(i), node._get_node(i)) for i in range(len(node))]
    else:
        return paths
    for key, child in items:
        path = f"{prefix}.{key}" if prefix else key
        paths.append(path)
        if isinstance(child, (DictConfig, ListConfig)):
            paths.extend(_all_paths(child, path))
    return paths


def _key_exists(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted `key` (list items by index) exists in `cfg`."""
    node: Any = cfg
    for part in key.split("."):
        # `part in node` is False for a key whose value is `???`, which can still be overridden; ask keys().
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing() and part in node.keys():
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and not node._is_none() and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def _check_aliases(aliases: Any, path: str | Path, cfg: DictConfig) -> dict[str, str]:
    """A config's `_aliases_`: short top-level names for deep keys, e.g. {task: objective.task}."""
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ConfigError(f"{path}: {ALIASES_KEY} must map short names to dotted keys, got {aliases!r}")
    for name, target in aliases.items():
        if "." in name or name in cfg.keys():
            raise ConfigError(f"{path}: {ALIASES_KEY}.{name}: an alias must be one word that is not a top-level key")
        if not _key_exists(cfg, target):
            raise ConfigError(f"{path}: {ALIASES_KEY}.{name}: target key {target!r} does not exist in the config")
    return aliases


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], aliases: Mapping[str, str] | None = None) -> DictConfig:
    """Apply CLI overrides in order; changing an unknown key is an error unless it starts with `+`.

    `aliases` (a config's `_aliases_`) rewrite an override's first key part: `task=x` sets `objective.task`.
    """
    aliases = aliases or {}
    for text in overrides:
        key, value, adds = parse_override(text)
        head, _, rest = key.partition(".")
        if head in aliases:
            key = f"{aliases[head]}.{rest}" if rest else aliases[head]
        exists = _key_exists(cfg, key)
        if not exists and not adds:
            candidates = _all_paths(cfg)
            hint = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
            suggestion = f" (did you mean {', '.join(repr(h) for h in hint)}?)" if hint else ""
            raise ConfigError(
                f"override {text!r}: unknown key {key!r}{suggestion}; to add a new key write +{text}"
            )
        if exists and adds:
            raise ConfigError(f"override {text!r}: key {key!r} already exists; drop the leading '+'")
        if adds:
            _check_addable(cfg, key, text)
        try:
            OmegaConf.update(cfg, key, value, merge=False, force_add=adds)
        except OmegaConfBaseException as error:
            if not (isinstance(value, dict) and _replace_typed_mapping(cfg, key, value)):
                raise ConfigError(f"override {text!r}: {_one_line(error)}") from error
    return cfg


def _replace_typed_mapping(cfg: DictConfig, key: str, value: dict) -> bool:
    """Replace a mapping whose values have a schema (e.g. eval.sets) whole: empty it, then merge `value` in, so
    each entry is validated against that schema. False when that fails too (the caller reports the first error)."""
    try:
        OmegaConf.update(cfg, key, {}, merge=False)
        OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException:
        return False
    return True


def _check_addable(cfg: DictConfig, key: str, text: str) -> None:
    """A `+key` goes into a mapping (created if absent); typed (schema) sections take no new keys."""
    parts = key.split(".")
    parent: Any = cfg
    walked: list[str] = []
    for part in parts[:-1]:
        if not isinstance(parent, DictConfig) or part not in parent.keys():
            break  # the rest of the path is created
        node = parent._get_node(part)
        walked.append(part)
        if node is None or node._is_none() or node._is_missing():
            raise ConfigError(f"override {text!r}: {'.'.join(walked)!r} has no value to add keys to; set it whole instead")
        parent = node
    if not isinstance(parent, DictConfig):
        raise ConfigError(f"override {text!r}: {'.'.join(walked)!r} is not a mapping")
    schema_type = OmegaConf.get_type(parent)
    if schema_type is not None and dataclasses.is_dataclass(schema_type):
        name = parts[len(walked)]
        hint = difflib.get_close_matches(name, [str(k) for k in parent.keys()], n=3, cutoff=0.6)
        suggestion = f" (did you mean {', '.join(repr(h) for h in hint)}?)" if hint else ""
        where = ".".join(walked) or "the top level"
        raise ConfigError(f"override {text!r}: {where} has a fixed set of keys; {name!r} is not one of them{suggestion}")


def _one_line(error: Exception) -> str:
    """OmegaConf errors span lines (message, full_key, object_type); keep the message and the key."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else type(error).__name__
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), "")
    return f"{key}: {message}" if key and key not in message else message


def load_config(
    path: str | Path, overrides: Sequence[str] = (), schema: type | None = None
) -> DictConfig:
    """Load `path` with its bases, merge it onto `schema` (a dataclass), apply overrides, resolve."""
    tree = load_yaml_tree(path)
    aliases = tree.pop(ALIASES_KEY, {})
    try:
        cfg = OmegaConf.structured(schema) if schema is not None else OmegaConf.create({})
        cfg = OmegaConf.merge(cfg, OmegaConf.create(tree))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: {_describe_merge_error(error, cfg if schema else None)}") from error
    assert isinstance(cfg, DictConfig)
    apply_overrides(cfg, overrides, _check_aliases(aliases, path, cfg))
    try:  # missing_keys reads every value, so a broken interpolation fails here first
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: interpolation failed: {_one_line(error)}") from error
    if missing:
        raise ConfigError(f"{path}: mandatory keys without a value: {', '.join(missing)} (set them or override them)")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: interpolation failed: {_one_line(error)}") from error
    return cfg


def _describe_merge_error(error: Exception, schema_cfg: DictConfig | None) -> str:
    message = _one_line(error)
    match = re.search(r"Key '([^']+)' not in '(\w+)'", str(error))
    full_key = re.search(r"full_key: (\S+)", str(error))
    if match and schema_cfg is not None:
        key = full_key.group(1) if full_key else match.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = list(OmegaConf.select(schema_cfg, parent).keys()) if parent else list(schema_cfg.keys())
        hint = difflib.get_close_matches(key.rsplit(".", 1)[-1], [str(s) for s in siblings], n=3, cutoff=0.6)
        suggestion = f" (did you mean {', '.join(repr(h) for h in hint)}?)" if hint else ""
        return f"unknown key {key!r}{suggestion}; allowed here: {', '.join(str(s) for s in siblings)}"
    return message


def dump_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML that `load_config` reads back to the same values."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
        tmp.replace(path)
    except OSError as error:  # disk full or read-only: one line naming the folder
        raise ConfigError(f"{path.parent}: cannot write {path.name}: {error.strerror or error}") from error


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(cfg, resolve=True)
