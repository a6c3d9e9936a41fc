"""Pure-PyTorch multi-scale deformable attention on grid_sample: the reference for tests and the fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def multi_scale_deformable_attn_reference(
    value: Tensor,  # (N, S, M, D)
    spatial_shapes: Tensor,  # (L, 2) rows (H, W)
    level_start_index: Tensor,  # (L,)
    sampling_locations: Tensor,  # (N, Lq, M, L, P, 2) as (x, y) in [0, 1]
    attention_weights: Tensor,  # (N, Lq, M, L, P)
) -> Tensor:
    """Multi-scale deformable attention with grid_sample; returns (N, Lq, M * D) in value's dtype.

    Half-precision inputs are computed in float32 so that locations keep sub-pixel accuracy. Materialises
    (N * M, D, Lq, L * P), so it is memory-hungry; unlike the official reference it honours level_start_index.
    """
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    dtype = value.dtype if value.dtype in (torch.float32, torch.float64) else torch.float32
    # grid_sample(align_corners=False) maps grid -1/+1 to the outer pixel edges, i.e. location 0/1.
    grids = 2 * sampling_locations.to(dtype) - 1
    samples = []
    for level, ((height, width), start) in enumerate(
        zip(spatial_shapes.tolist(), level_start_index.tolist(), strict=True)
    ):
        level_value = value[:, start : start + height * width].to(dtype)  # (N, H*W, M, D)
        level_value = level_value.permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        samples.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (N*M, D, Lq, P)
    weights = attention_weights.to(dtype).transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)  # (N*M, D, Lq)
    return output.view(batch, heads * channels, queries).transpose(1, 2).contiguous().to(value.dtype)
