"""Linearised SGD on over-parameterised least squares: the second-moment operator, the exact critical step size,
the smallest alignment factor, and the expected loss along the exact moment recursion.

L(w) = (1/2n) ||X w - y||^2 with y in the range of X; near a minimum the error e obeys
e_{t+1} = (I - eta H_xi) e_t, H_xi = (1/B) sum_{i in xi} x_i x_i^T, B samples drawn with replacement [D].
Everything is computed in the row space of X (the rest of e is never moved), in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LeastSquares:
    """Rows of X expressed in an orthonormal basis of their span: z_i = U^T x_i, (n, r) with r = rank X."""

    rows: torch.Tensor
    hessian: torch.Tensor
    """H = (1/n) sum_i z_i z_i^T, (r, r), positive definite."""

    @property
    def count(self) -> int:
        """Number of samples n."""
        return self.rows.shape[0]


def least_squares(inputs: torch.Tensor) -> LeastSquares:
    """The row-space view of the design matrix `inputs` (n, d)."""
    inputs = inputs.double()
    _, singular, vh = torch.linalg.svd(inputs, full_matrices=False)
    rank = int((singular > singular[0] * 1e-10).sum())
    rows = inputs @ vh[:rank].T
    return LeastSquares(rows, rows.T @ rows / inputs.shape[0])


def _second_order_term(problem: LeastSquares, batch_size: int) -> torch.Tensor:
    """C with vec(E[H_xi S H_xi]) = C vec(S): (1 - 1/B) H (x) H + (1/(B n)) sum_i H_i (x) H_i."""
    outer = torch.einsum("ia,ib->iab", problem.rows, problem.rows)  # H_i, (n, r, r)
    per_sample = torch.einsum("iab,icd->acbd", outer, outer).reshape(problem.hessian.numel(), -1) / problem.count
    return (1 - 1 / batch_size) * torch.kron(problem.hessian, problem.hessian) + per_sample / batch_size


def moment_operator(problem: LeastSquares, eta: float, batch_size: int) -> torch.Tensor:
    """T with vec(E[e_{t+1} e_{t+1}^T]) = T vec(E[e_t e_t^T]): S - eta (H S + S H) + eta^2 E[H_xi S H_xi]."""
    identity = torch.eye(problem.hessian.shape[0], dtype=torch.float64)
    first = torch.kron(problem.hessian, identity) + torch.kron(identity, problem.hessian)
    return torch.eye(first.shape[0], dtype=torch.float64) - eta * first + eta**2 * _second_order_term(problem, batch_size)


def critical_step_size(problem: LeastSquares, batch_size: int) -> float:
    """Largest eta with spectral radius of `moment_operator` <= 1.

    T(eta) = I - eta A + eta^2 C has A = H (+) H positive definite and C positive semi-definite, so T <= I
    exactly when eta C <= A: eta_crit = 1 / lambda_max(A^{-1} C), one symmetric-definite eigenproblem. T maps
    PSD matrices to PSD matrices, so its spectral radius is its top eigenvalue and -1 is never crossed first.
    """
    identity = torch.eye(problem.hessian.shape[0], dtype=torch.float64)
    first = torch.kron(problem.hessian, identity) + torch.kron(identity, problem.hessian)
    chol = torch.linalg.cholesky(first)
    second = _second_order_term(problem, batch_size)
    whitened = torch.linalg.solve_triangular(chol, torch.linalg.solve_triangular(chol, second, upper=False).T, upper=False)
    return 1.0 / torch.linalg.eigvalsh((whitened + whitened.T) / 2)[-1].item()


def spectral_radius(problem: LeastSquares, eta: float, batch_size: int) -> float:
    """Spectral radius of the second-moment operator at eta."""
    return torch.linalg.eigvals(moment_operator(problem, eta, batch_size)).abs().max().item()


def min_alignment(problem: LeastSquares) -> float:
    """mu_min = min_e Tr(Sigma(e) H) / (2 L(e) ||H||_F^2) over errors e in the row space.

    Tr(Sigma H) = e^T M e with M = (1/n) sum_i (x_i^T H x_i) x_i x_i^T - H^3 and 2L = e^T H e, so mu_min is the
    smallest generalised eigenvalue of (M, H ||H||_F^2).
    """
    hessian = problem.hessian
    leverage = torch.einsum("ia,ab,ib->i", problem.rows, hessian, problem.rows)
    weighted = torch.einsum("i,ia,ib->ab", leverage, problem.rows, problem.rows) / problem.count
    noise = weighted - hessian @ hessian @ hessian
    chol = torch.linalg.cholesky(hessian * (hessian**2).sum())
    whitened = torch.linalg.solve_triangular(chol, torch.linalg.solve_triangular(chol, noise, upper=False).T, upper=False)
    return torch.linalg.eigvalsh((whitened + whitened.T) / 2)[0].item()


def expected_losses(problem: LeastSquares, eta: float, batch_size: int, steps: int,
                    start: torch.Tensor | None = None) -> torch.Tensor:
    """E L(e_t) = (1/2) Tr(H E[e_t e_t^T]) for t = 0..steps, iterating the exact moment recursion."""
    size = problem.hessian.shape[0]
    moment = torch.eye(size, dtype=torch.float64) if start is None else start.double()
    operator = moment_operator(problem, eta, batch_size)
    vec_h = problem.hessian.reshape(-1)
    vec = moment.reshape(-1)
    losses = [0.5 * (vec_h @ vec).item()]
    for _ in range(steps):
        vec = operator @ vec
        losses.append(0.5 * (vec_h @ vec).item())
    return torch.tensor(losses, dtype=torch.float64)


def simulate_sgd(problem: LeastSquares, eta: float, batch_size: int, steps: int, runs: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte Carlo mean of L(e_t) over `runs` trajectories of linearised SGD from e_0 ~ N(0, I): (steps + 1,)."""
    error = torch.randn(runs, problem.hessian.shape[0], generator=generator, dtype=torch.float64)
    losses = [0.5 * torch.einsum("ra,ab,rb->r", error, problem.hessian, error).mean().item()]
    for _ in range(steps):
        picks = torch.randint(0, problem.count, (runs, batch_size), generator=generator)
        rows = problem.rows[picks]  # (runs, B, r)
        residuals = torch.einsum("rba,ra->rb", rows, error)
        error = error - eta / batch_size * torch.einsum("rb,rba->ra", residuals, rows)
        losses.append(0.5 * torch.einsum("ra,ab,rb->r", error, problem.hessian, error).mean().item())
    return torch.tensor(losses, dtype=torch.float64)
