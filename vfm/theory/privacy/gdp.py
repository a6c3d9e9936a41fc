"""Gaussian differential privacy (Dong, Roth & Su): the tradeoff curve and the exact (epsilon, delta) conversion.

A mechanism is mu-GDP when telling neighbours apart is no easier than telling N(0, 1) from N(mu, 1); it is then
(epsilon, delta(epsilon))-DP for every epsilon >= 0 with delta(epsilon) = Phi(-epsilon/mu + mu/2) - e^epsilon
Phi(-epsilon/mu - mu/2), and no better. Everything here is vectorised: numpy arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr, ndtr, ndtri

from vfm.errors import ConfigError

ArrayLike = float | np.ndarray
_BISECTIONS = 64  # halvings of a bracket [0, high]: 2^-64 high is below float64 resolution of the root


def _check_mu(mu: np.ndarray, name: str = "mu") -> None:
    if not np.all(np.isfinite(mu)) or np.any(mu < 0):
        raise ConfigError(f"{name}: got {mu.min() if mu.size else mu}, expected finite values >= 0")


def _check_probability(value: np.ndarray, name: str) -> None:
    if np.any(~(value > 0)) or np.any(value >= 1):
        raise ConfigError(f"{name}: got {value.min()}..{value.max()}, expected values in (0, 1)")


def _out(value: np.ndarray) -> ArrayLike:
    return float(value) if value.ndim == 0 else value


def _delta(mu: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        log_first = log_ndtr(-epsilon / mu + mu / 2)
        # delta = Phi(a) (1 - e^eps Phi(b) / Phi(a)): the exponent is <= 0, so e^eps never overflows.
        ratio = epsilon + log_ndtr(-epsilon / mu - mu / 2) - log_first
        delta = np.exp(log_first) * -np.expm1(np.minimum(ratio, 0.0))
    return np.where(mu > 0, np.nan_to_num(delta, nan=0.0), 0.0)


def gdp_delta(mu: ArrayLike, epsilon: ArrayLike) -> ArrayLike:
    """The smallest delta for which mu-GDP implies (epsilon, delta)-DP."""
    mu, epsilon = np.broadcast_arrays(np.asarray(mu, dtype=np.float64), np.asarray(epsilon, dtype=np.float64))
    _check_mu(mu)
    if np.any(epsilon < 0):
        raise ConfigError(f"epsilon: got {epsilon.min()}, expected values >= 0")
    return _out(_delta(mu, epsilon))


def gdp_epsilon(mu: ArrayLike, delta: ArrayLike) -> ArrayLike:
    """The smallest epsilon for which mu-GDP implies (epsilon, delta)-DP (inverts `gdp_delta` by bisection)."""
    mu, delta = np.broadcast_arrays(np.asarray(mu, dtype=np.float64), np.asarray(delta, dtype=np.float64))
    _check_mu(mu)
    _check_probability(delta, "delta")
    # Phi(-eps/mu + mu/2) <= delta already at eps = mu^2/2 - mu Phi^-1(delta), and delta(eps) <= that term.
    high = mu**2 / 2 - mu * ndtri(delta) + 1e-12
    low = np.zeros_like(mu)
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        above = _delta(mu, middle) > delta
        low, high = np.where(above, middle, low), np.where(above, high, middle)
    return _out(np.where(_delta(mu, np.zeros_like(mu)) <= delta, 0.0, high))


def gdp_mu(epsilon: ArrayLike, delta: ArrayLike) -> ArrayLike:
    """The largest mu whose mu-GDP implies (epsilon, delta)-DP (the inverse of `gdp_epsilon` in mu)."""
    epsilon, delta = np.broadcast_arrays(np.asarray(epsilon, dtype=np.float64), np.asarray(delta, dtype=np.float64))
    if np.any(~(epsilon >= 0)) or not np.all(np.isfinite(epsilon)):
        raise ConfigError(f"epsilon: got {epsilon.min()}, expected finite values >= 0")
    _check_probability(delta, "delta")
    high = np.ones_like(epsilon)
    while np.any(grow := _delta(high, epsilon) < delta):  # delta(eps) increases with mu without bound to 1
        high = np.where(grow, 2 * high, high)
    low = np.zeros_like(epsilon)
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        within = _delta(middle, epsilon) <= delta
        low, high = np.where(within, middle, low), np.where(within, high, middle)
    return _out(low)


def gdp_tradeoff(mu: ArrayLike, alpha: ArrayLike) -> ArrayLike:
    """G_mu(alpha) = Phi(Phi^-1(1 - alpha) - mu): the smallest type-II error at type-I error alpha."""
    mu, alpha = np.broadcast_arrays(np.asarray(mu, dtype=np.float64), np.asarray(alpha, dtype=np.float64))
    _check_mu(mu)
    if np.any(alpha < 0) or np.any(alpha > 1):
        raise ConfigError(f"alpha: got {alpha.min()}..{alpha.max()}, expected values in [0, 1]")
    return _out(ndtr(ndtri(1 - alpha) - mu))
