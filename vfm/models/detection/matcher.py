"""Hungarian matching between predicted and target boxes (one-to-one, per image, on CPU with scipy)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vfm.models.detection.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


def focal_class_cost(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Cost of giving each query (Q, C) each target label (K,): focal loss of the positive minus that of the negative."""
    prob = logits.sigmoid()[:, labels]  # (Q, K)
    positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    return positive - negative


def softmax_class_cost(logits: Tensor, labels: Tensor) -> Tensor:
    """-p(label) under a softmax over C + 1 classes: (Q, C + 1), (K,) -> (Q, K)."""
    return -logits.softmax(-1)[:, labels]


class HungarianMatcher:
    """Assign each target box to one query by minimising cost_class·C_cls + cost_bbox·L1 + cost_giou·(−GIoU).

    Boxes are normalised (cx, cy, w, h). `focal=True` uses the sigmoid focal cost (Deformable DETR),
    `focal=False` the softmax cost −p̂(c) with a trailing no-object logit (DETR).
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal: bool = False,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_bbox and cost_giou are all 0; nothing to match on")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal, self.alpha, self.gamma = focal, alpha, gamma

    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor) -> Tensor:
        """Matching cost (Q, K) of one image: logits (Q, C[+1]), boxes (Q, 4), labels (K,), target_boxes (K, 4)."""
        logits, boxes, target_boxes = logits.float(), boxes.float(), target_boxes.float()
        if self.focal:
            class_cost = focal_class_cost(logits, labels, self.alpha, self.gamma)
        else:
            class_cost = softmax_class_cost(logits, labels)
        bbox_cost = torch.cdist(boxes, target_boxes, p=1)
        giou_cost = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
        return self.cost_class * class_cost + self.cost_bbox * bbox_cost + self.cost_giou * giou_cost

    @torch.no_grad()
    def __call__(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Per image, (query indices, target indices) as int64 CPU tensors of equal length min(Q, K).

        `outputs` holds "pred_logits" (N, Q, C[+1]) and "pred_boxes" (N, Q, 4); each target holds
        "labels" (K,) and "boxes" (K, 4). An image without targets gets two empty tensors.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        indices = []
        for image, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[image], boxes[image], target["labels"], target["boxes"]).cpu()
            if not bool(torch.isfinite(cost).all()):
                raise ValueError(
                    f"HungarianMatcher: non-finite matching cost for image {image} (NaN/inf predictions or targets?)"
                )
            query_idx, target_idx = linear_sum_assignment(cost.numpy())
            indices.append(
                (torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64))
            )
        return indices
