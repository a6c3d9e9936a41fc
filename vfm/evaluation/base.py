"""The evaluator contract: reset, process batches, compute a dict of metrics."""

from __future__ import annotations

from typing import Any

import torch


class Evaluator:
    """Accumulates (batch, outputs) pairs and turns them into named metrics."""

    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, batch: Any, outputs: Any) -> None:
        """Consume one batch and the objective's predictions for it."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """Metrics over everything processed since `reset`."""
        raise NotImplementedError

    @staticmethod
    def reduce_sum(values: torch.Tensor) -> torch.Tensor:
        """Sum across ranks when a process group is running (a no-op in one process)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            values = values.clone()
            torch.distributed.all_reduce(values)
        return values
