"""Top-k classification accuracy."""

from __future__ import annotations

from typing import Any

import torch

from vfm.errors import ConfigError
from vfm.evaluation.base import Evaluator
from vfm.registry import EVALUATORS


def _check_topk(kwargs: dict[str, Any], path: str) -> None:
    topk = kwargs.get("topk", (1,))
    if not topk or not all(isinstance(k, int) and k >= 1 for k in topk):
        raise ConfigError(f"{path}.topk: got {list(topk)!r}, expected one or more k >= 1")


@EVALUATORS.register("accuracy", check=_check_topk)
class AccuracyEvaluator(Evaluator):
    """Top-k accuracy of `outputs["logits"]` (N, C) against `batch[label_key]` (N,), as fractions."""

    def __init__(self, topk: list[int] = (1,), label_key: str = "label") -> None:
        self.topk, self.label_key = tuple(topk), label_key
        self.reset()

    @classmethod
    def metric_names(cls, topk: list[int] = (1,), **kwargs: Any) -> list[str]:
        """accuracy for k=1, top<k>_accuracy for the others."""
        return ["accuracy" if k == 1 else f"top{k}_accuracy" for k in topk]

    def reset(self) -> None:
        self.correct = torch.zeros(len(self.topk), dtype=torch.float64)
        self.total = torch.zeros((), dtype=torch.float64)

    def process(self, batch: Any, outputs: Any) -> None:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        labels = batch[self.label_key].to(logits.device)
        k_max = min(max(self.topk), logits.shape[-1])
        top = logits.topk(k_max, dim=-1).indices  # (N, k_max)
        hits = top.eq(labels.unsqueeze(-1))
        for i, k in enumerate(self.topk):
            self.correct[i] += hits[:, : min(k, k_max)].any(dim=-1).sum().item()
        self.total += labels.numel()

    def compute(self) -> dict[str, float]:
        stats = self.reduce_sum(torch.cat([self.correct, self.total.view(1)]))
        total = max(stats[-1].item(), 1.0)
        names = self.metric_names(self.topk)
        return {name: stats[i].item() / total for i, name in enumerate(names)}
