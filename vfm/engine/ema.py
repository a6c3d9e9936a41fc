"""EMA of the trainable weights: timm's ModelEmaV3, skipping parameters the run does not train."""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


class TrainableEma(ModelEmaV3):
    """timm's ModelEmaV3 whose update leaves frozen parameters alone (their copies equal the originals)."""

    def __init__(self, model: nn.Module, **options) -> None:
        super().__init__(model, **options)
        self.frozen = {name for name, param in model.named_parameters() if not param.requires_grad}

    @torch.no_grad()
    def apply_update_(self, model: nn.Module, decay: float) -> None:
        """Lerp trainable parameters and floating buffers towards `model`; copy integer buffers."""
        ema_values, model_values = [], []
        model_state = model.state_dict()
        for key, ema_value in self.module.state_dict().items():
            if key in self.frozen:
                continue
            if ema_value.is_floating_point():
                ema_values.append(ema_value)
                model_values.append(model_state[key])
            else:
                ema_value.copy_(model_state[key])
        if ema_values:
            self._foreach_lerp_(ema_values, model_values, weight=1.0 - decay)
