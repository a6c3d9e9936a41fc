"""Deformable DETR's transformer: deformable-attention encoder over all levels, decoder with deformable cross-attention.

Iterative box refinement and two-stage proposals are options of `DeformableTransformer.forward`: the model
passes its per-layer box heads (refinement) and its proposal heads (two-stage) as arguments, so the
transformer owns no head and holds no reference to the model.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfm.models.detection.box_ops import inverse_sigmoid
from vfm.models.detection.position_encoding import box_sine_embedding
from vfm.ops import MultiScaleDeformableAttention

Shapes = list[tuple[int, int]]  # (H_l, W_l) per level, as Python ints for loops and views


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention (every pixel of every level is a query) and a ReLU FFN, post-norm."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        dim_feedforward: int,
        dropout: float,
        msda_impl: str | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            d_model, num_heads, num_levels, num_points, batch_first=True, impl=msda_impl
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor,
    ) -> Tensor:
        """src, pos (N, S, d); reference_points (N, S, L, 2); padding_mask (N, S) -> (N, S, d)."""
        attended = self.self_attn(
            src, reference_points, src, spatial_shapes, level_start_index, padding_mask, query_pos=pos
        )
        src = self.norm1(src + self.dropout1(attended))
        return self.norm2(src + self.dropout3(self.linear2(self.dropout2(F.relu(self.linear1(src))))))


class DeformableDecoderLayer(nn.Module):
    """Query self-attention (MHA), deformable cross-attention around the reference, ReLU FFN, post-norm."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        dim_feedforward: int,
        dropout: float,
        msda_impl: str | None = None,
    ) -> None:
        super().__init__()
        # Names follow the official layout (cross_attn/norm1, self_attn/norm2, FFN/norm3) so checkpoints map 1:1.
        self.cross_attn = MultiScaleDeformableAttention(
            d_model, num_heads, num_levels, num_points, batch_first=True, impl=msda_impl
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        memory_padding_mask: Tensor,
    ) -> Tensor:
        """tgt, query_pos (N, Q, d); reference_points (N, Q, L, 2 or 4); memory (N, S, d) -> (N, Q, d)."""
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended = self.cross_attn(
            tgt, reference_points, memory, spatial_shapes, level_start_index, memory_padding_mask, query_pos=query_pos
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        return self.norm3(tgt + self.dropout4(self.linear2(self.dropout3(F.relu(self.linear1(tgt))))))


def encoder_reference_points(shapes: Shapes, valid_ratios: Tensor) -> Tensor:
    """Cell centres of every level's valid region, seen from every level: (N, S, L, 2) normalised (x, y).

    valid_ratios (N, L, 2) is the valid fraction (w, h) of each level; a centre is normalised by its own
    level's valid size, then scaled by each level's ratio into that level's padded coordinates.
    """
    device = valid_ratios.device
    per_level = []
    for level, (height, width) in enumerate(shapes):
        y, x = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=device) + 0.5,
            torch.arange(width, dtype=torch.float32, device=device) + 0.5,
            indexing="ij",
        )
        y = y.reshape(1, -1) / (valid_ratios[:, None, level, 1] * height)  # (N, H·W)
        x = x.reshape(1, -1) / (valid_ratios[:, None, level, 0] * width)
        per_level.append(torch.stack([x, y], -1))
    return torch.cat(per_level, 1)[:, :, None] * valid_ratios[:, None]


class DeformableEncoder(nn.Module):
    """A stack of DeformableEncoderLayers sharing one set of reference points."""

    def __init__(self, layer: DeformableEncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        shapes: Shapes,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        padding_mask: Tensor,
    ) -> Tensor:
        """src, pos (N, S, d) -> memory (N, S, d)."""
        reference_points = encoder_reference_points(shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DecoderOutput(NamedTuple):
    """Per decoder layer: hidden states (D, N, Q, d), input references [(N, Q, 2|4)] * D, refined boxes or None."""

    hidden: Tensor
    references: list[Tensor]
    boxes: Tensor | None


def refine_boxes(deltas: Tensor, reference: Tensor) -> Tensor:
    """σ(deltas + σ⁻¹(reference)): a 4-d reference moves as a box, a 2-d one as the centre only."""
    if reference.shape[-1] == 4:
        return (deltas + inverse_sigmoid(reference)).sigmoid()
    offset = F.pad(inverse_sigmoid(reference), (0, 2))  # (cx, cy) logits, w and h predicted from scratch
    return (deltas + offset).sigmoid()


class DeformableDecoder(nn.Module):
    """A stack of DeformableDecoderLayers; with `box_heads`, each layer refines the reference box of the next."""

    def __init__(self, layer: DeformableDecoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(
        self,
        tgt: Tensor,
        reference: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        query_pos: Tensor,
        memory_padding_mask: Tensor,
        box_heads: nn.ModuleList | None = None,
    ) -> DecoderOutput:
        """tgt, query_pos (N, Q, d); reference (N, Q, 2|4) normalised to the valid region; memory (N, S, d).

        With `box_heads` (one per layer), layer l predicts boxes σ(head_l(h_l) + σ⁻¹(ref_l)), and their detached
        copy is ref_{l+1}: each layer refines the previous one's boxes without gradient through the chain.
        """
        if box_heads is not None and len(box_heads) != len(self.layers):
            raise ValueError(f"DeformableDecoder: {len(box_heads)} box heads for {len(self.layers)} layers")
        hidden, references, boxes = [], [], []
        for index, layer in enumerate(self.layers):
            # References are relative to the valid region; the op samples the padded map, hence the ratios.
            # A 2-d reference becomes a 4-d box after the first refinement.
            scale = valid_ratios if reference.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
            tgt = layer(
                tgt,
                query_pos,
                reference[:, :, None] * scale[:, None],
                memory,
                spatial_shapes,
                level_start_index,
                memory_padding_mask,
            )
            hidden.append(tgt)
            references.append(reference)
            if box_heads is not None:
                layer_boxes = refine_boxes(box_heads[index](tgt), reference)
                boxes.append(layer_boxes)
                reference = layer_boxes.detach()
        return DecoderOutput(torch.stack(hidden), references, torch.stack(boxes) if boxes else None)


class TransformerOutput(NamedTuple):
    """Decoder output plus two-stage proposals: logits (N, S, C) and boxes (N, S, 4), or None."""

    decoder: DecoderOutput
    encoder_logits: Tensor | None
    encoder_boxes: Tensor | None


def encoder_proposals(memory_padding_mask: Tensor, shapes: Shapes) -> tuple[Tensor, Tensor]:
    """One proposal per encoder token: its cell centre in the valid region, w = h = 0.05·2^level.

    Returns logits σ⁻¹(box) (N, S, 4), +inf for padded tokens and boxes touching the border (outside
    0.01–0.99), and the validity mask (N, S).
    """
    batch = memory_padding_mask.shape[0]
    device = memory_padding_mask.device
    proposals, start = [], 0
    for level, (height, width) in enumerate(shapes):
        mask = memory_padding_mask[:, start : start + height * width].view(batch, height, width)
        valid_h = (~mask[:, :, 0]).sum(1).float()  # (N,)
        valid_w = (~mask[:, 0, :]).sum(1).float()
        y, x = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=device) + 0.5,
            torch.arange(width, dtype=torch.float32, device=device) + 0.5,
            indexing="ij",
        )
        centres = torch.stack([x[None] / valid_w[:, None, None], y[None] / valid_h[:, None, None]], -1)  # (N, H, W, 2)
        sizes = torch.full_like(centres, 0.05 * 2.0**level)
        proposals.append(torch.cat([centres, sizes], -1).view(batch, -1, 4))
        start += height * width
    boxes = torch.cat(proposals, 1)
    valid = ((boxes > 0.01) & (boxes < 0.99)).all(-1) & ~memory_padding_mask
    logits = torch.log(boxes / (1 - boxes)).masked_fill(~valid[..., None], float("inf"))
    return logits, valid


class DeformableTransformer(nn.Module):
    """Multi-level encoder + decoder; learned queries (one-stage) or top-k encoder proposals (two-stage)."""

    def __init__(
        self,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        num_points: int = 4,
        two_stage: bool = False,
        num_queries: int = 300,
        msda_impl: str | None = None,
    ) -> None:
        super().__init__()
        args = (d_model, num_heads, num_feature_levels, num_points, dim_feedforward, dropout, msda_impl)
        self.encoder = DeformableEncoder(DeformableEncoderLayer(*args), num_encoder_layers)
        self.decoder = DeformableDecoder(DeformableDecoderLayer(*args), num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.d_model, self.two_stage, self.num_queries = d_model, two_stage, num_queries
        if two_stage:
            self.proposal_proj = nn.Linear(d_model, d_model)
            self.proposal_norm = nn.LayerNorm(d_model)
            self.proposal_pos_proj = nn.Linear(2 * d_model, 2 * d_model)
            self.proposal_pos_norm = nn.LayerNorm(2 * d_model)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier for matrices, then the deformable attention's own ring init (which the Xavier pass overwrote)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        if not self.two_stage:
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        query_embed: Tensor | None = None,
        box_heads: nn.ModuleList | None = None,
        encoder_heads: tuple[nn.Module, nn.Module] | None = None,
    ) -> TransformerOutput:
        """Per level srcs, pos_embeds (N, d, H_l, W_l) and masks (N, H_l, W_l); query_embed (Q, 2d) one-stage only.

        `box_heads` turns on iterative refinement; `encoder_heads` (class head, box head) score and regress
        the two-stage proposals.
        """
        shapes: Shapes = [tuple(src.shape[-2:]) for src in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (N, S, d)
        padding_mask = torch.cat([m.flatten(1) for m in masks], 1)  # (N, S)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[level] for level, p in enumerate(pos_embeds)], 1
        )
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.int64, device=src.device)  # (L, 2)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        valid_ratios = torch.stack([valid_ratio(m) for m in masks], 1)  # (N, L, 2)

        memory = self.encoder(src, pos, shapes, spatial_shapes, level_start_index, valid_ratios, padding_mask)

        encoder_logits = encoder_boxes = None
        if self.two_stage:
            if encoder_heads is None:
                raise ValueError("DeformableTransformer: two_stage needs encoder_heads (class head, box head)")
            reference, query_pos, tgt, encoder_logits, encoder_boxes = self._select_proposals(
                memory, padding_mask, shapes, *encoder_heads
            )
        else:
            if query_embed is None:
                raise ValueError("DeformableTransformer: one-stage needs query_embed (Q, 2·d_model)")
            query_pos, tgt = query_embed[None].expand(src.shape[0], -1, -1).split(self.d_model, -1)
            reference = self.reference_points(query_pos).sigmoid()  # (N, Q, 2)
        decoded = self.decoder(
            tgt, reference, memory, spatial_shapes, level_start_index, valid_ratios, query_pos, padding_mask, box_heads
        )
        return TransformerOutput(decoded, encoder_logits, encoder_boxes)

    def _select_proposals(
        self, memory: Tensor, padding_mask: Tensor, shapes: Shapes, class_head: nn.Module, box_head: nn.Module
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Score every encoder token as a proposal; the top-k (by the first class logit) become decoder queries."""
        proposal_logits, valid = encoder_proposals(padding_mask, shapes)
        features = memory.masked_fill(~valid[..., None], 0.0)
        features = self.proposal_norm(self.proposal_proj(features))
        logits = class_head(features)  # (N, S, C)
        box_logits = box_head(features) + proposal_logits  # (N, S, 4); +inf where invalid
        if memory.shape[1] < self.num_queries:
            raise ValueError(
                f"DeformableTransformer: two-stage needs at least num_queries={self.num_queries} encoder tokens, "
                f"got {memory.shape[1]} (feature maps {shapes}); use fewer queries or larger images"
            )
        # Invalid tokens (padding, border) are never selected; the official code could pick them.
        scores = logits[..., 0].masked_fill(~valid, float("-inf"))
        top = scores.topk(self.num_queries, dim=1).indices  # (N, Q)
        top_box_logits = box_logits.gather(1, top[..., None].expand(-1, -1, 4)).detach()
        reference = top_box_logits.sigmoid()  # (N, Q, 4)
        embedding = box_sine_embedding(reference, self.d_model // 2).to(memory.dtype)  # (N, Q, 2d)
        query_pos, tgt = self.proposal_pos_norm(self.proposal_pos_proj(embedding)).split(self.d_model, -1)
        return reference, query_pos, tgt, logits, box_logits.sigmoid()


def valid_ratio(mask: Tensor) -> Tensor:
    """Valid fraction (w, h) of each image of a (N, H, W) padding mask padded bottom/right -> (N, 2)."""
    height, width = mask.shape[-2:]
    valid_h = (~mask[:, :, 0]).sum(1).float() / height
    valid_w = (~mask[:, 0, :]).sum(1).float() / width
    return torch.stack([valid_w, valid_h], -1)
