"""Exact Gauss-Newton quantities of small models from the Jacobian J (n, k, P) and the NTK Gram K = J J^T."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jacrev


@dataclass
class ExactCurvature:
    """||G||_F, Tr G and lambda_max(G) for G = (1/n) sum_i J_i^T J_i, computed in float64."""

    frobenius: float
    trace: float
    top_eigenvalue: float


def jacobian(outputs: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """J[i, c, p] = d outputs(theta)[i, c] / d theta[p]: (n, k, P); n * k * P floats of memory."""
    jac = jacrev(outputs)(theta.detach())
    return jac.reshape(jac.shape[0], -1, theta.numel())


def ntk_gram(jac: torch.Tensor) -> torch.Tensor:
    """K = J J^T, (n k, n k) with rows ordered sample-major (sample i's k outputs are rows i k .. i k + k - 1)."""
    flat = jac.reshape(-1, jac.shape[-1]).double()
    return flat @ flat.T


def small_gram(jac: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The smaller of J^T J (P, P) and J J^T (nk, nk), and whether it is the parameter-side one.

    Both have the same non-zero spectrum, so either gives ||G||_F, Tr G and lambda_max(G) exactly.
    """
    flat = jac.reshape(-1, jac.shape[-1]).double()
    if flat.shape[1] <= flat.shape[0]:
        return flat.T @ flat, True
    return flat @ flat.T, False


def exact_gauss_newton(jac: torch.Tensor) -> ExactCurvature:
    """||G||_F = ||K||_F / n, Tr G = Tr K / n, lambda_max(G) = lambda_max(K) / n."""
    count = jac.shape[0]
    gram, _ = small_gram(jac)
    top = torch.linalg.eigvalsh(gram)[-1].item()
    return ExactCurvature(
        frobenius=gram.norm().item() / count,
        trace=gram.diagonal().sum().item() / count,
        top_eigenvalue=top / count,
    )
