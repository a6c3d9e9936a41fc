"""The grid_sample reference against an independent four-corner gather implementation."""

import pytest
import torch

from vfm.ops.ms_deform_attn_reference import multi_scale_deformable_attn_reference
from vfm.ops.ms_deform_attn_testing import random_inputs


def gather_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Bilinear sampling written from the formula: pixel (x * W - 0.5, y * H - 0.5), zero outside the map."""
    batch, _, heads, channels = value.shape
    _, queries, _, _, points, _ = sampling_locations.shape
    output = value.new_zeros(batch, queries, heads, channels)
    batch_index = torch.arange(batch)[:, None, None, None]
    head_index = torch.arange(heads)[None, None, :, None]
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        start = int(level_start_index[level])
        level_value = value[:, start : start + height * width]
        x = sampling_locations[:, :, :, level, :, 0] * width - 0.5  # (N, Lq, M, P)
        y = sampling_locations[:, :, :, level, :, 1] * height - 0.5
        for dy in (0, 1):
            for dx in (0, 1):
                corner_x = x.detach().floor() + dx
                corner_y = y.detach().floor() + dy
                weight = (1 - (x - corner_x).abs()) * (1 - (y - corner_y).abs())
                inside = (corner_x >= 0) & (corner_x < width) & (corner_y >= 0) & (corner_y < height)
                index = (corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)).long()
                gathered = level_value[batch_index, index, head_index]  # (N, Lq, M, P, D)
                scale = weight * inside * attention_weights[:, :, :, level]
                output = output + (scale[..., None] * gathered).sum(3)
    return output.flatten(2)


LEVELS = [[(6, 5), (3, 3), (1, 1)], [(1, 1)], [(8, 8), (4, 4), (2, 2), (1, 1)], [(2, 7), (5, 1)]]


@pytest.mark.parametrize("level_shapes", LEVELS)
def test_reference_matches_gather_in_float64(level_shapes):
    inputs = random_inputs(level_shapes, batch=2, heads=3, channels=5, queries=7, points=4, far_fraction=0.2)
    expected = gather_reference(*inputs)
    actual = multi_scale_deformable_attn_reference(*inputs)
    assert actual.shape == (2, 7, 3 * 5)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_reference_gradients_match_gather():
    inputs = random_inputs([(5, 4), (2, 3), (1, 1)], batch=2, heads=2, channels=3, queries=4, points=2)
    grads = []
    for fn in (multi_scale_deformable_attn_reference, gather_reference):
        leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
        fn(*leaves).pow(2).sum().backward()
        grads.append([leaves[i].grad for i in (0, 3, 4)])
    for actual, expected in zip(*grads, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


def test_points_outside_sample_zero_and_border_is_half():
    value = torch.ones(1, 4, 1, 2, dtype=torch.float64)  # one 2x2 level of ones
    shapes, starts = torch.tensor([[2, 2]]), torch.tensor([0])
    weights = torch.ones(1, 3, 1, 1, 1, dtype=torch.float64)
    # far outside -> 0; exactly on the left border (x = 0, y centred on a row) -> half the pixel -> 0.5; centre -> 1
    locations = torch.tensor([[-2.0, 0.5], [0.0, 0.25], [0.5, 0.5]], dtype=torch.float64).view(1, 3, 1, 1, 1, 2)
    output = multi_scale_deformable_attn_reference(value, shapes, starts, locations, weights)
    torch.testing.assert_close(output[0, :, 0], torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
