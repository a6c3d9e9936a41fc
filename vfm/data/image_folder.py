"""A class-per-folder image dataset (torchvision's ImageFolder layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image

from vfm.data.transforms import TransformNode, build_transforms
from vfm.errors import DataError
from vfm.registry import DATASETS


def _check_root(kwargs: dict[str, Any], path: str) -> None:
    root = kwargs.get("root")
    if not isinstance(root, str) or not Path(root).is_dir():
        raise DataError(f"{path}.root: dataset path {root!r} does not exist or is not a folder")


@DATASETS.register("image_folder", check=_check_root)
class ImageFolderDataset(Dataset):
    """root/<class>/<image>; yields {"image": float tensor in [0, 1] after transforms, "label": int}."""

    def __init__(self, root: str, transforms: list[TransformNode] | None = None, grayscale: bool = False) -> None:
        if not Path(root).is_dir():
            raise DataError(f"root: dataset path {root!r} does not exist or is not a folder")
        try:
            self.folder = ImageFolder(root, loader=lambda p: p)  # decode ourselves, as tensors
        except (FileNotFoundError, RuntimeError) as error:
            raise DataError(f"root: {root!r}: {error}") from error
        self.transform = build_transforms(transforms, "transforms")
        self.mode = ImageReadMode.GRAY if grayscale else ImageReadMode.RGB
        self.num_classes = len(self.folder.classes)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.folder.samples[index]
        try:
            image = decode_image(path, mode=self.mode).to(torch.float32) / 255.0
        except RuntimeError as error:
            raise DataError(f"{path}: cannot decode image: {error}") from error
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": torch.tensor(label)}
