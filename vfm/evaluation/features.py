"""Image features from any evaluated model: a named method, its `encode_image`, else its backbone's pre-logits."""

from __future__ import annotations

import torch
from torch import nn

from vfm.errors import ConfigError


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def image_features(model: nn.Module, images: torch.Tensor, method: str | None = None) -> torch.Tensor:
    """(N, D) features of `images`: `model.<method>` when named, else `model.encode_image`, else the backbone's.

    `method` picks one of several image paths (InternVL's `encode_image_c` / `encode_image_g`).
    """
    images = images.to(model_device(model))
    if method is not None:
        function = getattr(model, method, None)
        if not callable(function):
            raise ConfigError(f"evaluator image_method: {type(model).__name__} has no method {method!r}")
        return function(images).float()
    if callable(getattr(model, "encode_image", None)):
        return model.encode_image(images).float()
    backbone = getattr(model, "backbone", None)
    if backbone is not None and callable(getattr(backbone, "forward_head", None)):
        return backbone.forward_head(backbone.forward_features(images), pre_logits=True).float()
    raise ConfigError(f"evaluator: {type(model).__name__} has neither encode_image nor a backbone with "
                      "forward_features/forward_head, so it gives no image features")
