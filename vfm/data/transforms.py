"""Image transforms from torchvision.transforms.v2, registered by name for configs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from torchvision.transforms import v2

from vfm.registry import TRANSFORMS

TransformNode = Annotated[dict, TRANSFORMS]


@TRANSFORMS.register("resize")
def resize(size: int | list[int], antialias: bool = True) -> v2.Transform:
    """Resize the image (shorter side when `size` is an int)."""
    return v2.Resize(size, antialias=antialias)


@TRANSFORMS.register("center_crop")
def center_crop(size: int | list[int]) -> v2.Transform:
    """Crop the centre."""
    return v2.CenterCrop(size)


@TRANSFORMS.register("random_resized_crop")
def random_resized_crop(size: int | list[int], scale: list[float] = (0.08, 1.0), ratio: list[float] = (3 / 4, 4 / 3)) -> v2.Transform:
    """Inception-style random crop and resize."""
    return v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)


@TRANSFORMS.register("random_affine")
def random_affine(degrees: float = 0.0, translate: list[float] | None = None, scale: list[float] | None = None) -> v2.Transform:
    """Random rotation, translation and scaling."""
    return v2.RandomAffine(degrees, translate=tuple(translate) if translate else None, scale=tuple(scale) if scale else None)


@TRANSFORMS.register("random_horizontal_flip")
def random_horizontal_flip(p: float = 0.5) -> v2.Transform:
    """Flip left-right with probability `p`."""
    return v2.RandomHorizontalFlip(p)


@TRANSFORMS.register("to_float")
def to_float() -> v2.Transform:
    """uint8 images to float in [0, 1]."""
    return v2.ToDtype(torch.float32, scale=True)


@TRANSFORMS.register("normalize")
def normalize(mean: list[float], std: list[float]) -> v2.Transform:
    """Subtract `mean` and divide by `std` per channel."""
    return v2.Normalize(mean, std)


def build_transforms(nodes: Sequence[dict[str, Any]] | None, path: str = "transforms") -> v2.Transform | None:
    """Compose a list of transform nodes (None when the list is empty)."""
    if not nodes:
        return None
    return v2.Compose([TRANSFORMS.build(node, f"{path}.{i}") for i, node in enumerate(nodes)])
