"""Registries: register builders by decorator, build them from config nodes with a `type` key.

A builder is a class or function. Its signature is the schema of its config node: every key of the
node must be a parameter, every parameter without a default must be given, and values must fit the
type hints. A parameter annotated ``Annotated[dict, SOME_REGISTRY]`` (or a list of those) holds a
nested node that is validated against that registry too, so a whole config tree is checked before
any work starts.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from types import ModuleType
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from vfm.errors import ConfigError, RegistryError

T = TypeVar("T", bound=Callable[..., Any])

# Components register themselves when their modules are imported. vfm's own component packages are
# advertised in the `vfm.plugins` entry-point group of its pyproject.toml, like any third-party plug-in,
# and loaded on the first lookup: this bottom layer names no component module, and a new module in a
# component package (say vfm/objectives/) registers without touching any core file.
PLUGIN_GROUP = "vfm.plugins"
_loaded_entry_points = False


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Format a "did you mean" suffix for `word` among `choices` ('' when nothing is close)."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


def to_container(node: Any) -> Any:
    """Turn OmegaConf nodes into plain dicts/lists with interpolations resolved."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


class Registry:
    """A named mapping from type names to builders."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._builders: dict[str, Callable[..., Any]] = {}
        self._checks: dict[str, Callable[[dict[str, Any], str], None]] = {}

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {len(self._builders)} entries)"

    def __contains__(self, name: str) -> bool:
        _load_builtins()
        return name in self._builders

    def register(
        self, name: str | None = None, *, force: bool = False, check: Callable[[dict[str, Any], str], None] | None = None
    ) -> Callable[[T], T]:
        """Decorator that registers a builder under `name` (default: its ``__name__``).

        `check(kwargs, path)` validates what the signature cannot (e.g. arguments passed on through
        ``**kwargs``); it runs with the other checks, before any work starts.
        """

        def decorator(builder: T) -> T:
            key = name or builder.__name__
            existing = self._builders.get(key)
            if existing is not None and existing is not builder and not force:
                raise RegistryError(
                    f"{self.name}: {key!r} is already registered by {existing.__module__}.{existing.__qualname__};"
                    " pass force=True to replace it"
                )
            self._builders[key] = builder
            if check is not None:
                self._checks[key] = check
            return builder

        return decorator

    def list(self) -> list[str]:
        """Sorted names of all registered builders."""
        _load_builtins()
        return sorted(self._builders)

    def get(self, name: str, path: str = "type") -> Callable[..., Any]:
        """The builder registered as `name`; an unknown name raises with the close matches."""
        _load_builtins()
        if not isinstance(name, str) or name not in self._builders:
            raise RegistryError(
                f"{path}: unknown {self.name} type {name!r}{close_matches(str(name), self._builders)};"
                f" registered: {', '.join(sorted(self._builders)) or 'none'}"
            )
        return self._builders[name]

    def validate(self, node: Any, path: str, provided: Iterable[str] = ()) -> None:
        """Check `node` against its builder's signature; `provided` names arguments the caller adds."""
        node = to_container(node)
        if not isinstance(node, Mapping):
            raise ConfigError(f"{path}: expected a mapping with a 'type' key for a {self.name} node, got {node!r}")
        if "type" not in node:
            raise ConfigError(f"{path}: missing 'type' key; registered {self.name}: {', '.join(self.list())}")
        builder = self.get(node["type"], f"{path}.type")
        kwargs = {k: v for k, v in node.items() if k != "type"}
        _check_arguments(builder, kwargs, path, set(provided), f"{self.name} type {node['type']!r}")
        if node["type"] in self._checks:
            self._checks[node["type"]](kwargs, path)

    def build(self, node: Any, path: str = "", **extra: Any) -> Any:
        """Validate `node` and call its builder with the node's keys plus `extra`."""
        path = path or self.name
        node = to_container(node)
        self.validate(node, path, provided=extra)
        kwargs = {k: v for k, v in node.items() if k != "type"}
        kwargs.update(extra)
        return self.get(node["type"])(**kwargs)


def _signature(builder: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any]]:
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolved forward references: skip type checks, keep name checks
        hints = {}
    return inspect.signature(builder), hints


def _check_arguments(
    builder: Callable[..., Any], kwargs: Mapping[str, Any], path: str, provided: set[str], what: str
) -> None:
    signature, hints = _signature(builder)
    params = signature.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    for key, value in kwargs.items():
        if key not in params or params[key].kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            if accepts_any:
                continue
            raise RegistryError(
                f"{path}.{key}: unknown argument {key!r} for {what}"
                f"{close_matches(key, named)}; accepted: {', '.join(named)}"
            )
        if key in hints:
            _check_value(value, hints[key], f"{path}.{key}")
    for name, param in params.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or param.default is not inspect.Parameter.empty:
            continue
        if name not in kwargs and name not in provided:
            raise RegistryError(f"{path}: missing required argument {name!r} for {what}")


def _check_value(value: Any, hint: Any, path: str) -> None:
    """Raise a ConfigError when `value` does not fit `hint`; recurse into nested registry nodes."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        registry = next((m for m in meta if isinstance(m, Registry)), None)
        if registry is not None:
            if value is None and _allows_none(base):
                return
            registry.validate(value, path)
            return
        _check_value(value, base, path)
        return
    if not _fits(value, hint, path):
        raise ConfigError(f"{path}: expected {_describe(hint)}, got {type(value).__name__} {value!r}")


def _allows_none(hint: Any) -> bool:
    return hint is Any or type(None) in typing.get_args(hint)


def _fits(value: Any, hint: Any, path: str) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        _check_value(value, hint, path)
        return True
    if origin is typing.Union or (origin is not None and origin.__name__ == "UnionType"):
        errors = []
        for arg in args:
            try:
                if _fits(value, arg, path):
                    return True
            except ConfigError as error:  # a nested node that fails its registry check
                errors.append(error)
        if errors and len(errors) == len([a for a in args if a is not type(None)]):
            raise errors[0]
        return False
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if args and args[-1] is not Ellipsis:
            item_hint = args[0] if (origin is list or len(args) == 1) else None
            if item_hint is not None:
                for i, item in enumerate(value):
                    _check_value(item, item_hint, f"{path}.{i}")
        return True
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping)
    return True  # types a YAML value cannot express (modules, tensors) are the builder's business


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is typing.Union or (origin is not None and origin.__name__ == "UnionType"):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is typing.Annotated:
        return _describe(typing.get_args(hint)[0])
    if hint is type(None):
        return "null"
    if origin is not None:  # list[int], dict[str, float]: keep the item types
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _load_builtins() -> None:
    """Before the first lookup: load vfm's own and third-party components (once; a failure is retried next time)."""
    load_entry_point_plugins()


def import_package(module: ModuleType) -> list[str]:
    """Import every submodule of package `module` (recursively) so their components register."""
    if not hasattr(module, "__path__"):
        return []
    names = []
    for info in pkgutil.walk_packages(module.__path__, prefix=f"{module.__name__}."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def load_entry_point_plugins() -> list[str]:
    """Import every module (or whole package) advertised in the ``vfm.plugins`` entry-point group (once)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return []
    _loaded_entry_points = True
    loaded = []
    try:
        for entry_point in metadata.entry_points(group=PLUGIN_GROUP):
            try:
                import_package(entry_point.load())
            except Exception as error:
                raise ConfigError(f"plugin {entry_point.name!r} ({entry_point.value}) failed to load: {error}") from error
            loaded.append(entry_point.name)
    except BaseException:
        _loaded_entry_points = False
        raise
    return loaded


def import_custom_modules(modules: Iterable[str], path: str = "custom_imports") -> None:
    """Import the modules a config lists under ``custom_imports`` so they can register components."""
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as error:  # a plug-in that fails at import for any reason is a config problem
            raise ConfigError(f"{path}.{i}: cannot import module {module!r}: {type(error).__name__}: {error}") from error


BACKBONES = Registry("backbones")
TEXT_TOWERS = Registry("text_towers")
OBJECTIVES = Registry("objectives")
DATASETS = Registry("datasets")
TRANSFORMS = Registry("transforms")
DETECTION_TRANSFORMS = Registry("detection_transforms")
OPTIMIZERS = Registry("optimizers")
SCHEDULERS = Registry("schedulers")
HOOKS = Registry("hooks")
EVALUATORS = Registry("evaluators")
STRATEGIES = Registry("strategies")
SAMPLERS = Registry("samplers")
