"""The evaluator contract: `begin(model, loader)`, `process(batch, outputs)` per batch, `end()` -> metrics.

`begin` receives the model being evaluated (unwrapped, in eval mode) and the loader, so an evaluator can
build what it needs from the model first: zero-shot class embeddings from prompts, a retrieval gallery.
`end` runs on every rank and must return the same metrics everywhere: gather with `vfm.dist`
(`all_reduce_sum`, `all_gather_objects`, `gather_rows`). Simple evaluators override `reset` and `compute`,
which `begin` and `end` call by default.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vfm.dist.collectives import all_reduce_sum


class Evaluator:
    """Accumulates (batch, outputs) pairs and turns them into named metrics."""

    @classmethod
    def metric_names(cls, **kwargs: Any) -> list[str] | None:
        """The metric names `end()` returns for these constructor arguments (None: not declared).

        Declared names let validation refuse an `eval.metric` the evaluators cannot produce before any work.
        """
        return None

    def begin(self, model: nn.Module, loader: Any) -> None:
        """Start a pass over `loader` with `model` (default: `reset`)."""
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, batch: Any, outputs: Any) -> None:
        """Consume one batch and the objective's predictions for it."""
        raise NotImplementedError

    def end(self) -> dict[str, float]:
        """Metrics over the pass, equal on every rank (default: `compute`)."""
        return self.compute()

    def compute(self) -> dict[str, float]:
        """Metrics over everything processed since `reset`."""
        raise NotImplementedError

    @staticmethod
    def reduce_sum(values: torch.Tensor) -> torch.Tensor:
        """Sum across ranks when a process group is running (a no-op in one process)."""
        return all_reduce_sum(values)
