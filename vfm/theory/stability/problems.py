"""Losses the estimators probe, as functions of one flat parameter vector theta.

`SquareLossProblem`: L = (1/2n) sum_i ||f(x_i) - y_i||^2 for a module on fixed tensors (Gauss-Newton and exact
NTK paths apply). `ObjectiveProbe`: any vfm objective's `forward(batch)["loss"]` on a fixed probe batch (Hessian
paths only; the objective is called in eval mode so that dropout and batch statistics do not move the loss).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import grad, vmap

from vfm.theory.stability.flat import FlatParameters


class SquareLossProblem:
    """Square loss of `model` (inputs (n, ...) -> outputs (n, k)) against `targets` (n, k)."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.flat = FlatParameters(model)
        self.inputs, self.targets = inputs, targets.reshape(targets.shape[0], -1)
        self.count = inputs.shape[0]

    def theta(self) -> torch.Tensor:
        """The model's current parameters (P,)."""
        return self.flat.vector()

    def outputs(self, theta: torch.Tensor) -> torch.Tensor:
        """f(x_i; theta) as (n, k)."""
        return self.flat.call(theta, self.inputs).reshape(self.count, -1)

    def residuals(self, theta: torch.Tensor) -> torch.Tensor:
        """f - y, (n, k)."""
        return self.outputs(theta) - self.targets

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """(1/2n) sum_i ||f_i - y_i||^2."""
        return 0.5 * self.residuals(theta).pow(2).sum() / self.count

    def per_sample_grads(self, theta: torch.Tensor, index: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Gradients of l_i = (1/2) ||f_i - y_i||^2 for the samples in `index`: (m, P)."""

        def sample_loss(params: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return 0.5 * (self.flat.call(params, inputs.unsqueeze(0)).reshape(-1) - target).pow(2).sum()

        return vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(
            theta.detach(), self.inputs[index], self.targets[index])


class ObjectiveProbe:
    """`objective(batch)["loss"]` on a fixed batch; per-sample gradients call it on one-sample batches."""

    def __init__(self, objective: nn.Module, batch: dict[str, Any], loss_key: str = "loss") -> None:
        self.flat = FlatParameters(objective)
        self.objective, self.batch, self.loss_key = objective, batch, loss_key
        sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0}
        if len(sizes) != 1:
            raise ValueError(f"ObjectiveProbe: batch tensors disagree on the batch size: {sorted(sizes)}")
        self.count = sizes.pop()

    def theta(self) -> torch.Tensor:
        """The objective's current trainable parameters (P,)."""
        return self.flat.vector()

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """The objective's loss on the probe batch at theta."""
        return self.flat.call(theta, self.batch)[self.loss_key]

    def per_sample_grads(self, theta: torch.Tensor, index: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Gradients of the loss on each one-sample batch in `index`: (m, P)."""
        keys = [k for k, v in self.batch.items() if isinstance(v, torch.Tensor) and v.ndim > 0]
        fixed = {k: v for k, v in self.batch.items() if k not in keys}

        def sample_loss(params: torch.Tensor, sample: dict[str, torch.Tensor]) -> torch.Tensor:
            one = {**fixed, **{k: v.unsqueeze(0) for k, v in sample.items()}}
            return self.flat.call(params, one)[self.loss_key]

        samples = {k: self.batch[k][index] for k in keys}
        return vmap(grad(sample_loss), in_dims=(None, 0), chunk_size=chunk_size)(theta.detach(), samples)
