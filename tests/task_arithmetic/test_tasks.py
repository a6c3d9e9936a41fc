"""Derived digits tasks: disjoint pre-training and task images, the transforms and label maps."""

from __future__ import annotations

import pytest
import torch

from vfm.task_arithmetic.tasks import DerivedTaskDataset, split_indices


def test_pretraining_and_task_images_are_disjoint():
    splits = split_indices(1797, 0, 0.5, 0.2, 0.2)
    sets = {k: set(v.tolist()) for k, v in splits.items()}
    assert sum(len(s) for s in sets.values()) == 1797 == len(set().union(*sets.values()))
    assert len(sets["pretrain"]) == 898 and len(sets["val"]) == len(sets["test"]) == 180


def test_transforms_and_labels():
    identity = DerivedTaskDataset("identity", "test")
    rotated, inverted = DerivedTaskDataset("rotated", "test"), DerivedTaskDataset("inverted", "test")
    parity, geq5 = DerivedTaskDataset("parity", "test"), DerivedTaskDataset("geq5", "test")
    assert torch.equal(rotated.images, torch.rot90(identity.images, 1, dims=(-2, -1)))
    assert torch.equal(inverted.images, 1.0 - identity.images) and torch.equal(parity.images, identity.images)
    assert torch.equal(parity.labels, identity.labels % 2) and torch.equal(geq5.labels, (identity.labels >= 5).long())
    assert parity.num_classes == 2 and identity.num_classes == 10 and identity.classnames[3] == "3"
    pretrain = DerivedTaskDataset("pretrain", "pretrain")
    half = len(pretrain) // 2  # upright and upside-down copies of the same images
    assert torch.equal(pretrain.images[half:], torch.rot90(pretrain.images[:half], 2, dims=(-2, -1)))
    assert DerivedTaskDataset("identity", "train", image_size=16, channels=3).images.shape[1:] == (3, 16, 16)


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision.io, used by image_folder
def test_an_image_folder_pool(tmp_path):
    from torchvision.io import write_png

    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        for i in range(10):
            image = torch.full((1, 6, 6), value, dtype=torch.uint8)
            image[0, 0, i % 6] = 128  # a marker at the top row, so rotations and flips move it
            write_png(image, str(tmp_path / label / f"{i}.png"))
    rotated = DerivedTaskDataset("rotated", "train", source="image_folder", root=str(tmp_path), image_size=6, split_seed=1)
    identity = DerivedTaskDataset("identity", "train", source="image_folder", root=str(tmp_path), image_size=6, split_seed=1)
    assert rotated.classnames == ["cat", "dog"] and len(identity) == 6  # 20 images: 10 pretrain, 2 val, 2 test, 6 train
    assert torch.equal(rotated.images, torch.rot90(identity.images, 1, dims=(-2, -1)))
    assert set(identity.labels.tolist()) <= {0, 1} and identity.images.max() <= 1.0
