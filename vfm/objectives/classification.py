"""Supervised image classification with label-smoothed cross-entropy."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from vfm.errors import ConfigError
from vfm.registry import BACKBONES, OBJECTIVES


def _check_classification(kwargs: dict[str, Any], path: str) -> None:
    smoothing = kwargs.get("label_smoothing", 0.0)
    if isinstance(smoothing, (int, float)) and not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"{path}.label_smoothing: got {smoothing!r}, expected a value in [0, 1)")
    classes = kwargs.get("num_classes")
    if isinstance(classes, int) and classes < 1:
        raise ConfigError(f"{path}.num_classes: got {classes!r}, expected a positive integer")


@OBJECTIVES.register("classification", check=_check_classification)
class Classification(nn.Module):
    """A backbone whose classifier head outputs `num_classes` logits; batch = {"image", "label"}."""

    def __init__(
        self,
        backbone: Annotated[dict, BACKBONES],
        num_classes: int,
        label_smoothing: float = 0.0,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        super().__init__()
        self.backbone = BACKBONES.build({**backbone, "num_classes": num_classes}, "objective.backbone")
        self.label_smoothing, self.image_key, self.label_key = label_smoothing, image_key, label_key

    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Logits (N, num_classes)."""
        return {"logits": self.backbone(batch[self.image_key])}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.backbone(batch[self.image_key])
        labels = batch[self.label_key]
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=-1) == labels).float().mean()
        return {"loss": loss, "train_accuracy": accuracy}
