"""Closed-form GDP parameters of the last iterate of noisy (cyclic) gradient descent, by shifted interpolation.

Bok, Su & Altschuler (ICML 2024). Conventions (docs/privacy.md): replace-one neighbours; sigma is the std of the
noise added to the gradient; mu0 = (l2-sensitivity of one step's mean gradient) / sigma, e.g. 2L/(b sigma) for
per-example gradients bounded by L in a batch of b; c is the Lipschitz constant of the gradient step
(`vfm.theory.privacy.guards.contraction_factor`). Every function is vectorised over its step/epoch count.
"""

from __future__ import annotations

import numpy as np

from vfm.errors import ConfigError

ArrayLike = float | np.ndarray


def _positive(value: float, name: str) -> float:
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: got {value!r}, expected a finite value > 0")
    return float(value)


def _contraction(c: float) -> float:
    if not np.isfinite(c) or c < 0:
        raise ConfigError(f"c: got {c!r}, expected a contraction factor in [0, 1]")
    if c > 1:
        raise ConfigError(f"c: got {c!r} > 1: the gradient step expands distances (a non-convex loss, or a step size "
                          "above 2/M), and no last-iterate bound holds")
    return float(c)


def _counts(value: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ConfigError(f"{name}: got {value!r}, expected whole numbers >= 1")
        array = array.astype(np.int64)
    if np.any(array < 1):
        raise ConfigError(f"{name}: got {array.min()}, expected whole numbers >= 1")
    return array.astype(np.float64)


def _out(value: np.ndarray) -> ArrayLike:
    return float(value) if np.ndim(value) == 0 else value


def _one_minus_power(c: float, power: np.ndarray) -> np.ndarray:
    """1 - c^power without cancellation for c near 1."""
    return -np.expm1(power * np.log(c)) if c > 0 else np.where(power > 0, 1.0, 0.0)


def noisy_gd_mu(mu0: float, c: float, steps: ArrayLike) -> ArrayLike:
    """Last iterate of full-batch noisy GD on a c-contractive (strongly convex) loss: exact, <= mu0 sqrt(T)."""
    mu0, c, steps = _positive(mu0, "mu0"), _contraction(c), _counts(steps, "steps")
    if c == 1.0:
        return _out(mu0 * np.sqrt(steps))
    ratio = (1 + c) / (1 - c) * _one_minus_power(c, steps) / (2 - _one_minus_power(c, steps))
    return _out(mu0 * np.sqrt(ratio))


def noisy_gd_mu_limit(mu0: float, c: float) -> float:
    """The T -> infinity limit of `noisy_gd_mu`: mu0 sqrt((1 + c)/(1 - c)) (infinite for c = 1)."""
    mu0, c = _positive(mu0, "mu0"), _contraction(c)
    return float("inf") if c == 1.0 else mu0 * float(np.sqrt((1 + c) / (1 - c)))


def noisy_cgd_mu(mu0: float, c: float, batches_per_epoch: int, epochs: ArrayLike) -> ArrayLike:
    """Last iterate of noisy cyclic GD (a fixed partition into l batches, the same order every epoch)."""
    mu0, c = _positive(mu0, "mu0"), _contraction(c)
    length = float(_counts(batches_per_epoch, "batches_per_epoch"))
    epochs = _counts(epochs, "epochs")
    if c == 1.0:
        return _out(mu0 * np.sqrt(1 + (epochs - 1) / length))
    if c == 0.0:
        return _out(mu0 * np.ones_like(epochs))
    tail = _one_minus_power(c, length * (epochs - 1))
    term = c ** (2 * length - 2) * (1 - c**2) / _one_minus_power(c, length) ** 2 * tail / (2 - tail)
    return _out(mu0 * np.sqrt(1 + term))


def noisy_cgd_instance_mu(mu0: float, c: float, batches_per_epoch: int, epochs: ArrayLike) -> ArrayLike:
    """GDP of the Gaussian instance of noisy CGD (one differing record in the first batch): a lower bound."""
    mu0, c = _positive(mu0, "mu0"), _contraction(c)
    length = float(_counts(batches_per_epoch, "batches_per_epoch"))
    epochs = _counts(epochs, "epochs")
    if c == 1.0:
        return _out(mu0 * np.sqrt(epochs / length))
    total = _one_minus_power(c, length * epochs)
    return _out(mu0 * np.sqrt(total * (1 - c**2) / (_one_minus_power(c, length) ** 2 * (2 - total))))


def convex_gd_mu(gradient_sensitivity: float, sigma: float, eta: float, steps: ArrayLike,
                 diameter: float = 1.0) -> ArrayLike:
    """Last iterate of projected noisy GD on a convex loss over a set of diameter D: min(s sqrt(T)/sigma, mu*)."""
    return _out(np.minimum(gradient_sensitivity * np.sqrt(_counts(steps, "steps")) / _positive(sigma, "sigma"),
                           convex_gd_plateau(gradient_sensitivity, sigma, eta, diameter)))


def convex_gd_plateau(gradient_sensitivity: float, sigma: float, eta: float, diameter: float = 1.0) -> float:
    """mu* = sqrt(3 D s/eta + s^2 ceil(D/(eta s))) / sigma, the value `convex_gd_mu` stays at for large T."""
    s, sigma = _positive(gradient_sensitivity, "gradient_sensitivity"), _positive(sigma, "sigma")
    eta, diameter = _positive(eta, "eta"), _positive(diameter, "diameter")
    # The authors' D = 1 form, for any D by rescaling the iterates by 1/D (GDP is invariant under a bijection).
    return float(np.sqrt(3 * diameter * s / eta + s**2 * np.ceil(diameter / (eta * s))) / sigma)


def convex_gd_threshold(gradient_sensitivity: float, sigma: float, eta: float, diameter: float = 1.0) -> int:
    """t* = ceil(mu*^2 sigma^2 / s^2): from this step on `convex_gd_mu` is flat at mu*."""
    plateau = convex_gd_plateau(gradient_sensitivity, sigma, eta, diameter)
    return int(np.ceil(round(plateau**2 * sigma**2 / gradient_sensitivity**2, 9)))


def convex_cgd_mu(gradient_sensitivity: float, sigma: float, eta: float, batches_per_epoch: int, epochs: ArrayLike,
                  diameter: float = 1.0) -> ArrayLike:
    """Last iterate of projected noisy cyclic GD on a convex loss over diameter D: min(s sqrt(E)/sigma, mu*)."""
    return _out(np.minimum(gradient_sensitivity * np.sqrt(_counts(epochs, "epochs")) / _positive(sigma, "sigma"),
                           convex_cgd_plateau(gradient_sensitivity, sigma, eta, batches_per_epoch, diameter)))


def _convex_cgd_terms(s: float, eta: float, length: float, diameter: float) -> tuple[float, float, float]:
    return 3 * diameter * s / (eta * length), s**2, s**2 / length * float(np.ceil(diameter / (s * eta)))


def convex_cgd_plateau(gradient_sensitivity: float, sigma: float, eta: float, batches_per_epoch: int,
                       diameter: float = 1.0) -> float:
    """mu* = sqrt(3 D s/(eta l) + s^2 + (s^2/l) ceil(D/(s eta))) / sigma for cyclic batches (s per batch)."""
    s, sigma = _positive(gradient_sensitivity, "gradient_sensitivity"), _positive(sigma, "sigma")
    eta, diameter = _positive(eta, "eta"), _positive(diameter, "diameter")
    length = float(_counts(batches_per_epoch, "batches_per_epoch"))
    return float(np.sqrt(sum(_convex_cgd_terms(s, eta, length, diameter))) / sigma)


def convex_cgd_threshold(gradient_sensitivity: float, eta: float, batches_per_epoch: int, diameter: float = 1.0,
                         authors_typo: bool = False) -> int:
    """E* from which `convex_cgd_mu` is flat; `authors_typo` reproduces the published code's s^2 * s^2/l term."""
    s, eta = _positive(gradient_sensitivity, "gradient_sensitivity"), _positive(eta, "eta")
    length = float(_counts(batches_per_epoch, "batches_per_epoch"))
    shift, middle, last = _convex_cgd_terms(s, eta, length, _positive(diameter, "diameter"))
    total = shift + middle * last if authors_typo else shift + middle + last
    return int(np.ceil(round(total / s**2, 9)))


def composition_mu(mu0: float, compositions: ArrayLike) -> ArrayLike:
    """mu0 sqrt(k): the GDP of all iterates when each record enters k steps (T for GD, E for cyclic GD)."""
    return _out(_positive(mu0, "mu0") * np.sqrt(_counts(compositions, "compositions")))
