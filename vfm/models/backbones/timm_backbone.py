"""Any timm model as a backbone, with weights from a local file only (never from a hub)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from vfm.errors import CheckpointError, ConfigError
from vfm.registry import BACKBONES, close_matches
from vfm.weights import load_state_dict_file

logger = logging.getLogger(__name__)


def _check_timm_node(kwargs: dict[str, Any], path: str) -> None:
    """Check the model name and its arguments by building it on the meta device (no memory, no weights)."""
    name = kwargs.get("name")
    if not isinstance(name, str) or not timm.is_model(name):
        raise ConfigError(f"{path}.name: {name!r} is not a timm model{close_matches(str(name), timm.list_models())}")
    model_kwargs = {k: v for k, v in kwargs.items() if k not in ("name", "pretrained")}
    # Sizes timm accepts silently on the meta device and fails on only at the first forward (an empty conv).
    for key, least in (("in_chans", 1), ("num_classes", 0), ("img_size", 1), ("patch_size", 1), ("depth", 1)):
        value = model_kwargs.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < least:
            raise ConfigError(f"{path}.{key}: got {value}, expected an integer >= {least}")
    model_kwargs.setdefault("num_classes", 0)
    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, **model_kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: timm model {name!r} rejected its arguments: {detail}") from error
    pretrained = kwargs.get("pretrained")
    if pretrained and not Path(pretrained).is_file():
        raise ConfigError(f"{path}.pretrained: weights file {pretrained!r} not found (weights load from local files only)")


@BACKBONES.register("timm", check=_check_timm_node)
def timm_backbone(name: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """Create timm model `name` (timm's own surface: forward_features, forward_intermediates, ...).

    `pretrained` is a local .pth/.pt/.safetensors file; it is passed through the model family's
    `checkpoint_filter_fn`, which remaps foreign layouts and resizes position embeddings.
    """
    if not timm.is_model(name):
        raise ConfigError(f"backbone name {name!r} is not a timm model{close_matches(name, timm.list_models())}")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as error:
        raise ConfigError(f"timm model {name!r} rejected its arguments {sorted(kwargs)}: {error}") from error
    if pretrained:
        load_timm_weights(model, pretrained)
    return model


def load_timm_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load a local checkpoint into a timm model; returns (missing, unexpected) keys and logs them."""
    state_dict = load_state_dict_file(path)
    for key in ("model", "state_dict", "module"):  # common wrappers around the weights
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except Exception as error:  # noqa: BLE001 - a filter fails on layouts it does not know
            raise CheckpointError(f"{path}: timm's checkpoint filter for {type(model).__name__} failed: {error}") from error
    own = model.state_dict()
    # Heads sized for another number of classes are dropped so the backbone still loads.
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    for key in mismatched:
        logger.warning("%s: skipping %s: shape %s in file, %s in model", path, key, tuple(state_dict[key].shape), tuple(own[key].shape))
        del state_dict[key]
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys:
        logger.warning("%s: %d missing keys: %s", path, len(result.missing_keys), ", ".join(result.missing_keys[:10]))
    if result.unexpected_keys:
        logger.warning("%s: %d unexpected keys: %s", path, len(result.unexpected_keys), ", ".join(result.unexpected_keys[:10]))
    if not any(k in own for k in state_dict):
        raise CheckpointError(f"{path}: no key of the file matches the model {type(model).__name__}")
    return list(result.missing_keys), list(result.unexpected_keys)


