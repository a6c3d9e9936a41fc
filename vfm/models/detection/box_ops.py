"""Box conversions and overlaps; boxes are (cx, cy, w, h) or (x1, y1, x2, y2) in the last dimension."""

from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of (..., 4) xyxy boxes."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def check_boxes(boxes: Tensor, name: str) -> None:
    """Raise ValueError unless every xyxy box has x2 >= x1 and y2 >= y1 (NaN fails too)."""
    valid = (boxes[..., 2:] >= boxes[..., :2]).all(-1)
    if not bool(valid.all()):
        bad = (~valid).nonzero()[0].tolist()
        raise ValueError(
            f"{name}: {int((~valid).sum())} degenerate box(es) with x2 < x1, y2 < y1 or NaN "
            f"(first at index {bad}: {boxes[tuple(bad)].tolist()}); expected (x1, y1, x2, y2) with x2 >= x1, y2 >= y1"
        )


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union of xyxy boxes (N, 4) x (M, 4) -> (N, M), (N, M)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of xyxy boxes (N, 4) x (M, 4) -> (N, M) in [-1, 1]."""
    # A degenerate box makes the enclosing area negative and the result silently meaningless.
    check_boxes(boxes1, "generalized_box_iou boxes1")
    check_boxes(boxes2, "generalized_box_iou boxes2")
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    enclosing = (bottom_right - top_left).clamp(min=0).prod(-1)
    return iou - (enclosing - union) / enclosing


def aligned_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of corresponding xyxy boxes (K, 4) and (K, 4) -> (K,): the diagonal without the K x K matrix."""
    check_boxes(boxes1, "aligned_generalized_box_iou boxes1")
    check_boxes(boxes2, "aligned_generalized_box_iou boxes2")
    inter = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0).prod(-1)
    union = box_area(boxes1) + box_area(boxes2) - inter
    enclosing = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).prod(-1)
    return inter / union - (enclosing - union) / enclosing


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 − x)) with x clamped to [eps, 1 − eps], so references at 0 or 1 stay finite."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
