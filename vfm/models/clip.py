"""A two-tower image-text model: any registered vision backbone and text tower, each projected to a shared space."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from vfm.registry import BACKBONES, TEXT_TOWERS


class TwoTower(nn.Module):
    """`encode_image(images)` and `encode_text(texts)` give (N, embed_dim) features, unit-norm by default.

    The vision backbone is built with `num_classes=0`, so it returns its pooled features (timm's surface: the
    class token or the average, per the backbone's `global_pool`); `logit_scale` is the log of the inverse
    temperature; `logit_bias` exists for the sigmoid loss only.
    """

    def __init__(self, vision: Annotated[dict, BACKBONES], text: Annotated[dict, TEXT_TOWERS], embed_dim: int,
                 init_temperature: float = 0.07, init_bias: float | None = None) -> None:
        super().__init__()
        self.visual = BACKBONES.build({**vision, "num_classes": 0}, "objective.vision")
        self.text = TEXT_TOWERS.build(text, "objective.text")
        self.visual_proj = nn.Linear(int(self.visual.num_features), embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text.width, embed_dim, bias=False)
        nn.init.normal_(self.visual_proj.weight, std=self.visual.num_features**-0.5)
        nn.init.normal_(self.text_proj.weight, std=self.text.width**-0.5)
        # One-element vectors, not 0-d scalars: FSDP2 cannot shard a 0-d parameter.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / init_temperature)))
        self.logit_bias = nn.Parameter(torch.full((1,), float(init_bias))) if init_bias is not None else None

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings (N, embed_dim)."""
        features = self.visual_proj(self.visual(images))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Text embeddings (N, embed_dim)."""
        features = self.text_proj(self.text(texts))
        return F.normalize(features, dim=-1) if normalize else features
