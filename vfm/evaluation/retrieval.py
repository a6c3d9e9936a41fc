"""Image-to-text and text-to-image retrieval recall at K over the whole evaluation set (gathered across ranks)."""

from __future__ import annotations

from typing import Any

import torch

from vfm.dist.collectives import gather_rows
from vfm.errors import ConfigError
from vfm.evaluation.base import Evaluator
from vfm.evaluation.features import image_features
from vfm.registry import EVALUATORS


def recall_at_k(similarity: torch.Tensor, ks: tuple[int, ...], chunk: int = 4096) -> dict[int, float]:
    """Fraction of rows whose own column (row i <-> column i) ranks within the top k, for each k.

    The rank is the number of columns scoring strictly higher than the true one, so ties do not count against it.
    """
    if similarity.shape[0] != similarity.shape[1]:
        raise ConfigError(f"retrieval: {similarity.shape[0]} images but {similarity.shape[1]} captions; "
                          "expected one caption per image")
    ranks = []
    for start in range(0, similarity.shape[0], chunk):
        rows = similarity[start:start + chunk]
        true = rows.diagonal(offset=start).unsqueeze(1)
        ranks.append((rows > true).sum(dim=1))
    rank = torch.cat(ranks)
    return {k: (rank < k).double().mean().item() for k in ks}


@EVALUATORS.register("retrieval")
class Retrieval(Evaluator):
    """R@k both ways from `outputs["image_features"]` and `outputs["text_features"]` (row i of each is a pair).

    `image_method` names a model method to compute the image features with instead (one of several paths).
    """

    def __init__(self, ks: list[int] = (1, 5, 10), image_method: str | None = None) -> None:
        if not ks or any(k < 1 for k in ks):
            raise ConfigError(f"retrieval.ks: got {list(ks)}, expected one or more k >= 1")
        self.ks, self.image_method = tuple(ks), image_method
        self.model: Any = None
        self.reset()

    def begin(self, model: Any, loader: Any) -> None:
        self.model = model
        self.reset()

    @classmethod
    def metric_names(cls, ks: list[int] = (1, 5, 10), **kwargs: Any) -> list[str]:
        """i2t_r<k>, t2i_r<k> and their mean, mean_recall."""
        return [f"i2t_r{k}" for k in ks] + [f"t2i_r{k}" for k in ks] + ["mean_recall"]

    def reset(self) -> None:
        self.images: list[torch.Tensor] = []
        self.texts: list[torch.Tensor] = []

    def process(self, batch: Any, outputs: Any) -> None:
        if not isinstance(outputs, dict) or "image_features" not in outputs or "text_features" not in outputs:
            raise ConfigError("retrieval evaluator: the objective's predict() gives no image_features and "
                              "text_features (a two-tower model on image-text data is needed)")
        images = image_features(self.model, batch["image"], self.image_method) if self.image_method else outputs["image_features"]
        self.images.append(images.detach().float().cpu())
        self.texts.append(outputs["text_features"].detach().float().cpu())

    def compute(self) -> dict[str, float]:
        images, texts = gather_rows(torch.cat(self.images)), gather_rows(torch.cat(self.texts))
        similarity = images @ texts.T
        i2t, t2i = recall_at_k(similarity, self.ks), recall_at_k(similarity.T, self.ks)
        metrics = {f"i2t_r{k}": v for k, v in i2t.items()} | {f"t2i_r{k}": v for k, v in t2i.items()}
        metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
        return metrics
