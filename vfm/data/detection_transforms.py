"""Detection transforms: each maps (image, target) to (image, target) and keeps the boxes consistent.

Until `to_tensor` the image is a PIL image; until `normalize` the target's `boxes` are absolute xyxy
pixels. `normalize` standardises the pixels and turns the boxes into cxcywh normalised by the image
size (the DETR convention), so it is the last step of every pipeline. All randomness comes from
torch's default CPU generator, which `SeededDataset` seeds per sample: augmentation is reproducible
and identical after a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from vfm.errors import ConfigError
from vfm.registry import DETECTION_TRANSFORMS

DetectionTransformNode = Annotated[dict, DETECTION_TRANSFORMS]
Target = dict[str, Any]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-box fields that must be filtered together with `boxes` when boxes are dropped.
BOX_FIELDS = ("boxes", "labels", "area", "iscrowd")


def image_size(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    """(width, height) of a PIL image or a (C, H, W) tensor."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    return image.size


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(K, 4) corners to (centre x, centre y, width, height)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def _choice(options: Sequence[Any]) -> Any:
    return options[int(torch.randint(len(options), (1,)).item())]


def scaled_size(width: int, height: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """(height, width) with the shorter side `size` and the longer at most `max_size`, aspect kept (DETR's rule)."""
    if max_size is not None:
        short, long = min(width, height), max(width, height)
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def crop(
    image: Image.Image, target: Target, top: int, left: int, height: int, width: int
) -> tuple[Image.Image, Target]:
    """Crop to the region; boxes are shifted and clipped, and boxes left with no area are dropped."""
    image = TF.crop(image, top, left, height, width)
    target = dict(target)
    boxes = target["boxes"]
    if boxes.numel():
        original_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height], dtype=boxes.dtype))
        new_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target["boxes"] = boxes
        if "area" in target:
            # `area` is the object's mask area: scale it by the fraction of the box that survived.
            target["area"] = target["area"] * (new_area / original_area.clamp(min=1e-6))
        for field in BOX_FIELDS:
            if field in target:
                target[field] = target[field][keep]
    target["size"] = torch.tensor([height, width], dtype=torch.int64)
    return image, target


def resize_to(image: Image.Image, target: Target, height: int, width: int) -> tuple[Image.Image, Target]:
    """Resize to exactly (height, width); boxes and areas are scaled by the same factors."""
    old_width, old_height = image_size(image)
    image = TF.resize(image, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    target = dict(target)
    scale_x, scale_y = width / old_width, height / old_height
    boxes = target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=torch.float32)
    # float rounding can put an edge on the border a hair outside the image
    target["boxes"] = torch.minimum(
        boxes.clamp(min=0), torch.tensor([width, height, width, height], dtype=torch.float32)
    )
    if "area" in target:
        target["area"] = target["area"] * (scale_x * scale_y)
    target["size"] = torch.tensor([height, width], dtype=torch.int64)
    return image, target


def hflip(image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
    """Mirror left-right; x1' = W - x2 and x2' = W - x1."""
    width, _ = image_size(image)
    image = TF.hflip(image)
    target = dict(target)
    boxes = target["boxes"]
    target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=-1)
    return image, target


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any, Target], tuple[Any, Target]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


@DETECTION_TRANSFORMS.register("resize")
class Resize:
    """Shorter side to `size` (longer side capped at `max_size`), or exactly [height, width] for a list."""

    def __init__(self, size: int | list[int], max_size: int | None = None) -> None:
        self.size, self.max_size = size, max_size

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        if isinstance(self.size, int):
            height, width = scaled_size(*image_size(image), self.size, self.max_size)
        else:
            height, width = self.size
        return resize_to(image, target, height, width)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, max_size={self.max_size})"


def _check_sizes(kwargs: dict[str, Any], path: str) -> None:
    sizes = kwargs.get("sizes")
    if not sizes or any(size < 1 for size in sizes):
        raise ConfigError(f"{path}.sizes: expected a non-empty list of positive sizes, got {sizes!r}")


@DETECTION_TRANSFORMS.register("random_resize", check=_check_sizes)
class RandomResize:
    """Shorter side to a random choice of `sizes`, longer side capped at `max_size`, aspect kept."""

    def __init__(self, sizes: list[int], max_size: int | None = None) -> None:
        self.sizes, self.max_size = list(sizes), max_size

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        height, width = scaled_size(*image_size(image), _choice(self.sizes), self.max_size)
        return resize_to(image, target, height, width)

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


@DETECTION_TRANSFORMS.register("random_horizontal_flip")
class RandomHorizontalFlip:
    """Mirror left-right with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        if torch.rand(1).item() < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _check_crop_sizes(kwargs: dict[str, Any], path: str) -> None:
    low, high = kwargs.get("min_size"), kwargs.get("max_size")
    if not 1 <= low <= high:
        raise ConfigError(f"{path}: expected 1 <= min_size <= max_size, got min_size={low}, max_size={high}")


@DETECTION_TRANSFORMS.register("random_size_crop", check=_check_crop_sizes)
class RandomSizeCrop:
    """Crop a random region with sides in [min_size, max_size] (bounded by the image); drops emptied boxes."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = min_size, max_size

    def _side(self, limit: int) -> int:
        high = min(limit, self.max_size)
        low = min(self.min_size, high)  # an image smaller than min_size is kept whole on that side
        return int(torch.randint(low, high + 1, (1,)).item())

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        width, height = image_size(image)
        crop_width, crop_height = self._side(width), self._side(height)
        # Same order of draws as torchvision's RandomCrop.get_params: top first, then left.
        top = int(torch.randint(0, height - crop_height + 1, (1,)).item())
        left = int(torch.randint(0, width - crop_width + 1, (1,)).item())
        return crop(image, target, top, left, crop_height, crop_width)

    def __repr__(self) -> str:
        return f"RandomSizeCrop(min_size={self.min_size}, max_size={self.max_size})"


@DETECTION_TRANSFORMS.register("random_select")
class RandomSelect:
    """Apply `transforms1` with probability `p`, else `transforms2` (DETR's resize vs resize-crop-resize)."""

    def __init__(
        self, transforms1: list[DetectionTransformNode], transforms2: list[DetectionTransformNode], p: float = 0.5
    ) -> None:
        self.transforms1 = build_detection_transforms(transforms1, "random_select.transforms1") or Compose([])
        self.transforms2 = build_detection_transforms(transforms2, "random_select.transforms2") or Compose([])
        self.p = p

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        if torch.rand(1).item() < self.p:
            return self.transforms1(image, target)
        return self.transforms2(image, target)

    def __repr__(self) -> str:
        return f"RandomSelect({self.transforms1!r}, {self.transforms2!r}, p={self.p})"


@DETECTION_TRANSFORMS.register("to_tensor")
class ToTensor:
    """PIL image to a float (3, H, W) tensor in [0, 1]."""

    def __call__(self, image: Image.Image, target: Target) -> tuple[torch.Tensor, Target]:
        return TF.to_tensor(image), target

    def __repr__(self) -> str:
        return "ToTensor()"


@DETECTION_TRANSFORMS.register("normalize")
class Normalize:
    """Standardise the pixels per channel and turn boxes into cxcywh normalised by the image (w, h)."""

    def __init__(self, mean: list[float] = IMAGENET_MEAN, std: list[float] = IMAGENET_STD) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if not isinstance(image, torch.Tensor):
            raise TypeError("normalize: expected a tensor image; put 'to_tensor' before 'normalize'")
        image = TF.normalize(image, self.mean, self.std)
        width, height = image_size(image)
        target = dict(target)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        target["boxes"] = box_xyxy_to_cxcywh(target["boxes"]) / scale
        return image, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def build_detection_transforms(nodes: Sequence[dict[str, Any]] | None, path: str = "transforms") -> Compose | None:
    """Compose a list of detection transform nodes (None when the list is empty)."""
    if not nodes:
        return None
    return Compose([DETECTION_TRANSFORMS.build(node, f"{path}.{i}") for i, node in enumerate(nodes)])
