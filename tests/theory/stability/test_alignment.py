"""The alignment factor: Gaussian linear regression closed form, exact-vs-sampled agreement on a tiny MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfm.theory.stability.alignment import (
    alignment_from_gradients,
    alignment_from_jacobian,
    gaussian_regression_alignment,
)
from vfm.theory.stability.ntk import jacobian
from vfm.theory.stability.operators import gauss_newton_operator
from vfm.theory.stability.problems import SquareLossProblem


def test_alignment_matches_the_gaussian_linear_regression_closed_form_within_two_percent():
    """x ~ N(0, S), d = 20, anisotropic S, n = 1e5 samples: mu from (J, r) vs 1 + e^T S^3 e / (e^T S e ||S||_F^2)."""
    generator = torch.Generator().manual_seed(0)
    dim, count = 20, 100_000
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    covariance = basis @ torch.diag(torch.logspace(0, -2, dim, dtype=torch.float64)) @ basis.T
    error = basis[:, 0] + 0.3 * torch.randn(dim, generator=generator, dtype=torch.float64)  # leans to the sharp side
    inputs = torch.randn(count, dim, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(covariance).T
    measured = alignment_from_jacobian(inputs[:, None, :], (inputs @ error)[:, None]).mu
    closed = gaussian_regression_alignment(covariance, error)
    assert closed > 1.25  # well above the floor of 1 (the ceiling here is 1 + 1/sum(lambda^2) = 1.37)
    assert measured == pytest.approx(closed, rel=0.02)


def test_exact_and_per_sample_alignment_agree_on_a_tiny_mlp():
    """All n per-sample gradients reproduce the exact value; a half subsample lands near it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 2)).double()
    inputs = torch.randn(40, 6, dtype=torch.float64)
    problem = SquareLossProblem(model, inputs, torch.randn(40, 2, dtype=torch.float64))
    theta = problem.theta()
    exact = alignment_from_jacobian(jacobian(problem.outputs, theta), problem.residuals(theta).detach())
    operator = gauss_newton_operator(problem.outputs, theta)
    everyone = problem.per_sample_grads(theta, torch.arange(40))
    full = alignment_from_gradients(everyone, operator, exact.loss, exact.curvature_frobenius_sq, population=40)
    assert full.mu == pytest.approx(exact.mu, rel=1e-9)
    sampled = [alignment_from_gradients(everyone[torch.randperm(40, generator=torch.Generator().manual_seed(s))[:20]],
                                        operator, exact.loss, exact.curvature_frobenius_sq, population=40).mu
               for s in range(30)]
    assert sum(sampled) / len(sampled) == pytest.approx(exact.mu, rel=0.1)
