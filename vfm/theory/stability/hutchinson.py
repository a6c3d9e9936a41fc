"""Hutchinson estimates of ||A||_F (= sqrt E||Av||^2) and Tr A (= E v^T A v) from the same random probes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from vfm.theory.stability.operators import CurvatureOperator

Distribution = Literal["gaussian", "rademacher"]


@dataclass
class HutchinsonEstimate:
    """Frobenius norm and trace from `probes` products, each with the standard error of its mean."""

    frobenius: float
    frobenius_stderr: float
    """Delta method on sqrt(mean ||Av||^2): stderr(||Av||^2) / (2 ||A||_F)."""
    frobenius_sq: float
    frobenius_sq_stderr: float
    trace: float
    trace_stderr: float
    probes: int


def random_probes(count: int, dim: int, distribution: Distribution = "gaussian", generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(count, dim) probe vectors with E[v v^T] = I."""
    if distribution == "gaussian":
        return torch.randn(count, dim, generator=generator, dtype=dtype, device="cpu").to(device)
    if distribution == "rademacher":
        signs = torch.randint(0, 2, (count, dim), generator=generator, device="cpu")
        return (2 * signs - 1).to(dtype=dtype, device=device)
    raise ValueError(f"random_probes: distribution {distribution!r}, expected 'gaussian' or 'rademacher'")


def _mean_and_stderr(samples: torch.Tensor) -> tuple[float, float]:
    samples = samples.double()
    count = samples.numel()
    stderr = samples.std(unbiased=True).item() / math.sqrt(count) if count > 1 else float("inf")
    return samples.mean().item(), stderr


def hutchinson(operator: CurvatureOperator, probes: int = 64, distribution: Distribution = "gaussian",
               generator: torch.Generator | None = None, batch: int | None = None) -> HutchinsonEstimate:
    """||A||_F and Tr A from `probes` products with random v (both unbiased since E[v v^T] = I)."""
    if probes < 2:
        raise ValueError(f"hutchinson: probes={probes}, expected >= 2 (a standard error needs two)")
    squares, quadratics = [], []
    batch = batch or probes
    for start in range(0, probes, batch):
        vectors = random_probes(min(batch, probes - start), operator.dim, distribution, generator,
                                operator.dtype, operator.device)
        products = operator.matmat(vectors)
        squares.append((products.double() ** 2).sum(dim=1))
        quadratics.append((products.double() * vectors.double()).sum(dim=1))
    frobenius_sq, frobenius_sq_stderr = _mean_and_stderr(torch.cat(squares))
    trace, trace_stderr = _mean_and_stderr(torch.cat(quadratics))
    frobenius = math.sqrt(max(frobenius_sq, 0.0))
    return HutchinsonEstimate(
        frobenius=frobenius,
        frobenius_stderr=frobenius_sq_stderr / (2 * frobenius) if frobenius > 0 else float("inf"),
        frobenius_sq=frobenius_sq,
        frobenius_sq_stderr=frobenius_sq_stderr,
        trace=trace,
        trace_stderr=trace_stderr,
        probes=probes,
    )


def hessian_frobenius(operator: CurvatureOperator, probes: int = 64, generator: torch.Generator | None = None,
                      distribution: Distribution = "gaussian") -> tuple[float, float]:
    """(||A||_F, its standard error) by Hutchinson."""
    estimate = hutchinson(operator, probes, distribution, generator)
    return estimate.frobenius, estimate.frobenius_stderr


def hessian_trace(operator: CurvatureOperator, probes: int = 64, generator: torch.Generator | None = None,
                  distribution: Distribution = "rademacher") -> tuple[float, float]:
    """(Tr A, its standard error) by Hutchinson (Rademacher probes: the lower-variance choice for a trace)."""
    estimate = hutchinson(operator, probes, distribution, generator)
    return estimate.trace, estimate.trace_stderr
