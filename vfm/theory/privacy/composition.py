"""All-iterates (composition) baselines: what releasing every iterate costs, by GDP, RDP, PLD and PRV accountants.

Deterministic batches (full or cyclic): each record enters `compositions` Gaussian steps of GDP mu0 each, i.e.
a Gaussian mechanism of sensitivity 1 and std 1/mu0 composed that many times (add-or-remove accounting of that
mechanism is exact here because mu0 already carries the replace-one sensitivity). Poisson subsampling: the
subsampled Gaussian under replace-one neighbours, by dp-accounting's PLD (certified).
"""

from __future__ import annotations

import logging
import math
import warnings

from vfm.errors import ConfigError
from vfm.theory.privacy.gdp import gdp_epsilon

METHODS = ("gdp", "rdp", "pld", "prv")


def _check(mu0: float, compositions: int, delta: float) -> None:
    if not math.isfinite(mu0) or mu0 <= 0:
        raise ConfigError(f"mu0: got {mu0!r}, expected a finite value > 0")
    if int(compositions) != compositions or compositions < 1:
        raise ConfigError(f"compositions: got {compositions!r}, expected a whole number >= 1")
    if not 0 < delta < 1:
        raise ConfigError(f"delta: got {delta!r}, expected a value in (0, 1)")


def gaussian_composition_epsilon(mu0: float, compositions: int, delta: float, method: str = "gdp") -> float:
    """Epsilon at `delta` of `compositions` Gaussian steps of GDP mu0 each, by one accountant."""
    _check(mu0, compositions, delta)
    if method == "gdp":
        return float(gdp_epsilon(mu0 * math.sqrt(compositions), delta))
    if method in ("rdp", "pld"):
        import dp_accounting
        from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
        from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

        accountant = RdpAccountant() if method == "rdp" else PLDAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(1.0 / mu0), int(compositions))
        return float(accountant.get_epsilon(delta))
    if method == "prv":
        from opacus.accountants import PRVAccountant

        accountant = PRVAccountant()
        accountant.history = [(1.0 / mu0, 1.0, int(compositions))]  # (noise multiplier, sample rate, steps)
        with warnings.catch_warnings():  # opacus warns about its own internal RDP order grid and log(0) at rate 1
            warnings.simplefilter("ignore")
            return float(accountant.get_epsilon(delta, eps_error=1e-3, delta_error=1e-10))
    raise ConfigError(f"method: got {method!r}, expected one of {', '.join(METHODS)}")


def gaussian_composition_epsilons(mu0: float, compositions: int, delta: float,
                                  methods: tuple[str, ...] = METHODS) -> dict[str, float]:
    """`gaussian_composition_epsilon` for each accountant in `methods`, by name."""
    return {method: gaussian_composition_epsilon(mu0, compositions, delta, method) for method in methods}


def poisson_composition_epsilon(mu0: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of `steps` Poisson-subsampled Gaussian steps (replace-one, PLD: certified); mu0 as if sampled."""
    _check(mu0, steps, delta)
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate: got {sample_rate!r}, expected a probability in (0, 1]")
    import dp_accounting
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    logging.getLogger("absl").setLevel(logging.ERROR)
    # Under REPLACE_ONE dp-accounting reads noise multiplier z as a shift of 2/z between neighbours: z = 2/mu0.
    # A 1e-3 grid of privacy-loss values: 10x faster than the default 1e-4 and still pessimistic (an upper bound).
    accountant = PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
                               value_discretization_interval=1e-3)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(2.0 / mu0)),
                       int(steps))
    return float(accountant.get_epsilon(delta))
