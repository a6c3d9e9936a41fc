"""Top eigenvalue of a curvature operator: power iteration (largest |lambda|) or Lanczos (largest lambda)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from vfm.theory.stability.operators import CurvatureOperator


@dataclass
class EigenEstimate:
    """An eigenvalue estimate, the products it took and whether it met its tolerance."""

    value: float
    products: int
    converged: bool


def _start_vector(operator: CurvatureOperator, generator: torch.Generator | None) -> torch.Tensor:
    vector = torch.randn(operator.dim, generator=generator, dtype=operator.dtype).to(operator.device)
    return vector / vector.norm()


def power_iteration(operator: CurvatureOperator, iters: int = 100, tol: float = 1e-6,
                    generator: torch.Generator | None = None) -> EigenEstimate:
    """Eigenvalue of largest magnitude: Rayleigh quotient until it changes by less than tol (relative)."""
    vector = _start_vector(operator, generator)
    value = 0.0
    for step in range(1, iters + 1):
        product = operator.matvec(vector)
        new_value = torch.dot(vector, product).item()
        norm = product.norm()
        if norm == 0:
            return EigenEstimate(0.0, step, True)
        vector = product / norm
        if step > 1 and abs(new_value - value) <= tol * max(abs(new_value), 1e-30):
            return EigenEstimate(new_value, step, True)
        value = new_value
    return EigenEstimate(value, iters, False)


def _lanczos(operator: CurvatureOperator, iters: int, generator: torch.Generator | None) -> tuple[torch.Tensor, float]:
    """The Lanczos tridiagonal matrix (float64) and the norm of the last residual (0 on an invariant subspace)."""
    iters = min(iters, operator.dim)
    basis = torch.zeros(iters, operator.dim, dtype=torch.float64, device=operator.device)
    alphas, betas = [], []
    vector = _start_vector(operator, generator).double()
    residual = 0.0
    for step in range(iters):
        basis[step] = vector
        product = operator.matvec(vector.to(operator.dtype)).double()
        alpha = torch.dot(vector, product)
        alphas.append(alpha)
        # Reorthogonalising against every earlier vector (twice) keeps spurious copies of the top value away.
        for _ in range(2):
            product = product - basis[: step + 1].T @ (basis[: step + 1] @ product)
        residual = product.norm().item()
        if step == iters - 1 or residual < 1e-12 * max(abs(alpha.item()), 1.0):
            break
        betas.append(product.norm())
        vector = product / betas[-1]
    tridiagonal = torch.diag(torch.stack(alphas))
    if len(betas) >= 1:
        off = torch.stack(betas[: len(alphas) - 1])
        tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
    return tridiagonal, residual


def lanczos(operator: CurvatureOperator, iters: int = 30, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ritz values (ascending) of `iters` Lanczos steps with full reorthogonalisation."""
    return torch.linalg.eigvalsh(_lanczos(operator, iters, generator)[0])


def top_eigenvalue(operator: CurvatureOperator, iters: int = 30, method: Literal["lanczos", "power"] = "lanczos",
                   generator: torch.Generator | None = None, tol: float = 1e-6) -> EigenEstimate:
    """Largest eigenvalue (Lanczos: algebraically largest; power: largest magnitude, for PSD operators alike)."""
    if method == "power":
        return power_iteration(operator, iters, tol, generator)
    if method == "lanczos":
        tridiagonal, residual = _lanczos(operator, iters, generator)
        values, vectors = torch.linalg.eigh(tridiagonal)
        # The Ritz pair's residual ||A y - theta y|| is the last residual norm times the last entry of its vector.
        error = residual * abs(vectors[-1, -1].item())
        return EigenEstimate(values[-1].item(), tridiagonal.shape[0], error <= tol * max(abs(values[-1].item()), 1e-30))
    raise ValueError(f"top_eigenvalue: method {method!r}, expected 'lanczos' or 'power'")
