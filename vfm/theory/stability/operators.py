"""Curvature operators v -> Hv: the Hessian (forward-over-reverse HVP), the Gauss-Newton matrix, explicit matrices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, jvp, vjp, vmap


@dataclass
class CurvatureOperator:
    """A symmetric P x P matrix known only through products; `matmat` takes and returns (m, P) rows."""

    matvec: Callable[[torch.Tensor], torch.Tensor]
    dim: int
    dtype: torch.dtype
    device: torch.device
    batched: bool = True
    """Whether `matvec` may run under torch.func.vmap (False: products run one at a time)."""
    chunk_size: int | None = None
    """Vectors per vmap call (None: all at once); bounds the memory of a batched product."""

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """Products with each row of `vectors` (m, P)."""
        if self.batched:
            return vmap(self.matvec, chunk_size=self.chunk_size)(vectors)
        return torch.stack([self.matvec(v) for v in vectors])


def matrix_operator(matrix: torch.Tensor) -> CurvatureOperator:
    """The operator of an explicit symmetric matrix (quadratic test problems, linear least squares)."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix_operator: expected a square matrix, got shape {tuple(matrix.shape)}")
    return CurvatureOperator(lambda v: matrix @ v, matrix.shape[0], matrix.dtype, matrix.device)


def hessian_operator(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                     batched: bool = True, chunk_size: int | None = None) -> CurvatureOperator:
    """Hessian of the scalar `loss(theta)` at theta; each product costs about two backward passes."""
    theta = theta.detach()
    gradient = grad(loss)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return jvp(gradient, (theta,), (v,))[1]

    return CurvatureOperator(matvec, theta.numel(), theta.dtype, theta.device, batched, chunk_size)


def gauss_newton_operator(outputs: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                          batched: bool = True, chunk_size: int | None = None) -> CurvatureOperator:
    """G = (1/n) J^T J of `outputs(theta)` (n, k): the Hessian of (1/2n) sum_i ||f_i - y_i||^2 at interpolation.

    Each product is one jvp (Jv) and one vjp (J^T u): first derivatives only, and G is PSD where H may not be.
    """
    theta = theta.detach()
    values, pullback = vjp(outputs, theta)
    count = values.shape[0]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        jv = jvp(outputs, (theta,), (v,))[1]
        return pullback(jv)[0] / count

    return CurvatureOperator(matvec, theta.numel(), theta.dtype, theta.device, batched, chunk_size)
