"""Last iterate of Poisson-subsampled noisy SGD: an APPROXIMATION (the authors' plots use CLT approximations).

The paper's certified NoisySGD theorem composes symmetrised subsampled-Gaussian tradeoff functions over the last
nu + 1 steps with a Gaussian shift term for the earlier ones; its precise form is not verified here (see
docs/privacy.md). This module evaluates that structure two ways and labels both approximate: the subsampled part
by the central-limit GDP parameter (`method="clt"`, as the authors' figures do) or numerically by dp-accounting's
PLD (`method="pld"`, certified for that part alone), minimised over the split nu.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from scipy.special import ndtr

from vfm.errors import ConfigError
from vfm.theory.privacy.gdp import gdp_epsilon


def clt_mu(sample_rate: float, steps: int | np.ndarray, mu: float) -> float | np.ndarray:
    """CLT GDP of `steps` replace-one Poisson-subsampled Gaussian steps of shift mu (= Opacus compute_mu_uniform)."""
    steps = np.asarray(steps, dtype=np.float64)
    value = np.sqrt(2) * sample_rate * np.sqrt(steps) * np.sqrt(np.exp(mu**2) * ndtr(1.5 * mu) + 3 * ndtr(-0.5 * mu) - 2)
    return float(value) if value.ndim == 0 else value


@dataclasses.dataclass(frozen=True)
class PoissonSgdPrivacy:
    """The approximate last-iterate privacy of Poisson-subsampled noisy SGD at one step count."""

    epsilon: float
    """Epsilon at `delta` of the last iterate (approximate)."""
    delta: float
    """The delta of `epsilon`."""
    mu: float | None
    """The approximate GDP parameter (method "clt"); None for "pld", which is not a GDP curve."""
    split: int
    """The number nu + 1 of final steps whose subsampling the bound keeps (the minimiser)."""
    method: str
    """"clt" or "pld": how the subsampled part was evaluated."""
    approximate: bool = True
    """Always True: no certified closed form is verified for this setting."""
    label: str = "last-iterate (approximation)"
    """How reports name this number."""


def _shift_mu(mu0: float, c: float, kept: np.ndarray, steps: int) -> np.ndarray:
    """sqrt(2) mu0 (c^(nu+1) - c^T)/(1 - c): the shift absorbing the T - nu - 1 earlier steps (kept = nu + 1)."""
    if c == 1.0:
        return np.sqrt(2) * mu0 * (steps - kept)
    return np.sqrt(2) * mu0 * (c**kept - c**steps) / (1 - c)


def _check(mu0: float, sample_rate: float, steps: int, c: float, delta: float) -> None:
    if not math.isfinite(mu0) or mu0 <= 0:
        raise ConfigError(f"mu0: got {mu0!r}, expected a finite value > 0 (2L/(b sigma) with b = sample_rate n)")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate: got {sample_rate!r}, expected a probability in (0, 1]")
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"steps: got {steps!r}, expected a whole number >= 1")
    if not 0 <= c <= 1:
        raise ConfigError(f"c: got {c!r}, expected a contraction factor in [0, 1] (c > 1: non-convex or step above 2/M)")
    if not 0 < delta < 1:
        raise ConfigError(f"delta: got {delta!r}, expected a value in (0, 1)")


def poisson_sgd_last_iterate(mu0: float, sample_rate: float, steps: int, c: float, delta: float,
                             method: str = "clt", splits: int = 12) -> PoissonSgdPrivacy:
    """Approximate last-iterate privacy of T Poisson-sampled noisy SGD steps on a c-contractive loss.

    mu0 = 2L/(b sigma) with b = sample_rate * n (the replace-one shift of one step's sum, over its noise); "pld"
    evaluates `splits` log-spaced splits nu (each an upper bound of the same form), "clt" every split.
    """
    _check(mu0, sample_rate, steps, c, delta)
    if method == "clt":
        kept = np.arange(1, steps + 1, dtype=np.float64)
        mu = np.sqrt(clt_mu(sample_rate, kept, mu0) ** 2 + _shift_mu(mu0, c, kept, steps) ** 2)
        best = int(np.argmin(mu))
        return PoissonSgdPrivacy(float(gdp_epsilon(mu[best], delta)), delta, float(mu[best]), int(kept[best]), "clt")
    if method == "pld":
        import dp_accounting
        from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

        logging.getLogger("absl").setLevel(logging.ERROR)
        relation = dp_accounting.NeighboringRelation.REPLACE_ONE
        best_eps, best_kept = math.inf, steps
        # From the longest kept tail down; composing never lowers epsilon, so a split whose shift term alone is
        # already worse than the best found is skipped (tiny tails have huge shifts and slow, useless PLDs).
        for kept in np.unique(np.geomspace(1, steps, num=min(splits, steps)).round().astype(int))[::-1]:
            shift = float(_shift_mu(mu0, c, np.float64(kept), steps))
            if shift > 0 and gdp_epsilon(shift, delta) >= best_eps:
                continue
            accountant = PLDAccountant(neighboring_relation=relation, value_discretization_interval=1e-3)
            accountant.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(2.0 / mu0)),
                               int(kept))
            if shift > 0:  # under REPLACE_ONE a Gaussian event of multiplier z has GDP 2/z
                accountant.compose(dp_accounting.GaussianDpEvent(2.0 / shift))
            eps = float(accountant.get_epsilon(delta))
            if eps < best_eps:
                best_eps, best_kept = eps, int(kept)
        return PoissonSgdPrivacy(best_eps, delta, None, best_kept, "pld")
    raise ConfigError(f"method: got {method!r}, expected 'clt' or 'pld'")
