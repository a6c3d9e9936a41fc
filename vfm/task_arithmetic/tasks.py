"""Derived tasks for an offline task-arithmetic benchmark: one image pool, several input transforms and label maps.

The pool (scikit-learn's digits, or any class-per-folder image folder) is split once by a fixed seed into a
pre-training part and a task part; the task part is split into train/val/test. Pre-training and task images are
disjoint, so no task image was seen during pre-training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vfm.errors import ConfigError, DataError
from vfm.registry import DATASETS


@dataclasses.dataclass(frozen=True)
class DerivedTask:
    """An input transform and a label map over the pool's class ids."""

    transform: Callable[[torch.Tensor], torch.Tensor]
    label: Callable[[int], int]
    classnames: Callable[[list[str]], list[str]]


def _same(names: list[str]) -> list[str]:
    return list(names)


TASKS: dict[str, DerivedTask] = {
    "identity": DerivedTask(lambda x: x, lambda y: y, _same),
    "rotated": DerivedTask(lambda x: torch.rot90(x, 1, dims=(-2, -1)), lambda y: y, _same),
    "rotated180": DerivedTask(lambda x: torch.rot90(x, 2, dims=(-2, -1)), lambda y: y, _same),
    "flipped": DerivedTask(lambda x: torch.flip(x, dims=(-1,)), lambda y: y, _same),
    "inverted": DerivedTask(lambda x: 1.0 - x, lambda y: y, _same),
    "parity": DerivedTask(lambda x: x, lambda y: y % 2, lambda names: ["even", "odd"]),
    "geq5": DerivedTask(lambda x: x, lambda y: int(y >= 5), lambda names: ["below five", "five or more"]),
}
# The pre-training surrogate: upright and upside-down images of the pre-training part, labelled by class.
PRETRAIN_VIEWS = ("identity", "rotated180")
TASK_NAMES = tuple(TASKS)
SPLITS = ("pretrain", "train", "val", "test")


def _check_task(kwargs: dict[str, Any], path: str) -> None:
    task = kwargs.get("task")
    if task is not None and task not in TASKS and task != "pretrain":
        raise ConfigError(f"{path}.task: got {task!r}, expected one of pretrain, {', '.join(TASKS)}")
    fractions = [kwargs.get(k, d) for k, d in (("pretrain_fraction", 0.5), ("val_fraction", 0.2), ("test_fraction", 0.2))]
    if not all(isinstance(f, (int, float)) and 0.0 < f < 1.0 for f in fractions) or fractions[1] + fractions[2] >= 1.0:
        raise ConfigError(f"{path}: pretrain_fraction, val_fraction, test_fraction = {fractions}; expected each in "
                          "(0, 1) and val + test < 1")
    if kwargs.get("source", "digits") == "image_folder" and not kwargs.get("root"):
        raise ConfigError(f"{path}.root: source image_folder needs a root folder")
    size = kwargs.get("image_size")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ConfigError(f"{path}.image_size: got {size!r}, expected a positive number of pixels")


@lru_cache(maxsize=4)
def _pool(source: str, root: str | None, image_size: int | None, channels: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """All images (N, C, H, W) in [0, 1], their class ids and class names (cached: several tasks share a pool)."""
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        names: tuple[str, ...] = tuple(str(i) for i in range(10))
    else:
        from vfm.data.image_folder import ImageFolderDataset

        folder = ImageFolderDataset(root, grayscale=channels == 1)
        if image_size is None:
            raise DataError("image_size: an image folder pool needs an image_size (images are resized to it)")
        samples = [folder[i] for i in range(len(folder))]
        images = torch.stack([F.interpolate(s["image"][None], size=image_size, mode="bilinear", antialias=True,
                                            align_corners=False)[0] for s in samples])
        labels = torch.tensor([int(s["label"]) for s in samples], dtype=torch.long)
        names = tuple(folder.folder.classes)
    if image_size is not None and images.shape[-1] != image_size:
        images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    if images.shape[1] != channels:
        images = images.expand(-1, channels, -1, -1) if images.shape[1] == 1 else images[:, :channels]
    return images.contiguous(), labels, names


def split_indices(num: int, seed: int, pretrain_fraction: float, val_fraction: float, test_fraction: float) -> dict[str, torch.Tensor]:
    """Disjoint index sets: pretrain, then the task part split into train/val/test."""
    order = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    num_pretrain = int(round(pretrain_fraction * num))
    pretrain, task = order[:num_pretrain], order[num_pretrain:]
    num_val, num_test = int(round(val_fraction * len(task))), int(round(test_fraction * len(task)))
    return {"pretrain": pretrain, "val": task[:num_val], "test": task[num_val:num_val + num_test],
            "train": task[num_val + num_test:]}


@DATASETS.register("derived_task", check=_check_task)
class DerivedTaskDataset(Dataset):
    """One derived task on one split; yields {"image", "label"}; `classnames` for zero-shot heads."""

    def __init__(
        self,
        task: str = "identity",
        split: Literal["pretrain", "train", "val", "test"] = "train",
        source: Literal["digits", "image_folder"] = "digits",
        root: str | None = None,
        image_size: int | None = None,
        channels: int = 1,
        pretrain_fraction: float = 0.5,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        max_samples: int | None = None,
    ) -> None:
        images, labels, names = _pool(source, root, image_size, channels)
        index = split_indices(len(labels), split_seed, pretrain_fraction, val_fraction, test_fraction)[split]
        if max_samples is not None:
            index = index[:max_samples]
        if task == "pretrain":
            views = PRETRAIN_VIEWS
            self.classnames = list(names)
        else:
            views = (task,)
            self.classnames = TASKS[task].classnames(list(names))
        parts = [TASKS[v].transform(images[index]) for v in views]
        self.images = torch.cat(parts).contiguous()
        label_map = TASKS["identity" if task == "pretrain" else task].label
        base = torch.tensor([label_map(int(y)) for y in labels[index]], dtype=torch.long)
        self.labels = base.repeat(len(views))
        self.num_classes = len(self.classnames)
        self.task, self.split = task, split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index]}


__all__ = ["PRETRAIN_VIEWS", "SPLITS", "TASKS", "TASK_NAMES", "DerivedTask", "DerivedTaskDataset", "split_indices"]
