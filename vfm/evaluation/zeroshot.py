"""Zero-shot classification: a head from class names and prompt templates, built with the model in `begin`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfm.errors import ConfigError
from vfm.evaluation.base import Evaluator
from vfm.evaluation.features import image_features
from vfm.evaluation.zeroshot_head import zeroshot_classifier
from vfm.registry import EVALUATORS


def _check(kwargs: dict[str, Any], path: str) -> None:
    if (kwargs.get("classnames") is None) == (kwargs.get("classes_file") is None):
        raise ConfigError(f"{path}: give exactly one of classnames (a list) and classes_file (a JSON file with "
                          "'classes' and optionally 'templates')")


def load_classes(classnames: list[str] | None, classes_file: str | None,
                 templates: list[str] | None) -> tuple[list[str], list[str]]:
    """Class names and templates from the config or a classes file (the file's templates unless given)."""
    if classes_file is not None:
        try:
            data = json.loads(Path(classes_file).read_text())
            classnames = list(data["classes"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"classes_file {classes_file}: expected JSON with a 'classes' list ({error})") from error
        templates = templates or data.get("templates")
    return list(classnames), list(templates or ["a photo of a {}."])


@EVALUATORS.register("zeroshot", check=_check)
class ZeroShotAccuracy(Evaluator):
    """Top-k accuracy of cosine(image, class embedding) against `batch[label_key]`; needs a text tower."""

    def __init__(self, classnames: list[str] | None = None, classes_file: str | None = None,
                 templates: list[str] | None = None, topk: list[int] = (1, 5), label_key: str = "label",
                 image_method: str | None = None) -> None:
        self.classnames, self.templates = load_classes(classnames, classes_file, templates)
        self.image_method = image_method  # a model method giving image features; None: predict's image_features
        self.topk, self.label_key = tuple(topk), label_key
        self.head: torch.Tensor | None = None
        self.reset()

    @classmethod
    def metric_names(cls, topk: list[int] = (1, 5), **kwargs: Any) -> list[str]:
        """accuracy for k=1, top<k>_accuracy for the others."""
        return ["accuracy" if k == 1 else f"top{k}_accuracy" for k in topk]

    def begin(self, model: nn.Module, loader: Any) -> None:
        if not callable(getattr(model, "encode_text", None)):
            raise ConfigError(f"zeroshot evaluator: {type(model).__name__} has no encode_text (no text tower)")
        self.model = model
        self.head = zeroshot_classifier(model.encode_text, self.classnames, self.templates)
        self.reset()

    def reset(self) -> None:
        self.correct = torch.zeros(len(self.topk), dtype=torch.float64)
        self.total = torch.zeros((), dtype=torch.float64)

    def process(self, batch: Any, outputs: Any) -> None:
        features = outputs.get("image_features") if isinstance(outputs, dict) and not self.image_method else None
        if features is None:
            features = image_features(self.model, batch["image"], self.image_method)
        logits = features.float() @ self.head.to(features.device).T
        labels = batch[self.label_key].to(logits.device)
        keep = labels >= 0  # samples without a class (label -1) do not count
        top = logits[keep].topk(min(max(self.topk), logits.shape[-1]), dim=-1).indices
        hits = top.eq(labels[keep].unsqueeze(-1))
        for i, k in enumerate(self.topk):
            self.correct[i] += hits[:, :k].any(dim=-1).sum().item()
        self.total += keep.sum().item()

    def compute(self) -> dict[str, float]:
        stats = self.reduce_sum(torch.cat([self.correct, self.total.view(1)]))
        if stats[-1].item() == 0:
            raise ConfigError(f"zeroshot evaluator: no sample with a class label (batch[{self.label_key!r}] >= 0)")
        return {name: stats[i].item() / stats[-1].item() for i, name in enumerate(self.metric_names(self.topk))}
