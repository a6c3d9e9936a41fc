"""Set losses of DETR-style detectors: Hungarian-matched classification, L1 and GIoU box losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfm.dist.collectives import all_reduce_mean
from vfm.models.detection.box_ops import aligned_generalized_box_iou, box_cxcywh_to_xyxy
from vfm.models.detection.matcher import HungarianMatcher


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017) of logits against {0, 1} targets of the same shape."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob_true = prob * targets + (1 - prob) * (1 - targets)  # probability given to the right answer
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - prob_true) ** gamma


class SetCriterion(nn.Module):
    """Match predictions to targets, then sum the weighted losses of the final and every auxiliary prediction set.

    `focal=True` (Deformable DETR): logits (N, Q, C), sigmoid focal loss over all (query, class) pairs divided
    by the number of target boxes; no background slot. `focal=False` (DETR): logits (N, Q, C + 1), the last
    is no-object, cross-entropy with the no-object class weighted by `eos_coef`.
    Outputs may carry "aux_outputs" (a list of earlier decoder layers' predictions, suffix `_{i}`) and
    "enc_outputs" (two-stage proposals, matched as one class "object", suffix `_enc`).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        focal: bool,
        class_weight: float,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        eos_coef: float = 0.1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.matcher, self.focal = num_classes, matcher, focal
        self.class_key = "loss_focal" if focal else "loss_ce"
        self.weights = {self.class_key: class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = eos_coef
        # Not persistent: derived from the config, so it stays out of checkpoints.
        self.register_buffer("class_weights", class_weights, persistent=False)

    def num_boxes(self, targets: list[dict[str, Tensor]], device: torch.device) -> Tensor:
        """Target boxes per rank, averaged over ranks and clamped at 1: the normaliser of the box and focal losses."""
        total = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        return all_reduce_mean(total).float().clamp(min=1.0)

    def class_loss(self, logits: Tensor, targets: list[dict[str, Tensor]], indices, num_boxes: Tensor) -> Tensor:
        """Focal or cross-entropy loss over all queries; unmatched queries are background."""
        batch_idx, query_idx = _matched_queries(indices, logits.device)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        if self.focal:
            onehot = torch.zeros_like(logits)
            onehot[batch_idx, query_idx, matched_labels] = 1.0
            return sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).sum() / num_boxes
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[batch_idx, query_idx] = matched_labels
        return F.cross_entropy(logits.transpose(1, 2), classes, weight=self.class_weights.to(logits.dtype))

    def box_losses(
        self, boxes: Tensor, targets: list[dict[str, Tensor]], indices, num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """L1 and 1 − GIoU of matched (cx, cy, w, h) boxes, summed and divided by num_boxes."""
        batch_idx, query_idx = _matched_queries(indices, boxes.device)
        predicted = boxes[batch_idx, query_idx]  # (K, 4)
        target = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)]).to(predicted.dtype)
        l1 = F.l1_loss(predicted, target, reduction="sum") / num_boxes
        giou = aligned_generalized_box_iou(box_cxcywh_to_xyxy(predicted), box_cxcywh_to_xyxy(target))
        return {"loss_bbox": l1, "loss_giou": (1 - giou).sum() / num_boxes}

    def set_losses(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """Unweighted losses of one prediction set: {"loss_focal" | "loss_ce", "loss_bbox", "loss_giou"}."""
        logits, boxes = outputs["pred_logits"].float(), outputs["pred_boxes"].float()
        indices = self.matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
        return {
            self.class_key: self.class_loss(logits, targets, indices, num_boxes),
            **self.box_losses(boxes, targets, indices, num_boxes),
        }

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """{"loss": weighted sum over all prediction sets, plus each set's unweighted losses (final set unsuffixed)}."""
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        prediction_sets = [("", outputs, targets)]
        prediction_sets += [(f"_{layer}", aux, targets) for layer, aux in enumerate(outputs.get("aux_outputs", []))]
        if "enc_outputs" in outputs:
            # Proposals are scored class-agnostically: every target counts as class 0, "object".
            binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            prediction_sets.append(("_enc", outputs["enc_outputs"], binary))
        losses: dict[str, Tensor] = {}
        total = outputs["pred_logits"].new_zeros((), dtype=torch.float32)
        for suffix, predictions, set_targets in prediction_sets:
            for name, value in self.set_losses(predictions, set_targets, num_boxes).items():
                total = total + self.weights[name] * value
                losses[name + suffix] = value
        return {"loss": total, **losses}


def _matched_queries(indices: list[tuple[Tensor, Tensor]], device: torch.device) -> tuple[Tensor, Tensor]:
    """(image index, query index) of every matched query, concatenated over images."""
    batch_idx = torch.cat([torch.full_like(query, image) for image, (query, _) in enumerate(indices)])
    query_idx = torch.cat([query for query, _ in indices])
    return batch_idx.to(device), query_idx.to(device)
