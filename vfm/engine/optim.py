"""Optimizers with parameter groups: no decay for norms/biases/`no_weight_decay()`, lr multipliers, layer decay."""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vfm.errors import ConfigError
from vfm.registry import OPTIMIZERS

logger = logging.getLogger(__name__)


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names every submodule's `no_weight_decay()` reports, prefixed with the submodule's path."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay") and callable(module.no_weight_decay):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def _layer_ids(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(layer id, top layer id) per parameter name, from every submodule with a timm `group_matcher`.

    Each such submodule (a vision backbone, a language model) decays over its own depth; a matcher nested inside
    another is the outer one's business. Parameters outside every matcher keep the full learning rate.
    """
    from timm.models import group_parameters

    layer_of: dict[str, tuple[int, int]] = {}
    owners: list[str] = []
    for prefix, module in model.named_modules():
        if any(prefix.startswith(owner + ".") for owner in owners) or not callable(getattr(module, "group_matcher", None)):
            continue
        owners.append(prefix)
        groups = group_parameters(module, module.group_matcher(coarse=False))
        top = max(groups) if groups else 0
        layer_of |= {f"{prefix}.{n}" if prefix else n: (layer, top) for layer, names in groups.items() for n in names}
    if not owners:
        raise ConfigError("optim.layer_decay: the model has no submodule with a timm-style group_matcher()")
    return layer_of


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    lr_mult: Mapping[str, float] | None = None,
    layer_decay: float | None = None,
    no_weight_decay: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Group trainable parameters by (weight decay, lr scale).

    - weight decay 0 for 1-d parameters (norms, biases), names a module's `no_weight_decay()` lists,
      and names matching the `no_weight_decay` patterns;
    - `lr_mult` maps fnmatch patterns to lr multipliers (the first matching pattern wins; a null multiplier
      removes a pattern a base config set, e.g. one naming a layer this variant lacks);
    - `layer_decay` scales each layer's lr by decay ** (top layer - layer), timm-style, per submodule with a
      `group_matcher` (a vision backbone and a language model each over their own depth).
    """
    skip = _no_weight_decay_names(model)
    patterns = list(no_weight_decay or [])
    layer_of = _layer_ids(model) if layer_decay is not None else {}
    lr_mult = {pattern: mult for pattern, mult in (lr_mult or {}).items() if mult is not None}
    unused = set(lr_mult)
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if (param.ndim <= 1 or name in skip or any(fnmatch.fnmatch(name, p) for p in patterns)) else weight_decay
        scale = 1.0
        for pattern, mult in lr_mult.items():
            if fnmatch.fnmatch(name, pattern):
                scale = float(mult)
                unused.discard(pattern)
                break
        if layer_decay is not None:
            layer, top = layer_of.get(name, (0, 0))
            scale *= layer_decay ** (top - layer)
        group = groups.setdefault(
            (decay, scale), {"params": [], "param_names": [], "weight_decay": decay, "lr": lr * scale, "lr_scale": scale}
        )
        group["params"].append(param)
        group["param_names"].append(name)
    if unused:
        raise ConfigError(f"optim.lr_mult: pattern(s) {sorted(unused)} match no trainable parameter")
    if not groups:
        raise ConfigError("optim: the model has no trainable parameters")
    return list(groups.values())


def _check_number(kwargs: dict[str, Any], path: str, key: str, ok: Any, expected: str) -> None:
    value = kwargs.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
        raise ConfigError(f"{path}.{key}: got {value!r}, expected {expected}")


def _check_groups(kwargs: dict[str, Any], path: str) -> None:
    """What every vfm optimizer refuses before any work: values under which training means nothing."""
    _check_number(kwargs, path, "lr", lambda v: 0 < v < math.inf, "a positive learning rate")
    _check_number(kwargs, path, "weight_decay", lambda v: v >= 0, ">= 0")
    _check_number(kwargs, path, "layer_decay", lambda v: 0 < v <= 1, "a value in (0, 1]")
    for pattern, mult in (kwargs.get("lr_mult") or {}).items():
        if mult is not None and isinstance(mult, (int, float)) and mult < 0:
            raise ConfigError(f"optim.lr_mult.{pattern}: got {mult!r}, expected a multiplier >= 0 (or null)")


def _check_adamw(kwargs: dict[str, Any], path: str) -> None:
    _check_groups(kwargs, path)
    _check_number(kwargs, path, "eps", lambda v: v > 0, "a positive number")
    betas = kwargs.get("betas")
    if betas is not None and (len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"{path}.betas: got {list(betas)!r}, expected two values in [0, 1)")


def _check_sgd(kwargs: dict[str, Any], path: str) -> None:
    _check_groups(kwargs, path)
    _check_number(kwargs, path, "momentum", lambda v: v >= 0, ">= 0")


@OPTIMIZERS.register("adamw", check=_check_adamw)
def adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: list[float] = (0.9, 0.999),
    eps: float = 1e-8,
    lr_mult: dict | None = None,
    layer_decay: float | None = None,
    no_weight_decay: list[str] | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """torch.optim.AdamW over vfm's parameter groups."""
    groups = build_param_groups(model, lr, weight_decay, lr_mult, layer_decay, no_weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


@OPTIMIZERS.register("sgd", check=_check_sgd)
def sgd(
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
    lr_mult: dict | None = None,
    layer_decay: float | None = None,
    no_weight_decay: list[str] | None = None,
) -> torch.optim.Optimizer:
    """torch.optim.SGD over vfm's parameter groups."""
    groups = build_param_groups(model, lr, weight_decay, lr_mult, layer_decay, no_weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
