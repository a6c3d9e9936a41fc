"""DETR (Carion et al. 2020): CNN features, a dense transformer and set prediction with learned queries."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from vfm.models.detection.backbone import DetectionBackbone
from vfm.models.detection.detr_transformer import DetrTransformer
from vfm.models.detection.position_encoding import sine_position_embedding

# Focal-loss classifiers start at p = 0.01 for every class so the many negatives do not swamp early training.
FOCAL_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [out_dim], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class DETR(nn.Module):
    """Backbone's last level -> 1×1 conv -> DetrTransformer -> class logits and sigmoid (cx, cy, w, h) boxes per query.

    `focal=False`: C + 1 logits (the last is no-object) for the softmax loss; `focal=True`: C sigmoid logits
    starting at p = 0.01 (the DETR-DC5+ control of the Deformable DETR paper).
    """

    def __init__(
        self,
        backbone: dict[str, Any],
        num_classes: int,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_queries: int = 100,
        focal: bool = False,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = DetectionBackbone(**backbone)
        self.input_proj = nn.Conv2d(self.backbone.channels[-1], d_model, kernel_size=1)
        self.transformer = DetrTransformer(
            d_model, num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout
        )
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.class_head = nn.Linear(d_model, num_classes if focal else num_classes + 1)
        self.box_head = MLP(d_model, d_model, 4, 3)
        self.d_model, self.aux_loss = d_model, aux_loss
        if focal:
            nn.init.constant_(self.class_head.bias, FOCAL_PRIOR_BIAS)

    def forward(self, images: Tensor, masks: Tensor) -> dict[str, Any]:
        """images (N, 3, H, W), masks (N, H, W) -> {"pred_logits" (N, Q, C[+1]), "pred_boxes" (N, Q, 4), "aux_outputs"}."""
        features, mask = self.backbone(images, masks)[-1]
        pos = sine_position_embedding(mask, self.d_model // 2)
        hidden = self.transformer(self.input_proj(features), mask, pos, self.query_embed.weight)  # (layers, N, Q, d)
        logits = self.class_head(hidden)
        boxes = self.box_head(hidden).sigmoid()
        outputs: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        return outputs
