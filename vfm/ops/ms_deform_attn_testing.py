"""Random inputs for multi-scale deformable attention, shared by the tests and the benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def level_start_index_of(spatial_shapes: Tensor) -> Tensor:
    """Exclusive cumulative sum of H * W: where each level starts in the flattened value."""
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def random_inputs(
    level_shapes: Sequence[tuple[int, int]],
    batch: int = 2,
    heads: int = 2,
    channels: int = 4,
    queries: int = 5,
    points: int = 3,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    far_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) on `device`.

    Locations are uniform in [-0.25, 1.25] (inside, and straddling every border), with `far_fraction` of them
    moved well outside, to [-3, 4]. Attention weights are positive and sum to 1 over (L, P) per head.
    Locations and weights are float64 when `dtype` is, else float32.
    """
    generator = torch.Generator().manual_seed(seed)
    coord_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    spatial_shapes = torch.tensor(level_shapes, dtype=torch.int64)
    level_start_index = level_start_index_of(spatial_shapes)
    spatial = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
    levels = len(level_shapes)
    value = torch.randn(batch, spatial, heads, channels, generator=generator, dtype=torch.float64)
    shape = (batch, queries, heads, levels, points)
    locations = torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * 1.5 - 0.25
    far = torch.rand(*shape, 1, generator=generator, dtype=torch.float64) < far_fraction
    far_locations = torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * 7 - 3
    locations = torch.where(far, far_locations, locations)
    weights = torch.rand(*shape, generator=generator, dtype=torch.float64) + 0.05
    weights = weights / weights.sum(dim=(-2, -1), keepdim=True)
    return (
        value.to(device=device, dtype=dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        locations.to(device=device, dtype=coord_dtype),
        weights.to(device=device, dtype=coord_dtype),
    )
