"""The contract between the Trainer and whatever it optimises."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Objective(Protocol):
    """An `nn.Module` whose `forward(batch)` returns a dict with a scalar `loss` and scalars to log.

    For evaluation it may also define `predict(batch)`, whose output evaluators consume; without it
    evaluators receive `forward(batch)`'s dict.
    """

    def __call__(self, batch: Any) -> dict[str, torch.Tensor]: ...
