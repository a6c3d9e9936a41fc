"""scikit-learn's bundled handwritten digits (1,797 8x8 images): real data with no download."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vfm.data.transforms import TransformNode, build_transforms
from vfm.errors import ConfigError
from vfm.registry import DATASETS


def _check_digits(kwargs: dict[str, Any], path: str) -> None:
    size = kwargs.get("image_size")
    if isinstance(size, int) and size < 1:
        raise ConfigError(f"{path}.image_size: got {size}, expected a positive number of pixels")
    fraction = kwargs.get("val_fraction")
    if isinstance(fraction, (int, float)) and not 0.0 < fraction < 1.0:
        raise ConfigError(f"{path}.val_fraction: got {fraction}, expected a value in (0, 1)")


@DATASETS.register("digits", check=_check_digits)
class DigitsDataset(Dataset):
    """Digits split into train/val by a fixed seed; images upsampled to `image_size`, scaled to [0, 1]."""

    def __init__(
        self,
        split: Literal["train", "val", "all"] = "train",
        image_size: int = 32,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        transforms: list[TransformNode] | None = None,
    ) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
        if image_size != images.shape[-1]:
            images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
        num_val = int(round(val_fraction * len(labels)))
        index = {"train": order[num_val:], "val": order[:num_val], "all": order}[split]
        self.images, self.labels = images[index].contiguous(), labels[index]
        self.transform = build_transforms(transforms, "transforms")
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": self.labels[index]}
