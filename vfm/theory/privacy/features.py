"""`frozen_features`: a dataset's records through a frozen backbone, computed once and scaled to norm R.

Last-iterate accounting needs a convex loss with known constants, so the DP objective trains only a linear head
on these features; L and M follow from the norm bound R (`logistic_constants`). Each record is scaled to norm
exactly R on its own (a per-record map, so it spends no privacy); statistics of the private data, such as a
mean to centre by, are never used. Without a backbone the features are the flattened pixels.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch.utils.data import Dataset

from vfm.errors import DataError
from vfm.registry import BACKBONES, DATASETS


def _check_features(kwargs: dict[str, Any], path: str) -> None:
    norm = kwargs.get("feature_norm", 1.0)
    if isinstance(norm, (int, float)) and not norm > 0:
        raise DataError(f"{path}.feature_norm: got {norm!r}, expected a bound R > 0")


@DATASETS.register("frozen_features", check=_check_features)
class FrozenFeatures(Dataset):
    """Records {"features" (D,), "label", "index"}: `dataset`'s images through a frozen `backbone`, norm R."""

    def __init__(self, dataset: Annotated[dict, DATASETS], backbone: Annotated[dict | None, BACKBONES] = None,
                 feature_norm: float = 1.0, image_key: str = "image", label_key: str = "label",
                 batch_size: int = 256) -> None:
        source = DATASETS.build(dataset, "dataset")
        extractor = BACKBONES.build(backbone, "backbone").eval() if backbone is not None else None
        features, labels = [], []
        with torch.no_grad():
            for start in range(0, len(source), batch_size):
                records = [source[i] for i in range(start, min(start + batch_size, len(source)))]
                images = torch.stack([r[image_key] for r in records])
                out = extractor(images) if extractor is not None else images
                features.append(out.flatten(1).double())
                labels.extend(int(r[label_key]) for r in records)
        matrix = torch.cat(features)
        norms = matrix.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise DataError(f"frozen_features: record {int((norms == 0).flatten().nonzero()[0])} has an all-zero "
                            "feature vector, which cannot be scaled to the norm bound")
        self.features = (matrix * (feature_norm / norms)).float()  # (N, D), every row of norm R
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.feature_norm = float(feature_norm)
        self.num_classes = getattr(source, "num_classes", int(self.labels.max()) + 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"features": self.features[index], "label": self.labels[index], "index": torch.tensor(index)}
