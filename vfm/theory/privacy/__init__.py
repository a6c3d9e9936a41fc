"""f-DP privacy accounting of the last iterate by shifted interpolation, and DP training of a convex head.

Bok, Su & Altschuler (ICML 2024): releasing only the last iterate of noisy GD on a convex loss costs a privacy
that plateaus with the number of steps, where composition (releasing every iterate) grows like sqrt(T). The
`dp_linear_probe` objective (`.objective`), the `frozen_features` dataset (`.features`) and the `cyclic` sampler
(`.sampler`) register themselves; docs/privacy.md has the conventions and caveats.
"""

from vfm.theory.privacy.accountant import LastIterateAccountant, PrivacyCurve, noise_for_epsilon
from vfm.theory.privacy.bounds import (
    composition_mu,
    convex_cgd_mu,
    convex_cgd_plateau,
    convex_cgd_threshold,
    convex_gd_mu,
    convex_gd_plateau,
    convex_gd_threshold,
    noisy_cgd_instance_mu,
    noisy_cgd_mu,
    noisy_gd_mu,
    noisy_gd_mu_limit,
)
from vfm.theory.privacy.composition import (
    gaussian_composition_epsilon,
    gaussian_composition_epsilons,
    poisson_composition_epsilon,
)
from vfm.theory.privacy.gdp import gdp_delta, gdp_epsilon, gdp_mu, gdp_tradeoff
from vfm.theory.privacy.guards import (
    LogisticConstants,
    NonConvexModelError,
    SamplerMismatchError,
    check_convex_head,
    check_sampler,
    contraction_factor,
    logistic_constants,
)
from vfm.theory.privacy.poisson import PoissonSgdPrivacy, clt_mu, poisson_sgd_last_iterate

__all__ = [
    "LastIterateAccountant", "LogisticConstants", "NonConvexModelError", "PoissonSgdPrivacy", "PrivacyCurve",
    "SamplerMismatchError", "check_convex_head", "check_sampler", "clt_mu", "composition_mu", "contraction_factor",
    "convex_cgd_mu", "convex_cgd_plateau", "convex_cgd_threshold", "convex_gd_mu", "convex_gd_plateau",
    "convex_gd_threshold", "gaussian_composition_epsilon", "gaussian_composition_epsilons", "gdp_delta",
    "gdp_epsilon", "gdp_mu", "gdp_tradeoff", "logistic_constants", "noise_for_epsilon", "noisy_cgd_instance_mu",
    "noisy_cgd_mu", "noisy_gd_mu", "noisy_gd_mu_limit", "poisson_composition_epsilon", "poisson_sgd_last_iterate",
]
