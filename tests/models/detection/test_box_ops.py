"""Unit tests for vfm/models/detection/box_ops.py against torchvision.ops."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tv

from vfm.models.detection import box_ops


def random_xyxy(n: int, generator: torch.Generator) -> torch.Tensor:
    top_left = torch.rand(n, 2, generator=generator)
    size = torch.rand(n, 2, generator=generator) * 0.5 + 0.01
    return torch.cat([top_left, top_left + size], -1)


def test_conversions_match_torchvision_and_invert():
    boxes = random_xyxy(20, torch.Generator().manual_seed(0))
    cxcywh = box_ops.box_xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(cxcywh, tv.box_convert(boxes, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_ops.box_cxcywh_to_xyxy(cxcywh), boxes)
    torch.testing.assert_close(box_ops.box_area(boxes), tv.box_area(boxes))


def test_iou_and_giou_match_torchvision():
    generator = torch.Generator().manual_seed(1)
    a, b = random_xyxy(7, generator), random_xyxy(5, generator)
    torch.testing.assert_close(box_ops.box_iou(a, b)[0], tv.box_iou(a, b))
    torch.testing.assert_close(box_ops.generalized_box_iou(a, b), tv.generalized_box_iou(a, b))
    # the aligned version is the diagonal
    c = random_xyxy(7, generator)
    torch.testing.assert_close(box_ops.aligned_generalized_box_iou(a, c), tv.generalized_box_iou(a, c).diag())


def test_giou_known_values():
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert box_ops.generalized_box_iou(box, box).item() == pytest.approx(1.0)
    # disjoint unit boxes two apart: IoU 0, enclosing area 3, union 2 -> GIoU = -1/3
    far = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert box_ops.generalized_box_iou(box, far).item() == pytest.approx(-1 / 3)


def test_degenerate_boxes_raise_a_clear_error():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.2, 0.4, 0.9]])  # x2 < x1
    with pytest.raises(ValueError, match=r"boxes2: 1 degenerate box.*index \[1\].*x2 >= x1"):
        box_ops.generalized_box_iou(good, bad)
    with pytest.raises(ValueError, match="NaN"):
        box_ops.aligned_generalized_box_iou(torch.tensor([[float("nan"), 0.0, 1.0, 1.0]]), good)


def test_inverse_sigmoid_inverts_and_stays_finite_at_the_ends():
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(box_ops.inverse_sigmoid(x).sigmoid(), x)
    assert torch.isfinite(box_ops.inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()
