"""Hutchinson on quadratics L = 1/2 theta^T A theta, whose Hessian A is known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from vfm.theory.stability.hutchinson import hessian_trace, hutchinson
from vfm.theory.stability.operators import hessian_operator, matrix_operator


def _symmetric(dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return basis @ torch.diag(torch.linspace(-2.0, 6.0, dim, dtype=torch.float64)) @ basis.T


def test_frobenius_of_a_quadratic_within_its_standard_error_which_matches_the_analytic_one():
    """Through HVPs of the quadratic's loss: |estimate - ||A||_F| < 3 stderr, stderr ~ sqrt(2 Tr A^4 / m) / (2||A||_F)."""
    matrix = _symmetric(40, seed=0)
    theta = torch.randn(40, dtype=torch.float64)
    operator = hessian_operator(lambda t: 0.5 * t @ matrix @ t, theta)
    probes = 4000
    estimate = hutchinson(operator, probes, "gaussian", torch.Generator().manual_seed(1))
    exact = matrix.norm().item()
    # Var ||Av||^2 = 2 Tr A^4 for v ~ N(0, I); the delta method divides the standard error by 2 ||A||_F.
    analytic = math.sqrt(2 * torch.trace(torch.linalg.matrix_power(matrix, 4)).item() / probes) / (2 * exact)
    assert estimate.frobenius_stderr == pytest.approx(analytic, rel=0.1)
    assert abs(estimate.frobenius - exact) < 3 * estimate.frobenius_stderr
    assert abs(estimate.trace - matrix.trace().item()) < 3 * estimate.trace_stderr


def test_error_shrinks_like_one_over_sqrt_probes():
    """Mean absolute error over 20 seeds at 25 vs 400 probes falls by about sqrt(16) = 4."""
    matrix = _symmetric(30, seed=2)
    operator, exact = matrix_operator(matrix), matrix.norm().item()

    def mean_error(probes: int) -> float:
        errors = [abs(hutchinson(operator, probes, generator=torch.Generator().manual_seed(s)).frobenius - exact)
                  for s in range(20)]
        return sum(errors) / len(errors)

    assert 2.5 < mean_error(25) / mean_error(400) < 6.5


def test_rademacher_trace_is_exact_for_a_diagonal_matrix():
    """v^T D v = Tr D for every sign vector, so the estimate is exact and its stderr is zero."""
    diagonal = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    trace, stderr = hessian_trace(matrix_operator(diagonal), probes=8, generator=torch.Generator().manual_seed(0))
    assert trace == pytest.approx(55.0, abs=1e-12) and stderr == pytest.approx(0.0, abs=1e-12)
