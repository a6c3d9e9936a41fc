"""Turn set predictions into per-image detections in original-image pixels (no NMS: the matching made them unique)."""

from __future__ import annotations

import torch
from torch import Tensor

from vfm.models.detection.box_ops import box_cxcywh_to_xyxy


def _to_pixels(boxes: Tensor, orig_sizes: Tensor) -> Tensor:
    """Normalised (cx, cy, w, h) (N, k, 4) -> absolute xyxy in the original image, orig_sizes (N, 2) as (h, w)."""
    height, width = orig_sizes.to(boxes.dtype).unbind(-1)
    scale = torch.stack([width, height, width, height], -1)[:, None, :]
    return box_cxcywh_to_xyxy(boxes) * scale


def postprocess_focal(logits: Tensor, boxes: Tensor, orig_sizes: Tensor, num_top: int = 100) -> list[dict[str, Tensor]]:
    """Sigmoid scores; the top `num_top` (query, class) pairs per image, so one query may yield several labels.

    logits (N, Q, C), boxes (N, Q, 4) normalised cxcywh, orig_sizes (N, 2) (h, w) -> per image
    {"boxes" (k, 4) xyxy pixels, "scores" (k,), "labels" (k,) int64}, sorted by score.
    """
    num_classes = logits.shape[-1]
    scores = logits.float().sigmoid().flatten(1)  # (N, Q·C)
    top_scores, top_index = scores.topk(min(num_top, scores.shape[1]), dim=1)
    queries = torch.div(top_index, num_classes, rounding_mode="floor")
    labels = top_index % num_classes
    top_boxes = boxes.float().gather(1, queries[..., None].expand(-1, -1, 4))
    pixels = _to_pixels(top_boxes, orig_sizes)
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(pixels, top_scores, labels, strict=True)]


def postprocess_softmax(
    logits: Tensor, boxes: Tensor, orig_sizes: Tensor, num_top: int = 100
) -> list[dict[str, Tensor]]:
    """Softmax over C + 1 classes; each query gives its best real class (no-object excluded), top `num_top` kept.

    logits (N, Q, C + 1) with no-object last; otherwise as `postprocess_focal`.
    """
    probabilities = logits.float().softmax(-1)[..., :-1]
    scores, labels = probabilities.max(-1)  # (N, Q)
    top_scores, queries = scores.topk(min(num_top, scores.shape[1]), dim=1)
    top_labels = labels.gather(1, queries)
    top_boxes = boxes.float().gather(1, queries[..., None].expand(-1, -1, 4))
    pixels = _to_pixels(top_boxes, orig_sizes)
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(pixels, top_scores, top_labels, strict=True)]
