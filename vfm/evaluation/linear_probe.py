"""Linear probe on frozen image features: logistic regression fitted on a training set, scored on the eval set."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Subset

from vfm.dist import get_rank, get_world_size
from vfm.dist.collectives import gather_rows
from vfm.errors import ConfigError
from vfm.evaluation.base import Evaluator
from vfm.evaluation.features import image_features
from vfm.registry import DATASETS, EVALUATORS


@EVALUATORS.register("linear_probe")
class LinearProbe(Evaluator):
    """Accuracy of an L2-regularised logistic regression (scikit-learn, L-BFGS) on the model's image features.

    `begin` computes features of `train` (a dataset node; each rank its share) with the model being evaluated
    and fits the classifier on all of them; `process` collects the eval set's features; every rank fits and
    scores the same gathered arrays, so the metric is equal everywhere.
    """

    def __init__(self, train: Annotated[dict, DATASETS], C: float = 1.0, max_iter: int = 1000, batch_size: int = 256,
                 max_train_samples: int | None = None, label_key: str = "label", image_method: str | None = None) -> None:
        if C <= 0:
            raise ConfigError(f"linear_probe.C: got {C}, expected > 0 (the inverse regularisation strength)")
        self.train_node, self.C, self.max_iter, self.batch_size = train, C, max_iter, batch_size
        self.max_train_samples, self.label_key, self.image_method = max_train_samples, label_key, image_method
        self.classifier: Any = None
        self.reset()

    @classmethod
    def metric_names(cls, **kwargs: Any) -> list[str]:
        """accuracy, and train_accuracy (of the fit on its own data)."""
        return ["accuracy", "train_accuracy"]

    def _features(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        dataset = DATASETS.build(self.train_node, "linear_probe.train")
        if not isinstance(dataset, IterableDataset):  # streams split themselves by rank
            dataset = Subset(dataset, range(get_rank(), len(dataset), get_world_size()))
        features, labels, seen = [], [], 0
        for batch in DataLoader(dataset, batch_size=self.batch_size, collate_fn=getattr(dataset, "collate_fn", None)):
            features.append(image_features(model, batch["image"], self.image_method).cpu())
            labels.append(torch.as_tensor(batch[self.label_key]).cpu())
            seen += len(labels[-1])
            if self.max_train_samples is not None and seen * get_world_size() >= self.max_train_samples:
                break
        if not features:
            raise ConfigError("linear_probe.train: the training set gave no sample")
        return gather_rows(torch.cat(features)).numpy(), gather_rows(torch.cat(labels)).numpy()

    def begin(self, model: nn.Module, loader: Any) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y = self._features(model)
        keep = y >= 0
        if len(np.unique(y[keep])) < 2:
            raise ConfigError("linear_probe.train: fewer than two classes among the training labels")
        self.classifier = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))
        self.classifier.fit(x[keep], y[keep])
        self.train_accuracy = float(self.classifier.score(x[keep], y[keep]))
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def process(self, batch: Any, outputs: Any) -> None:
        features = outputs.get("image_features") if isinstance(outputs, dict) and not self.image_method else None
        if features is None:
            features = image_features(self.model, batch["image"], self.image_method)
        self.features.append(features.detach().float().cpu())
        self.labels.append(torch.as_tensor(batch[self.label_key]).cpu())

    def compute(self) -> dict[str, float]:
        x, y = gather_rows(torch.cat(self.features)).numpy(), gather_rows(torch.cat(self.labels)).numpy()
        keep = y >= 0
        return {"accuracy": float(self.classifier.score(x[keep], y[keep])), "train_accuracy": self.train_accuracy}
