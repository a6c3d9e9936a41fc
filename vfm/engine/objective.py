"""The contract between the Trainer and whatever it optimises."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Objective(Protocol):
    """An `nn.Module` whose `forward(batch)` returns a dict with a scalar `loss` and scalars to log.

    For evaluation it may also define `predict(batch)`, whose output evaluators consume; without it
    evaluators receive `forward(batch)`'s dict. It may define `check_dataset(dataset, path)`, which the
    Trainer calls for every dataset before training, to refuse data it cannot use (e.g. more classes than
    its classifier has) with a ConfigError.
    """

    def __call__(self, batch: Any) -> dict[str, torch.Tensor]: ...
