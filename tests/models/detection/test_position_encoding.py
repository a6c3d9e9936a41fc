"""Unit tests for vfm/models/detection/position_encoding.py."""

from __future__ import annotations

import math

import pytest
import torch

from vfm.models.detection.position_encoding import box_sine_embedding, sine_position_embedding


def test_pixel_embedding_values_at_known_positions():
    mask = torch.zeros(1, 4, 8, dtype=torch.bool)
    embedding = sine_position_embedding(mask, num_feats=6, offset=-0.5)
    assert embedding.shape == (1, 12, 4, 8)
    # pixel (y=1, x=2): normalised positions (1.5 / 4) and (2.5 / 8) of 2π; channels 0-5 y, 6-11 x
    y, x = 1.5 / 4 * 2 * math.pi, 2.5 / 8 * 2 * math.pi
    frequencies = [10000 ** (2 * (i // 2) / 6) for i in range(6)]
    expected_y = [math.sin(y / f) if i % 2 == 0 else math.cos(y / f) for i, f in enumerate(frequencies)]
    expected_x = [math.sin(x / f) if i % 2 == 0 else math.cos(x / f) for i, f in enumerate(frequencies)]
    torch.testing.assert_close(embedding[0, :, 1, 2], torch.tensor(expected_y + expected_x), atol=1e-5, rtol=1e-5)


def test_valid_region_embedding_does_not_depend_on_padding():
    unpadded = sine_position_embedding(torch.zeros(1, 5, 6, dtype=torch.bool), num_feats=8)
    mask = torch.zeros(1, 9, 11, dtype=torch.bool)
    mask[:, 5:, :] = True
    mask[:, :, 6:] = True
    padded = sine_position_embedding(mask, num_feats=8)
    torch.testing.assert_close(padded[..., :5, :6], unpadded)


def test_box_embedding_layout():
    boxes = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]])
    embedding = box_sine_embedding(boxes, num_feats=4)
    assert embedding.shape == (1, 1, 16)
    for coordinate in range(4):  # each coordinate takes num_feats channels, in (cx, cy, w, h) order
        value = boxes[0, 0, coordinate].item() * 2 * math.pi
        expected = [math.sin(value), math.cos(value), math.sin(value / 100), math.cos(value / 100)]
        torch.testing.assert_close(embedding[0, 0, 4 * coordinate : 4 * coordinate + 4], torch.tensor(expected))


def test_odd_feature_count_is_rejected():
    with pytest.raises(ValueError, match="num_feats must be even"):
        box_sine_embedding(torch.rand(1, 4), num_feats=3)
