"""COCO-format detection datasets: an annotation JSON plus a folder of images, validated when built.

Labels are contiguous: label i is the i-th category id of the file's `categories`, sorted. The
evaluator (`vfm.evaluation.coco`) maps predicted labels back to category ids by the same rule.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vfm.data.detection_transforms import (
    Compose,
    DetectionTransformNode,
    Normalize,
    ToTensor,
    build_detection_transforms,
)
from vfm.errors import ConfigError, DataError
from vfm.registry import DATASETS

logger = logging.getLogger(__name__)

# A box may stick out of its image by this many pixels (rounding in exported annotations); it is clipped.
BOX_TOLERANCE = 1.0
REQUIRED_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "bbox", "category_id"),
    "categories": ("id",),
}


def load_coco_json(path: Path) -> dict[str, Any]:
    """Read a COCO annotation file and check that its lists and their required keys are present."""
    try:
        with open(path) as file:
            data = json.load(file)
    except FileNotFoundError as error:
        raise DataError(f"{path}: annotation file not found") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for section, keys in REQUIRED_KEYS.items():
        if not isinstance(data.get(section), list):
            raise DataError(f"{path}: missing key {section!r} (expected a list)")
        for position, entry in enumerate(data[section]):
            missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
            if missing:
                where = f"id {entry['id']}" if isinstance(entry, dict) and "id" in entry else f"entry {position}"
                raise DataError(f"{path}: {section} {where} is missing key {missing[0]!r}")
    for image in data["images"]:
        if not isinstance(image["id"], int) or not all(
            isinstance(image[k], int) and image[k] > 0 for k in ("width", "height")
        ):
            raise DataError(
                f"{path}: image id {image['id']!r}: expected an integer id and positive integer width and height,"
                f" got {image['width']!r}x{image['height']!r}"
            )
    return data


def sorted_category_ids(data: dict[str, Any]) -> list[int]:
    """Category ids in label order: contiguous label i is `sorted_category_ids(data)[i]`."""
    return sorted(int(category["id"]) for category in data["categories"])


def annotation_problem(annotation: dict[str, Any], image: dict[str, Any] | None, category_ids: set[int]) -> str | None:
    """Why an annotation is unusable (None when it is fine)."""
    if image is None:
        return f"unknown image id {annotation['image_id']!r}"
    if annotation["category_id"] not in category_ids:
        return f"unknown category id {annotation['category_id']!r} (categories: {sorted(category_ids)})"
    bbox = annotation["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return f"bbox {bbox!r} is not [x, y, width, height]"
    x, y, width, height = bbox
    if not all(math.isfinite(v) for v in bbox):
        return f"bbox {bbox} is not finite"
    if width <= 0 or height <= 0:
        return f"bbox {bbox} has non-positive width or height"
    if (
        x < -BOX_TOLERANCE
        or y < -BOX_TOLERANCE
        or x + width > image["width"] + BOX_TOLERANCE
        or (y + height > image["height"] + BOX_TOLERANCE)
    ):
        return f"bbox {bbox} lies outside the {image['width']}x{image['height']} image"
    return None


def collate_detection(samples: Sequence[dict[str, Any]], size_divisibility: int = 1) -> dict[str, Any]:
    """Batch variable-size images: zero-pad bottom/right to the largest (rounded up to `size_divisibility`)."""
    images = [sample["image"] for sample in samples]
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    masks = torch.ones((len(images), height, width), dtype=torch.bool)  # True on padding
    for i, image in enumerate(images):
        batch[i, :, : image.shape[-2], : image.shape[-1]] = image
        masks[i, : image.shape[-2], : image.shape[-1]] = False
    return {"images": batch, "masks": masks, "targets": [sample["target"] for sample in samples]}


@DATASETS.register("coco_detection")
class CocoDetection(Dataset):
    """Images and boxes of a COCO annotation file; items are `{"image", "target"}`, batched by `collate_fn`.

    With `skip_invalid`, an image with any unusable annotation (bad box, unknown category) or a missing
    file is dropped whole: keeping it without the bad annotation would teach that object as background.
    Images without annotations are kept (they train the no-object class). `max_samples` keeps the first N
    usable images in image-id order. Every annotation is validated; image files only for kept images.
    """

    def __init__(
        self,
        root: str,
        ann_file: str,
        img_folder: str,
        transforms: list[DetectionTransformNode] | None = None,
        skip_invalid: bool = False,
        include_crowd: bool = False,
        max_samples: int | None = None,
        size_divisibility: int = 1,
    ) -> None:
        if max_samples is not None and max_samples < 1:
            raise ConfigError(f"max_samples: expected a positive number of images or null, got {max_samples}")
        if size_divisibility < 1:
            raise ConfigError(f"size_divisibility: expected a positive integer, got {size_divisibility}")
        self.root = Path(root)
        self.ann_file = self.root / ann_file  # an absolute ann_file stays as it is
        self.img_folder = self.root / img_folder
        self.include_crowd, self.size_divisibility = include_crowd, size_divisibility
        self.transforms = build_detection_transforms(transforms, "transforms") or Compose([ToTensor(), Normalize()])
        if not self.transforms.transforms or not isinstance(self.transforms.transforms[-1], Normalize):
            raise ConfigError(
                "transforms: the last transform must be 'normalize' (it makes the boxes normalised cxcywh)"
            )

        data = load_coco_json(self.ann_file)
        self.category_ids = sorted_category_ids(data)
        self.num_classes = len(self.category_ids)
        label_of = {category_id: label for label, category_id in enumerate(self.category_ids)}
        images = {image["id"]: image for image in data["images"]}

        annotations: dict[Any, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        invalid: dict[Any, str] = {}  # image id -> first problem found
        for annotation in data["annotations"]:
            problem = annotation_problem(annotation, images.get(annotation["image_id"]), set(label_of))
            if problem is not None:
                message = (
                    f"{self.ann_file}: annotation id {annotation['id']} of image id {annotation['image_id']}: {problem}"
                )
                if not skip_invalid or annotation["image_id"] not in images:
                    raise DataError(message)
                invalid.setdefault(annotation["image_id"], message)
                continue
            annotations[annotation["image_id"]].append(annotation)

        self.images: list[dict[str, Any]] = []
        self.annotations: list[list[dict[str, Any]]] = []
        missing_files = 0
        for image_id in sorted(images):
            if image_id in invalid:
                continue
            image = images[image_id]
            if not (self.img_folder / image["file_name"]).is_file():
                message = f"{self.img_folder / image['file_name']}: image file of image id {image_id} not found"
                if not skip_invalid:
                    raise DataError(message)
                missing_files += 1
                invalid.setdefault(image_id, message)
                continue
            self.images.append(image)
            self.annotations.append(annotations[image_id])
            if max_samples is not None and len(self.images) == max_samples:
                break
        self.num_skipped = len(invalid)
        if invalid:
            first = next(iter(invalid.values()))
            logger.warning(
                "%s: skipped %d images (%d with invalid annotations, %d with missing files); first: %s",
                self.ann_file,
                len(invalid),
                len(invalid) - missing_files,
                missing_files,
                first,
            )
        self.label_of = label_of

    def __len__(self) -> int:
        return len(self.images)

    def load_target(self, index: int) -> dict[str, torch.Tensor]:
        """The untransformed target of image `index`: absolute xyxy boxes clipped to the image."""
        image = self.images[index]
        annotations = [a for a in self.annotations[index] if self.include_crowd or not a.get("iscrowd", 0)]
        width, height = image["width"], image["height"]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        return {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
            "image_id": torch.tensor(image["id"], dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "size": torch.tensor([height, width], dtype=torch.int64),
            "area": torch.tensor(
                [float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in annotations], dtype=torch.float32
            ),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in annotations], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        info = self.images[index]
        path = self.img_folder / info["file_name"]
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: cannot read image id {info['id']}: {error}") from error
        if image.size != (info["width"], info["height"]):
            raise DataError(
                f"{path}: image id {info['id']} is {image.size[0]}x{image.size[1]},"
                f" the annotation file {self.ann_file} says {info['width']}x{info['height']}"
            )
        image, target = self.transforms(image, self.load_target(index))
        return {"image": image, "target": target}

    def collate_fn(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """`{"images": (N, 3, H, W), "masks": (N, H, W) True on padding, "targets": [dict] * N}`."""
        return collate_detection(samples, self.size_divisibility)
