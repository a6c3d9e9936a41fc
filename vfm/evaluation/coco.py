"""COCO box AP with pycocotools or faster-coco-eval, over the images seen since `reset`."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vfm.data.coco import load_coco_json, sorted_category_ids
from vfm.errors import ConfigError, DataError
from vfm.evaluation.base import Evaluator
from vfm.registry import EVALUATORS

logger = logging.getLogger(__name__)

# (metric suffix, IoU threshold or None for the mean over 0.50:0.95, COCO area range label)
SUMMARY = (
    ("AP", None, "all"),
    ("AP50", 0.5, "all"),
    ("AP75", 0.75, "all"),
    ("APs", None, "small"),
    ("APm", None, "medium"),
    ("APl", None, "large"),
)


def format_coco_table(metrics: dict[str, float], prefix: str = "bbox_") -> str:
    """Two lines, AP AP50 AP75 APs APm APl in percent; '-' where COCO reports -1 (no objects of that size)."""
    names = [name for name, _, _ in SUMMARY]
    values = [metrics.get(prefix + name, -1.0) for name in names]
    header = " ".join(f"{name:>6}" for name in names)
    row = " ".join(f"{100 * value:6.1f}" if value >= 0 else f"{'-':>6}" for value in values)
    return f"{header}\n{row}"


def _backend(backend: str) -> tuple[Any, Any]:
    """(COCO class, COCOeval class) of the backend."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@EVALUATORS.register("coco_detection")
class CocoEvaluator(Evaluator):
    """COCO AP of predicted boxes against `ann_file`; metrics are fractions, -1.0 for an area range without objects.

    `outputs` is a list with one dict per image: `image_id` (int or scalar tensor; taken from
    `batch["targets"][i]["image_id"]` when absent), `boxes` (k, 4) absolute xyxy in the original image's
    pixels, `scores` (k,), `labels` (k,) contiguous (index into the file's sorted category ids).
    Every image in `outputs` counts as evaluated, also with no boxes (its objects are then missed).
    """

    def __init__(
        self,
        ann_file: str,
        iou_type: Literal["bbox"] = "bbox",
        backend: Literal["pycocotools", "faster_coco_eval"] = "pycocotools",
        max_detections: int = 100,
    ) -> None:
        if max_detections < 1:
            raise ConfigError(f"max_detections: expected a positive integer, got {max_detections}")
        self.ann_file, self.iou_type, self.backend, self.max_detections = (
            Path(ann_file),
            iou_type,
            backend,
            max_detections,
        )
        data = load_coco_json(self.ann_file)
        self.category_ids = sorted_category_ids(data)
        self.known_image_ids = {image["id"] for image in data["images"]}
        self._ground_truth: Any = None  # the backend's COCO object, loaded on the first compute on rank 0
        self.reset()

    @classmethod
    def metric_names(cls, iou_type: str = "bbox", **kwargs: Any) -> list[str]:
        """<iou_type>_AP, _AP50, _AP75, _APs, _APm, _APl."""
        return [f"{iou_type}_{name}" for name, _, _ in SUMMARY]

    def reset(self) -> None:
        # image id -> its COCO result dicts; keyed by image so an image seen twice is counted once
        self.detections: dict[int, list[dict[str, Any]]] = {}

    def process(self, batch: Any, outputs: Any) -> None:
        if not isinstance(outputs, (list, tuple)):
            raise TypeError(
                f"coco_detection evaluator: expected a list of per-image dicts, got {type(outputs).__name__}"
            )
        for i, output in enumerate(outputs):
            image_id = output.get("image_id")
            if image_id is None:
                image_id = batch["targets"][i]["image_id"]
            image_id = int(image_id)
            if image_id not in self.known_image_ids:
                raise DataError(f"{self.ann_file}: predictions for image id {image_id}, which the file does not have")
            boxes = output["boxes"].detach().float().cpu().reshape(-1, 4)
            scores = output["scores"].detach().float().cpu().reshape(-1)
            labels = output["labels"].detach().cpu().reshape(-1).long()
            if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.category_ids)):
                raise ConfigError(
                    f"coco_detection evaluator: label {int(labels.max())} of image id {image_id} is outside"
                    f" [0, {len(self.category_ids)}), the categories of {self.ann_file}; check num_classes"
                )
            # COCOeval keeps only the top max_detections per image; dropping the rest early saves memory.
            order = scores.argsort(descending=True)[: self.max_detections]
            boxes, scores, labels = boxes[order], scores[order], labels[order]
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
            self.detections[image_id] = [
                {"image_id": image_id, "category_id": self.category_ids[label], "bbox": box, "score": score}
                for label, box, score in zip(labels.tolist(), xywh.tolist(), scores.tolist(), strict=True)
            ]

    def compute(self) -> dict[str, float]:
        detections = self.detections
        if _dist_ready() and torch.distributed.get_world_size() > 1:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, detections)
            detections = {image_id: dets for part in gathered for image_id, dets in part.items()}
        metrics = None
        if not _dist_ready() or torch.distributed.get_rank() == 0:
            metrics = self._evaluate(detections)
            logger.info(
                "COCO %s AP on %d images (%s):\n%s",
                self.iou_type,
                len(detections),
                self.backend,
                format_coco_table(metrics),
            )
        if _dist_ready() and torch.distributed.get_world_size() > 1:
            box = [metrics]
            torch.distributed.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    def _evaluate(self, detections: dict[int, list[dict[str, Any]]]) -> dict[str, float]:
        """Run COCOeval on the evaluated images; zeros when no image was processed at all."""
        if not detections:
            return {f"{self.iou_type}_{name}": 0.0 for name, _, _ in SUMMARY}
        coco_class, eval_class = _backend(self.backend)
        quiet = contextlib.redirect_stdout(io.StringIO())  # pycocotools prints progress on stdout
        with quiet:
            if self._ground_truth is None:
                self._ground_truth = coco_class(str(self.ann_file))
            ground_truth = self._ground_truth
            results = [dict(result) for dets in detections.values() for result in dets]  # loadRes edits its input
            if results:
                predictions = ground_truth.loadRes(results)
            else:  # loadRes cannot take an empty list; an empty result set scores 0 where objects exist
                predictions = coco_class()
                predictions.dataset = {
                    "images": list(ground_truth.dataset["images"]),
                    "categories": list(ground_truth.dataset["categories"]),
                    "annotations": [],
                }
                predictions.createIndex()
            extra = {"print_function": lambda *args, **kwargs: None} if self.backend == "faster_coco_eval" else {}
            evaluation = eval_class(ground_truth, predictions, self.iou_type, **extra)
            evaluation.params.imgIds = sorted(detections)
            evaluation.params.maxDets = [1, 10, self.max_detections]
            evaluation.evaluate()
            evaluation.accumulate()
        return self._summarize(evaluation)

    def _summarize(self, evaluation: Any) -> dict[str, float]:
        """AP per SUMMARY entry from the accumulated precision, as COCOeval.summarize computes it."""
        params = evaluation.params
        # (iou thresholds, recall points, classes, area ranges, max detections)
        precision = np.asarray(evaluation.eval["precision"])
        metrics = {}
        for name, iou, area in SUMMARY:
            values = precision[:, :, :, params.areaRngLbl.index(area), params.maxDets.index(self.max_detections)]
            if iou is not None:
                values = values[np.isclose(params.iouThrs, iou)]
            valid = values[values > -1]  # -1 marks categories without objects in this area range
            metrics[f"{self.iou_type}_{name}"] = float(valid.mean()) if valid.size else -1.0
        return metrics
