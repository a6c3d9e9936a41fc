"""Power iteration and Lanczos against eigvalsh on explicit matrices and on an MLP's Gauss-Newton matrix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfm.theory.stability.eigen import lanczos, power_iteration, top_eigenvalue
from vfm.theory.stability.ntk import exact_gauss_newton, jacobian
from vfm.theory.stability.operators import gauss_newton_operator, hessian_operator, matrix_operator
from vfm.theory.stability.problems import SquareLossProblem


def _with_spectrum(values: torch.Tensor, seed: int) -> torch.Tensor:
    basis, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=torch.Generator().manual_seed(seed),
                                           dtype=torch.float64))
    return basis @ torch.diag(values) @ basis.T


def test_power_iteration_finds_the_top_eigenvalue():
    values = torch.cat([torch.tensor([10.0]), torch.linspace(0.0, 6.0, 49)]).double()
    estimate = power_iteration(matrix_operator(_with_spectrum(values, 0)), iters=200, tol=1e-12,
                               generator=torch.Generator().manual_seed(1))
    assert estimate.converged and estimate.value == pytest.approx(10.0, rel=1e-8)


def test_lanczos_finds_the_algebraic_top_where_power_iteration_finds_the_largest_magnitude():
    """Spectrum in [-8, 5]: Lanczos returns 5 (what stability compares with 2/eta), power iteration -8."""
    values = torch.cat([torch.tensor([-8.0, 5.0]), torch.linspace(-3.0, 3.0, 58)]).double()
    operator = matrix_operator(_with_spectrum(values, 3))
    generator = torch.Generator().manual_seed(0)
    assert top_eigenvalue(operator, iters=40, generator=generator).value == pytest.approx(5.0, rel=1e-8)
    assert power_iteration(operator, 500, 1e-12, generator).value == pytest.approx(-8.0, rel=1e-6)
    assert lanczos(operator, 60, generator)[0].item() == pytest.approx(-8.0, rel=1e-8)


def test_hvp_and_gauss_newton_top_eigenvalues_of_an_mlp_match_the_exact_gram():
    """Lanczos on G-products equals lambda_max(K)/n; on H-products near a fit the two are close but not equal."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    inputs = torch.randn(12, 5, dtype=torch.float64)
    problem = SquareLossProblem(model, inputs, model(inputs).detach() + 1e-3 * torch.randn(12, 3, dtype=torch.float64))
    theta = problem.theta()
    exact = exact_gauss_newton(jacobian(problem.outputs, theta))
    generator = torch.Generator().manual_seed(0)
    gauss_newton = top_eigenvalue(gauss_newton_operator(problem.outputs, theta), 60, generator=generator)
    hessian = top_eigenvalue(hessian_operator(problem.loss, theta), 60, generator=generator)
    assert gauss_newton.value == pytest.approx(exact.top_eigenvalue, rel=1e-8)
    assert hessian.value == pytest.approx(exact.top_eigenvalue, rel=1e-2)  # residuals of 1e-3 barely move H off G
