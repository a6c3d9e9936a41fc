"""Merging one step's losses and logged scalars over micro-batches and ranks, by name."""

from __future__ import annotations

from typing import Any

import torch

from vfm.dist.collectives import all_gather_objects, get_world_size


class StepLogs:
    """Collects each micro-batch's scalars; `reduce()` averages every name over the micro-batches and ranks
    that logged it (a name missing somewhere is not counted there), and the loss either as the mean of plain
    losses or as sum / count of (sum, count) losses."""

    def __init__(self) -> None:
        # Tensors stay on the device until `reduce`: no host sync per micro-batch.
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, float] = {}
        self.loss_sum: Any = 0.0
        self.loss_count: Any = 0.0
        self.loss_kind: str | None = None  # "mean" or "sum_count"

    def add(self, outputs: dict[str, Any], loss: torch.Tensor, count: torch.Tensor | None) -> None:
        """Record one micro-batch: its loss (plain, or a sum with its count) and every other scalar."""
        kind = "mean" if count is None else "sum_count"
        if self.loss_kind not in (None, kind):
            raise ValueError("loss: micro-batches of one step mix plain and (sum, count) losses")
        self.loss_kind = kind
        self.loss_sum = self.loss_sum + loss.detach().double().reshape(())
        self.loss_count = self.loss_count + (1.0 if count is None else count.double().reshape(()).to(loss.device))
        for key, value in outputs.items():
            if key == "loss":
                continue
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    continue  # not a scalar to log (e.g. per-sample outputs)
                value = value.detach().double().reshape(())
            elif not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0.0) + 1.0

    def reduce(self) -> tuple[dict[str, float], float]:
        """The merged logs (`loss` first) and the global loss count; collective over ranks."""
        names = sorted(self.sums)
        if get_world_size() > 1:
            names = sorted({name for part in all_gather_objects(names) for name in part})
        rows = [[self.loss_sum, self.loss_count]] + [[self.sums.get(n, 0.0), self.counts.get(n, 0.0)] for n in names]
        values = torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
        if get_world_size() > 1:
            torch.distributed.all_reduce(values)
        totals = values.tolist()
        result = {"loss": totals[0][0] / max(totals[0][1], 1e-300)}
        result.update({name: s / c for name, (s, c) in zip(names, totals[1:], strict=True) if c > 0})
        return result, totals[0][1]
