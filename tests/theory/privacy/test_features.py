"""frozen_features: computed once through a frozen backbone (or none), every record scaled to norm R."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfm.errors import DataError
from vfm.registry import BACKBONES, DATASETS
from vfm.theory.privacy.features import FrozenFeatures


@BACKBONES.register("privacy_test_pool", force=True)
class Pool(nn.Module):
    """8x8 images -> 2x2 average pools (4 features), with a parameter that must stay untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(images, 4).flatten(1) * self.scale


def test_identity_and_backbone_features_have_the_norm_bound():
    plain = FrozenFeatures({"type": "digits", "split": "val", "image_size": 8}, feature_norm=2.5)
    digits = DATASETS.build({"type": "digits", "split": "val", "image_size": 8})
    assert plain.features.shape == (len(digits), 64)
    torch.testing.assert_close(plain.features.norm(dim=1), torch.full((len(digits),), 2.5))
    # Per-record scaling only: each feature vector points where its own pixels do.
    first = digits[0]["image"].flatten()
    torch.testing.assert_close(plain.features[0], first / first.norm() * 2.5)
    assert plain[3]["index"].item() == 3 and plain[3]["label"] == digits[3]["label"]
    pooled = FrozenFeatures({"type": "digits", "split": "val", "image_size": 8}, backbone={"type": "privacy_test_pool"})
    assert pooled.features.shape == (len(digits), 4)
    expected = nn.functional.avg_pool2d(first.view(1, 1, 8, 8), 4).flatten()
    torch.testing.assert_close(pooled.features[0], expected / expected.norm())


def test_an_all_zero_record_cannot_be_normalised():
    @DATASETS.register("privacy_test_blank", force=True)
    class Blank(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> dict:
            return {"image": torch.full((1, 2, 2), float(index != 1)), "label": torch.tensor(0)}

    with pytest.raises(DataError, match="record 1 has an all-zero feature vector"):
        FrozenFeatures({"type": "privacy_test_blank"})
