"""The NTK path against an explicit Gauss-Newton matrix on a linear model, and Hutchinson on G products."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfm.theory.stability.hutchinson import hutchinson
from vfm.theory.stability.ntk import exact_gauss_newton, jacobian, ntk_gram
from vfm.theory.stability.operators import gauss_newton_operator
from vfm.theory.stability.problems import SquareLossProblem


def _linear_problem(count: int, dim: int, outputs: int) -> tuple[SquareLossProblem, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(dim, outputs, bias=False).double()
    inputs = torch.randn(count, dim, dtype=torch.float64) * torch.linspace(0.2, 2.0, dim, dtype=torch.float64)
    return SquareLossProblem(model, inputs, torch.randn(count, outputs, dtype=torch.float64)), inputs


@pytest.mark.parametrize(("count", "dim"), [(10, 6), (4, 9)])  # parameter side (P < nk) and sample side
def test_ntk_path_equals_explicit_gauss_newton_of_a_linear_model(count, dim):
    """f = W x with W (k, d): G = (1/n) sum_i J_i^T J_i = I_k (x) (X^T X / n) in W's row-major flattening."""
    problem, inputs = _linear_problem(count, dim, outputs=2)
    explicit = torch.kron(torch.eye(2, dtype=torch.float64), inputs.T @ inputs / count)
    jac = jacobian(problem.outputs, problem.theta())
    exact = exact_gauss_newton(jac)
    assert exact.frobenius == pytest.approx(explicit.norm().item(), rel=1e-12)
    assert exact.trace == pytest.approx(explicit.trace().item(), rel=1e-12)
    assert exact.top_eigenvalue == pytest.approx(torch.linalg.eigvalsh(explicit)[-1].item(), rel=1e-10)
    gram = ntk_gram(jac)
    assert gram.shape == (2 * count, 2 * count)
    # K = X X^T (x) I_k in sample-major order; its spectrum / n is G's non-zero spectrum.
    assert torch.allclose(gram, torch.kron(inputs @ inputs.T, torch.eye(2, dtype=torch.float64)))
    operator = gauss_newton_operator(problem.outputs, problem.theta())
    probe = torch.randn(operator.dim, dtype=torch.float64)
    assert torch.allclose(operator.matvec(probe), explicit @ probe)


def test_hutchinson_on_gauss_newton_products_agrees_with_the_exact_value():
    problem, _ = _linear_problem(50, 8, outputs=3)
    theta = problem.theta()
    exact = exact_gauss_newton(jacobian(problem.outputs, theta)).frobenius
    estimate = hutchinson(gauss_newton_operator(problem.outputs, theta), 2000, generator=torch.Generator().manual_seed(0))
    assert abs(estimate.frobenius - exact) < 3 * estimate.frobenius_stderr
    assert estimate.frobenius_stderr < 0.05 * exact
