"""Unit tests for vfm/data/digits.py: scikit-learn's bundled digits split into train and val."""

from __future__ import annotations

import pytest
import torch

from vfm.data.digits import DigitsDataset
from vfm.registry import DATASETS

TOTAL = 1797


@pytest.fixture(scope="module")
def splits() -> dict[str, DigitsDataset]:
    return {split: DigitsDataset(split=split, image_size=8) for split in ("train", "val", "all")}


def test_split_sizes_add_up(splits):
    assert len(splits["all"]) == TOTAL
    assert len(splits["val"]) == round(0.2 * TOTAL) == 359
    assert len(splits["train"]) + len(splits["val"]) == TOTAL


def test_splits_partition_one_permutation(splits):
    from sklearn.datasets import load_digits

    every = splits["all"]
    # val is the head and train the tail of the same seeded permutation, so they are disjoint
    assert torch.equal(torch.cat([splits["val"].images, splits["train"].images]), every.images)
    assert torch.equal(torch.cat([splits["val"].labels, splits["train"].labels]), every.labels)
    # and "all" holds each original sample exactly once
    raw = load_digits()
    assert torch.equal(
        torch.bincount(every.labels, minlength=10), torch.bincount(torch.tensor(raw.target), minlength=10)
    )
    assert every.images.sum().item() == pytest.approx(raw.images.sum() / 16.0, rel=1e-6)


def test_split_depends_on_split_seed_only():
    torch.manual_seed(123)  # the global RNG plays no part
    first = DigitsDataset(split="val", image_size=8)
    torch.manual_seed(7)
    assert torch.equal(DigitsDataset(split="val", image_size=8).labels, first.labels)
    assert not torch.equal(DigitsDataset(split="val", image_size=8, split_seed=1).images, first.images)
    assert len(DigitsDataset(split="val", image_size=8, val_fraction=0.5)) == round(0.5 * TOTAL)


@pytest.mark.parametrize("size", [8, 16])
def test_items_are_unit_range_images_with_labels(size):
    dataset = DigitsDataset(split="val", image_size=size)
    item = dataset[0]
    assert item["image"].shape == (1, size, size)
    assert item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.long and 0 <= int(item["label"]) < 10
    assert dataset.images.min() >= 0.0 and dataset.images.max() <= 1.0
    assert dataset.images.max() == pytest.approx(1.0, abs=0.05)  # pixel 16 maps to 1
    assert dataset.num_classes == 10


def test_built_through_the_registry_with_transforms():
    dataset = DATASETS.build(
        {"type": "digits", "split": "val", "image_size": 8, "transforms": [{"type": "resize", "size": 12}]}, "data.val"
    )
    assert dataset[3]["image"].shape == (1, 12, 12)
    with pytest.raises(Exception, match=r"data\.val\.split: expected one of 'train', 'val', 'all', got str 'test'"):
        DATASETS.build({"type": "digits", "split": "test"}, "data.val")
    with pytest.raises(Exception, match=r"data\.val\.transforms\.0\.type: unknown transforms type 'resise'"):
        DATASETS.build({"type": "digits", "transforms": [{"type": "resise", "size": 12}]}, "data.val")
