"""Distributed strategies behind one interface, registered by name in STRATEGIES: single | ddp | fsdp | deepspeed.

A strategy's own options come from `dist.<name>` in the config (`dist.ddp.static_graph`,
`dist.fsdp.reshard_after_forward`, `dist.deepspeed.zero_stage`, ...): the keyword-only arguments of its
class are that section's typed schema. Modules are imported by the registry on first use; DeepSpeed
itself is imported only when its strategy is built.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any

from vfm.engine.strategies.base import COMMON_OPTIONS, Strategy, StrategyCaps
from vfm.errors import ConfigError
from vfm.registry import STRATEGIES, _check_value, close_matches, to_container


def strategy_class(name: str) -> type[Strategy]:
    """The registered strategy class called `name` (a ConfigError naming dist.strategy otherwise)."""
    if name not in STRATEGIES:
        raise ConfigError(f"dist.strategy: got {name!r}, expected one of {', '.join(STRATEGIES.list())}"
                          f"{close_matches(str(name), STRATEGIES.list())}")
    return STRATEGIES.get(name)


def validate_strategy_options(name: str, options: Any, path: str) -> dict[str, Any]:
    """Check `options` against the keyword-only arguments of strategy `name`; returns them as a plain dict."""
    cls = strategy_class(name)
    options = to_container(options) or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{path}: expected a mapping of {name} strategy options, got {options!r}")
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY}
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    for key, value in options.items():
        if key not in params:
            accepted = ", ".join(params) or "none"
            raise ConfigError(f"{path}.{key}: unknown option of the {name} strategy{close_matches(key, params)}; accepted: {accepted}")
        if key in hints:
            _check_value(value, hints[key], f"{path}.{key}")
    return dict(options)


def strategy_option_defaults(name: str) -> dict[str, Any]:
    """The options of strategy `name` with their defaults (what `dist.<name>` holds when a config sets nothing)."""
    cls = strategy_class(name)
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


def strategy_caps(name: str, options: Mapping[str, Any] | None = None) -> StrategyCaps:
    """What strategy `name` supports with these options (checked before any work)."""
    return strategy_class(name).capabilities(dict(options or {}))


def build_strategy(name: str, **settings: Any) -> Strategy:
    """The strategy called `name`, built with the common settings (precision, grad_accum_steps, micro_batch_size,
    clip_grad_norm) and its own options, all as keywords."""
    common = {k: v for k, v in settings.items() if k in COMMON_OPTIONS}
    options = validate_strategy_options(name, {k: v for k, v in settings.items() if k not in COMMON_OPTIONS}, f"dist.{name}")
    return strategy_class(name)(**common, **options)


__all__ = ["STRATEGIES", "Strategy", "StrategyCaps", "build_strategy", "strategy_caps", "strategy_class",
           "strategy_option_defaults",
           "validate_strategy_options"]
