"""Fixed sine embeddings: of pixel positions from a padding mask, and of boxes (two-stage queries)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _sine_features(positions: Tensor, num_feats: int, temperature: float) -> Tensor:
    """(..., ) positions -> (..., num_feats), sin on even and cos on odd channels of geometric frequencies."""
    dim = torch.arange(num_feats, dtype=torch.float32, device=positions.device)
    frequencies = temperature ** (2 * torch.div(dim, 2, rounding_mode="floor") / num_feats)
    angles = positions[..., None] / frequencies
    return torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).flatten(-2)


def sine_position_embedding(
    mask: Tensor, num_feats: int, temperature: float = 10000.0, offset: float = 0.0, eps: float = 1e-6
) -> Tensor:
    """Sine embedding (N, 2·num_feats, H, W) of pixel positions, y channels first, from mask (N, H, W) True on padding.

    Positions count valid pixels from the top-left and are normalised by the valid extent to (0, 2π], so
    the embedding does not depend on how much padding an image received. DETR uses `offset` 0,
    Deformable DETR −0.5 (cell centres).
    """
    if num_feats % 2:
        raise ValueError(f"sine_position_embedding: num_feats must be even, got {num_feats}")
    valid = (~mask).float()
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    scale = 2 * math.pi
    y = (y + offset) / (y[:, -1:, :] + eps) * scale
    x = (x + offset) / (x[:, :, -1:] + eps) * scale
    embedding = torch.cat([_sine_features(y, num_feats, temperature), _sine_features(x, num_feats, temperature)], -1)
    return embedding.permute(0, 3, 1, 2)


def box_sine_embedding(boxes: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding (..., 4·num_feats) of normalised (cx, cy, w, h) boxes (..., 4), each coordinate scaled by 2π."""
    if num_feats % 2:
        raise ValueError(f"box_sine_embedding: num_feats must be even, got {num_feats}")
    return _sine_features(boxes.float() * (2 * math.pi), num_feats, temperature).flatten(-2)
