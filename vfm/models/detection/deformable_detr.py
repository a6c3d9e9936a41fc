"""Deformable DETR (Zhu et al. 2021): multi-level features, deformable attention, optional box refinement and two-stage."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from vfm.errors import ConfigError
from vfm.models.detection.backbone import DetectionBackbone, downsample_mask
from vfm.models.detection.deformable_transformer import DeformableTransformer, refine_boxes
from vfm.models.detection.detr import FOCAL_PRIOR_BIAS, MLP
from vfm.models.detection.position_encoding import sine_position_embedding


def group_norm_groups(d_model: int, path: str = "d_model") -> int:
    """GroupNorm groups of the input projections: 32 as in the paper, fewer for d_model < 32."""
    groups = min(32, d_model)
    if d_model % groups:
        raise ConfigError(f"{path}: {d_model} is not divisible by {groups} GroupNorm groups; use a multiple of 32")
    return groups


def check_deformable_args(
    d_model: int,
    num_heads: int,
    num_feature_levels: int,
    num_backbone_levels: int,
    with_box_refine: bool,
    two_stage: bool,
    num_queries: int,
    path: str = "objective",
) -> None:
    """Raise ConfigError for combinations the model cannot build."""
    if d_model % num_heads:
        raise ConfigError(f"{path}.num_heads: d_model {d_model} is not divisible by num_heads {num_heads}")
    if (d_model // 2) % 2:
        raise ConfigError(f"{path}.d_model: {d_model} must be a multiple of 4 (sine position embedding)")
    group_norm_groups(d_model, f"{path}.d_model")
    if num_feature_levels < num_backbone_levels:
        raise ConfigError(
            f"{path}.num_feature_levels: {num_feature_levels} is fewer than the {num_backbone_levels} backbone "
            "out_indices; expected num_feature_levels >= len(backbone.out_indices)"
        )
    if two_stage and not with_box_refine:
        raise ConfigError(
            f"{path}.two_stage: true needs with_box_refine: true (two-stage builds on iterative refinement, as in the paper)"
        )
    if num_queries < 1:
        raise ConfigError(f"{path}.num_queries: expected >= 1, got {num_queries}")


class DeformableDETR(nn.Module):
    """Backbone levels -> 1×1 conv + GN (extra levels: 3×3 stride-2 conv + GN) -> DeformableTransformer -> heads.

    Heads: class Linear(d, C) (sigmoid, p = 0.01 at init) and a 3-layer box MLP predicting offsets to the
    reference in logit space. Without refinement one pair of heads serves every decoder layer; with it,
    each layer has its own. Two-stage adds `encoder_class_head`/`encoder_box_head` for the proposals.
    """

    def __init__(
        self,
        backbone: dict[str, Any],
        num_classes: int,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_queries: int = 300,
        num_feature_levels: int = 4,
        num_points: int = 4,
        with_box_refine: bool = False,
        two_stage: bool = False,
        aux_loss: bool = True,
        msda_impl: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = DetectionBackbone(**backbone)
        check_deformable_args(
            d_model, num_heads, num_feature_levels, len(self.backbone.channels), with_box_refine, two_stage, num_queries
        )
        groups = group_norm_groups(d_model)
        projections = [
            nn.Sequential(nn.Conv2d(channels, d_model, kernel_size=1), nn.GroupNorm(groups, d_model))
            for channels in self.backbone.channels
        ]
        in_channels = self.backbone.channels[-1]
        for _ in range(num_feature_levels - len(projections)):
            projections.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, d_model, kernel_size=3, stride=2, padding=1), nn.GroupNorm(groups, d_model)
                )
            )
            in_channels = d_model
        self.input_proj = nn.ModuleList(projections)
        self.transformer = DeformableTransformer(
            d_model, num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout,
            num_feature_levels, num_points, two_stage, num_queries, msda_impl,
        )  # fmt: skip
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, 2 * d_model)  # (query_pos, tgt) halves

        class_head, box_head = nn.Linear(d_model, num_classes), MLP(d_model, d_model, 4, 3)
        nn.init.constant_(class_head.bias, FOCAL_PRIOR_BIAS)
        # Zero last layer: the first boxes are the references themselves.
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)
        num_sets = num_decoder_layers if with_box_refine else 1
        self.class_heads = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_sets))
        self.box_heads = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_sets))
        if two_stage:
            # Proposal offsets start at 0 (the proposal box); its w, h are already in the reference.
            self.encoder_class_head = copy.deepcopy(class_head)
            self.encoder_box_head = copy.deepcopy(box_head)
        else:
            # 2-d references carry no size: the first layer starts at w = h = σ(−2) ≈ 0.12; later layers refine.
            nn.init.constant_(self.box_heads[0].layers[-1].bias[2:], -2.0)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight)
            nn.init.zeros_(projection[0].bias)
        self.d_model, self.num_feature_levels = d_model, num_feature_levels
        self.with_box_refine, self.two_stage, self.aux_loss = with_box_refine, two_stage, aux_loss

    def forward(self, images: Tensor, masks: Tensor) -> dict[str, Any]:
        """images (N, 3, H, W), masks (N, H, W) True on padding.

        Returns {"pred_logits" (N, Q, C), "pred_boxes" (N, Q, 4) normalised (cx, cy, w, h), "aux_outputs"
        (earlier layers, if aux_loss), "enc_outputs" (two-stage proposals)}.
        """
        levels = self.backbone(images, masks)
        srcs = [projection(features) for projection, (features, _) in zip(self.input_proj, levels, strict=False)]
        level_masks = [mask for _, mask in levels]
        for level in range(len(levels), self.num_feature_levels):
            src = self.input_proj[level](levels[-1][0] if level == len(levels) else srcs[-1])
            srcs.append(src)
            level_masks.append(downsample_mask(masks, src.shape[-2:]))
        pos = [
            sine_position_embedding(m, self.d_model // 2, offset=-0.5).to(s.dtype)
            for m, s in zip(level_masks, srcs, strict=True)
        ]

        output = self.transformer(
            srcs,
            level_masks,
            pos,
            query_embed=None if self.two_stage else self.query_embed.weight,
            box_heads=self.box_heads if self.with_box_refine else None,
            encoder_heads=(self.encoder_class_head, self.encoder_box_head) if self.two_stage else None,
        )
        hidden, references, boxes = output.decoder  # (D, N, Q, d), D × (N, Q, 2|4), (D, N, Q, 4) or None
        if self.with_box_refine:
            logits = torch.stack([head(h) for head, h in zip(self.class_heads, hidden, strict=True)])
        else:
            logits = self.class_heads[0](hidden)
            boxes = refine_boxes(self.box_heads[0](hidden), references[0])  # every layer shares the first reference
        outputs: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        if self.two_stage:
            outputs["enc_outputs"] = {"pred_logits": output.encoder_logits, "pred_boxes": output.encoder_boxes}
        return outputs
