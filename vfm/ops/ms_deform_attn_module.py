"""The multi-scale deformable attention block of Deformable DETR (parameter names match the official and mmcv ones)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vfm.ops.ms_deform_attn import multi_scale_deformable_attn


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to `num_points` sampled points per head and level around its reference point.

    Args:
        embed_dims: channels of query and value; must be divisible by `num_heads`.
        num_heads: attention heads (M).
        num_levels: feature levels (L).
        num_points: sampling points per head and level (P).
        batch_first: inputs are (N, Lq, C) / (N, S, C) if True, else (Lq, N, C) / (S, N, C) as in mmcv.
        im2col_step: accepted for checkpoint/config compatibility; the kernels ignore it.
        impl: force "reference", "cpu" or "cuda" (default: VFM_MSDA_IMPL, else automatic).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        batch_first: bool = False,
        im2col_step: int = 64,
        impl: str | None = None,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.batch_first = batch_first
        self.im2col_step = im2col_step
        self.impl = impl
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: a fixed ring of offsets per head, uniform attention, Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        # Head m starts pointing along angle 2*pi*m/M, scaled so the larger of |cos|, |sin| is 1 (one pixel);
        # point k sits k+1 pixels out. This locality prior is what the fast convergence rests on.
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        ring = torch.stack([thetas.cos(), thetas.sin()], dim=-1)
        ring = ring / ring.abs().max(dim=-1, keepdim=True).values
        ring = ring.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        ring *= torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor | None,
        spatial_shapes: Tensor,
        level_start_index: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> Tensor:
        """Attend from `query` to the flattened multi-level `value` (the query itself when None).

        Args:
            query: (N, Lq, C), or (Lq, N, C) unless batch_first.
            reference_points: (N, Lq, L, 2) as normalised (x, y), or (N, Lq, L, 4) boxes (cx, cy, w, h).
            value: (N, S, C), or (S, N, C) unless batch_first; S = sum of H * W over levels.
            spatial_shapes: (L, 2) int64 rows (H, W).
            level_start_index: (L,); computed from spatial_shapes when None.
            key_padding_mask: (N, S) bool, True where value is padding (zeroed before sampling).
            query_pos: added to query before the offset and weight projections.

        Returns:
            (N, Lq, C), or (Lq, N, C) unless batch_first; no residual or dropout is applied.
        """
        if value is None:
            value = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.transpose(0, 1)
            value = value.transpose(0, 1)
        batch, num_queries, _ = query.shape
        num_value = value.shape[1]
        if level_start_index is None:
            sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
            level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(batch, num_value, self.num_heads, -1)
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        sampling_locations = self._sampling_locations(reference_points, offsets, spatial_shapes)

        output = multi_scale_deformable_attn(
            value, spatial_shapes, level_start_index, sampling_locations, weights, self.im2col_step, impl=self.impl
        )
        output = self.output_proj(output)
        return output if self.batch_first else output.transpose(0, 1)

    def _sampling_locations(self, reference_points: Tensor, offsets: Tensor, spatial_shapes: Tensor) -> Tensor:
        """Offsets are in pixels of each level (2-d references) or fractions of the box size (4-d references)."""
        if reference_points.shape[-1] == 2:
            # At least float32: a bfloat16 location is off by up to ~0.3 px on a 150-px-wide level.
            dtype = torch.promote_types(offsets.dtype, torch.float32)
            normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], dim=-1).to(dtype)  # (W, H)
            return reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        if reference_points.shape[-1] == 4:
            centers = reference_points[:, :, None, :, None, :2]
            sizes = reference_points[:, :, None, :, None, 2:]
            return centers + offsets / self.num_points * sizes * 0.5
        raise ValueError(
            f"reference_points must have shape (N, Lq, L, 2) or (N, Lq, L, 4), got shape {tuple(reference_points.shape)}"
        )

    def extra_repr(self) -> str:
        return (
            f"embed_dims={self.embed_dims}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
            f"num_points={self.num_points}, batch_first={self.batch_first}"
        )
