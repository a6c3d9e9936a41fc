"""The alignment factor of SGD noise, mu = Tr(Sigma G) / (2 L ||G||_F^2) [D: the factor 2 and G-vs-H are U].

Exact from the Jacobian and residuals of a square loss (small models), or from per-sample gradients on a
subsample and curvature products (any loss); plus the closed form for Gaussian linear regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vfm.theory.stability.ntk import small_gram
from vfm.theory.stability.operators import CurvatureOperator


@dataclass
class Alignment:
    """mu and the three quantities it is made of."""

    mu: float
    noise_curvature: float
    """Tr(Sigma G): the noise covariance of one-sample gradients weighted by the curvature."""
    loss: float
    curvature_frobenius_sq: float


def alignment_from_jacobian(jac: torch.Tensor, residuals: torch.Tensor) -> Alignment:
    """Exact mu for L = (1/2n) sum_i ||r_i||^2 from J (n, k, P) and residuals r = f - y (n, k), in float64.

    Tr(Sigma G) = (1/n^2) sum_i ||K[:, i] r_i||^2 - (1/n^3) ||K r||^2 on the sample side; on the parameter
    side the same number is (1/n) sum_i g_i^T G g_i - gbar^T G gbar with g_i = J_i^T r_i.
    """
    count = jac.shape[0]
    jac = jac.double()
    residuals = residuals.double().reshape(count, -1)
    if residuals.shape[1] != jac.shape[1]:
        raise ValueError(f"alignment_from_jacobian: residuals {tuple(residuals.shape)} do not match J {tuple(jac.shape)}")
    gram, parameter_side = small_gram(jac)
    loss = (residuals**2).sum().item() / (2 * count)
    frobenius_sq = (gram**2).sum().item() / count**2
    if parameter_side:
        gauss_newton = gram / count  # (P, P)
        sample_grads = torch.einsum("ikp,ik->ip", jac, residuals)  # g_i: (n, P)
        mean_grad = sample_grads.mean(dim=0)
        weighted = ((sample_grads @ gauss_newton) * sample_grads).sum(dim=1).mean()
        noise_curvature = (weighted - mean_grad @ gauss_newton @ mean_grad).item()
    else:
        outputs = jac.shape[1]
        flat_r = residuals.reshape(-1)
        blocks = gram.reshape(count * outputs, count, outputs)  # K[:, block i]
        per_sample = torch.einsum("aik,ik->ai", blocks, residuals)  # column i: K[:, block i] r_i
        noise_curvature = ((per_sample**2).sum() / count**2 - (gram @ flat_r).pow(2).sum() / count**3).item()
    return Alignment(_ratio(noise_curvature, loss, frobenius_sq), noise_curvature, loss, frobenius_sq)


def alignment_from_gradients(sample_grads: torch.Tensor, curvature: CurvatureOperator, loss: float,
                             curvature_frobenius_sq: float, population: int | None = None) -> Alignment:
    """mu from m per-sample gradients (m, P) drawn without replacement from `population` samples (None: infinite).

    Sigma is the sample covariance rescaled to the population's 1/n normalisation, so with m = n it is exact;
    costs m curvature products.
    """
    count = sample_grads.shape[0]
    if count < 2:
        raise ValueError(f"alignment_from_gradients: {count} per-sample gradients, expected >= 2")
    centered = sample_grads - sample_grads.mean(dim=0, keepdim=True)
    products = curvature.matmat(centered.to(curvature.dtype))
    scale = 1.0 / (count - 1)
    if population is not None:
        scale *= (population - 1) / population  # finite-population correction for sampling without replacement
    noise_curvature = (scale * (products.double() * centered.double()).sum()).item()
    return Alignment(_ratio(noise_curvature, loss, curvature_frobenius_sq), noise_curvature, loss, curvature_frobenius_sq)


def gaussian_regression_alignment(covariance: torch.Tensor, error: torch.Tensor) -> float:
    """Closed form for x ~ N(0, S), residual x^T e: mu = 1 + e^T S^3 e / (e^T S e ||S||_F^2) [D, Monte Carlo checked]."""
    covariance, error = covariance.double(), error.double()
    s_error = covariance @ error
    return 1.0 + (s_error @ covariance @ s_error).item() / ((error @ s_error).item() * (covariance**2).sum().item())


def _ratio(noise_curvature: float, loss: float, frobenius_sq: float) -> float:
    denominator = 2 * loss * frobenius_sq
    return noise_curvature / denominator if denominator > 0 else float("nan")
