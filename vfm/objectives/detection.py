"""Set-prediction object detection: Deformable DETR and DETR as objectives (loss dict in, detections out).

Batch: {"images" (N, 3, H, W) zero-padded bottom/right, "masks" (N, H, W) True on padding, "targets": per
image {"boxes" (K, 4) cxcywh normalised by the unpadded size, "labels" (K,) int64 in 0..C-1, "image_id",
"orig_size" (h, w), "size" (h, w)}}. `predict` returns per image {"image_id": int, "boxes" (k, 4) xyxy pixels
of the original image, "scores" (k,), "labels" (k,) int64}, tensors on the model's device.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vfm.errors import ConfigError
from vfm.models.detection.backbone import check_backbone_node
from vfm.models.detection.criterion import SetCriterion
from vfm.models.detection.deformable_detr import DeformableDETR, check_deformable_args
from vfm.models.detection.detr import DETR
from vfm.models.detection.matcher import HungarianMatcher
from vfm.models.detection.postprocess import postprocess_focal, postprocess_softmax
from vfm.registry import OBJECTIVES

logger = logging.getLogger("vfm.train")


def _arguments(builder: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` completed with the builder's defaults (for checks that span several keys)."""
    params = inspect.signature(builder.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty} | kwargs


def _to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in target.items()}


class _SetPredictionObjective(nn.Module):
    """Shared forward (matched set losses) and predict (top detections) of DETR-style detectors."""

    model: nn.Module
    criterion: SetCriterion
    focal: bool
    num_top_detections: int

    def check_dataset(self, dataset: Any, path: str) -> None:
        """Refuse a dataset whose labels do not fit the classifier (it would fail mid-step with an index error)."""
        dataset_classes = getattr(dataset, "num_classes", None)
        if dataset_classes is not None and dataset_classes > self.criterion.num_classes:
            where = getattr(dataset, "ann_file", type(dataset).__name__)
            raise ConfigError(f"objective.num_classes: got {self.criterion.num_classes}, but {path} ({where}) has "
                              f"{dataset_classes} categories; set objective.num_classes={dataset_classes}")

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """{"loss", plus detached final-layer (and two-stage `_enc`) class, L1 and GIoU losses}."""
        images = batch["images"]
        targets = [_to_device(t, images.device) for t in batch["targets"]]
        outputs = self.model(images, batch["masks"])
        losses = self.criterion(outputs, targets)
        if not getattr(self, "_loss_described", False):
            self._loss_described = True
            sets = 1 + len(outputs.get("aux_outputs", [])) + ("enc_outputs" in outputs)
            weights = ", ".join(f"{w:g} x {k}" for k, w in self.criterion.weights.items())
            logger.info("%s: the logged 'loss' sums %s over %d prediction sets (the final decoder layer, %d earlier "
                        "layers%s); %s are the final layer's unweighted terms", type(self).__name__, weights, sets,
                        len(outputs.get("aux_outputs", [])), " and the two-stage proposals (_enc)" if "enc_outputs" in outputs
                        else "", ", ".join(self.criterion.weights))
        # Log the final layer and the two-stage proposals; per-layer aux losses (suffix _0, _1, ...) only add noise.
        logged = {k: v.detach() for k, v in losses.items() if k != "loss" and not k[-1].isdigit()}
        return {"loss": losses["loss"], **logged}

    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per image {"image_id", "boxes" xyxy in original pixels, "scores", "labels"}, best first."""
        outputs = self.model(batch["images"], batch["masks"])
        orig_sizes = torch.stack([t["orig_size"] for t in batch["targets"]]).to(outputs["pred_boxes"].device)
        postprocess = postprocess_focal if self.focal else postprocess_softmax
        detections = postprocess(outputs["pred_logits"], outputs["pred_boxes"], orig_sizes, self.num_top_detections)
        return [{"image_id": int(t["image_id"]), **d} for t, d in zip(batch["targets"], detections, strict=True)]


def _check_deformable(kwargs: dict[str, Any], path: str) -> None:
    args = _arguments(DeformableDETRObjective, kwargs)
    check_backbone_node(args["backbone"], f"{path}.backbone")
    num_levels = len(args["backbone"].get("out_indices", [2, 3, 4]))
    check_deformable_args(
        args["d_model"], args["num_heads"], args["num_feature_levels"], num_levels,
        args["with_box_refine"], args["two_stage"], args["num_queries"], path,
    )  # fmt: skip
    if args["num_classes"] < 1:
        raise ConfigError(f"{path}.num_classes: expected >= 1, got {args['num_classes']}")


@OBJECTIVES.register("deformable_detr", check=_check_deformable)
class DeformableDETRObjective(_SetPredictionObjective):
    """Deformable DETR with focal loss; `with_box_refine` and `two_stage` (which requires refinement) as flags.

    Args:
        backbone: DetectionBackbone node {name, out_indices, pretrained_path, freeze_bn, train_stem_and_layer1};
            out_indices [2, 3, 4] (C3–C5) for multi-scale, [4] with num_feature_levels 1 for single-scale.
        num_classes: C, the number of contiguous labels (no background slot).
        num_feature_levels: backbone levels plus extra stride-2 levels on top.
        num_points: sampling points per head and level.
        class_loss_weight, bbox_loss_weight, giou_loss_weight: loss weights (focal, L1, GIoU).
        cost_class, cost_bbox, cost_giou: Hungarian matching cost weights.
        num_top_detections: (query, class) pairs kept per image by `predict`.
        msda_impl: force the deformable attention kernel ("reference", "cpu", "cuda"); default automatic.
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_queries: int = 300,
        num_feature_levels: int = 4,
        num_points: int = 4,
        with_box_refine: bool = False,
        two_stage: bool = False,
        aux_loss: bool = True,
        class_loss_weight: float = 2.0,
        bbox_loss_weight: float = 5.0,
        giou_loss_weight: float = 2.0,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        num_top_detections: int = 100,
        msda_impl: Literal["reference", "cpu", "cuda"] | None = None,
    ) -> None:
        super().__init__()
        self.model = DeformableDETR(
            backbone, num_classes, d_model, num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward,
            dropout, num_queries, num_feature_levels, num_points, with_box_refine, two_stage, aux_loss, msda_impl,
        )  # fmt: skip
        matcher = HungarianMatcher(cost_class, cost_bbox, cost_giou, focal=True, alpha=focal_alpha, gamma=focal_gamma)
        self.criterion = SetCriterion(
            num_classes, matcher, True, class_loss_weight, bbox_loss_weight, giou_loss_weight,
            focal_alpha=focal_alpha, focal_gamma=focal_gamma,
        )  # fmt: skip
        self.focal, self.num_top_detections = True, num_top_detections


def _check_detr(kwargs: dict[str, Any], path: str) -> None:
    args = _arguments(DETRObjective, kwargs)
    check_backbone_node(args["backbone"], f"{path}.backbone")
    if len(args["backbone"].get("out_indices", [4])) != 1:
        raise ConfigError(
            f"{path}.backbone.out_indices: DETR uses one feature level, got {args['backbone']['out_indices']!r}; "
            "expected e.g. [4] (C5)"
        )
    if args["d_model"] % args["num_heads"] or args["d_model"] % 4:
        raise ConfigError(
            f"{path}.d_model: {args['d_model']} must be a multiple of 4 and of num_heads ({args['num_heads']})"
        )
    if args["num_classes"] < 1:
        raise ConfigError(f"{path}.num_classes: expected >= 1, got {args['num_classes']}")


@OBJECTIVES.register("detr", check=_check_detr)
class DETRObjective(_SetPredictionObjective):
    """DETR; `loss: ce` is the original (softmax with no-object), `loss: focal` the DETR-DC5+-style control.

    Args:
        backbone: DetectionBackbone node with one level, out_indices [4] (C5) by default, [3] for a DC5-like stride 16.
        num_classes: C, the number of contiguous labels.
        loss: "ce" (C + 1 logits, no-object weighted by eos_coef) or "focal" (C sigmoid logits).
        class_loss_weight, cost_class: default 1 for "ce" and 2 for "focal".
        num_top_detections: detections kept per image by `predict`.
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_queries: int = 100,
        loss: Literal["ce", "focal"] = "ce",
        aux_loss: bool = True,
        class_loss_weight: float | None = None,
        bbox_loss_weight: float = 5.0,
        giou_loss_weight: float = 2.0,
        eos_coef: float = 0.1,
        cost_class: float | None = None,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        num_top_detections: int = 100,
    ) -> None:
        super().__init__()
        focal = loss == "focal"
        backbone = {"out_indices": [4], **backbone}
        self.model = DETR(
            backbone, num_classes, d_model, num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward,
            dropout, num_queries, focal, aux_loss,
        )  # fmt: skip
        default_class_weight = 2.0 if focal else 1.0
        matcher = HungarianMatcher(
            default_class_weight if cost_class is None else cost_class,
            cost_bbox,
            cost_giou,
            focal,
            focal_alpha,
            focal_gamma,
        )
        self.criterion = SetCriterion(
            num_classes, matcher, focal, default_class_weight if class_loss_weight is None else class_loss_weight,
            bbox_loss_weight, giou_loss_weight, eos_coef, focal_alpha, focal_gamma,
        )  # fmt: skip
        self.focal, self.num_top_detections = focal, num_top_detections
