"""The paper's numbers recomputed by this package: the Figure-1 toy curve and the MNIST-setting table (Table 1).

MNIST setting (Bok, Su & Altschuler, Section 4 / Appendix D): n = 60,000, b = 1,500 (l = 40 batches per
epoch), eta = 0.05, sigma = 0.01, per-example clip 5, so mu0 = 2 * 5 / (1500 * 0.01) = 2/3 (replace-one), and
c = 1 - eta lambda (0.9999, 0.9998 for lambda = 0.002, 0.004). These rows need no data: MNIST enters only
through its size. The paper converts GDP to (epsilon, delta) with the PRV accountant; here the conversion is
the exact GDP formula, so the last digit may differ (PRV's eps_error is 1e-3).
"""

from __future__ import annotations

from typing import Any

from vfm.theory.privacy import bounds
from vfm.theory.privacy.composition import poisson_composition_epsilon
from vfm.theory.privacy.gdp import gdp_epsilon
from vfm.theory.privacy.guards import contraction_factor
from vfm.theory.privacy.poisson import clt_mu

FIGURE_1 = {"mu0": 0.1, "c": 0.95, "steps": (10, 20, 40, 80, 160), "delta": 1e-5}
MNIST = {"n": 60_000, "batch_size": 1_500, "eta": 0.05, "sigma": 0.01, "clip": 5.0, "feature_norm": 8.0,
         "l2": (0.002, 0.004), "epochs": (50, 100, 200), "delta": 1e-5}


def figure_1_rows() -> list[dict[str, float]]:
    """Noisy GD, c = 0.95, mu0 = 0.1 (the figure plugs 0.1 in as mu0 although it captions it L/(n sigma))."""
    spec = FIGURE_1
    rows = []
    for steps in spec["steps"]:
        mu = bounds.noisy_gd_mu(spec["mu0"], spec["c"], steps)
        composed = bounds.composition_mu(spec["mu0"], steps)
        rows.append({"T": steps, "mu_last_iterate": mu, "epsilon_last_iterate": gdp_epsilon(mu, spec["delta"]),
                     "mu_composition": composed, "epsilon_composition": gdp_epsilon(composed, spec["delta"])})
    return rows


def mnist_rows(with_sgd: bool = True) -> list[dict[str, Any]]:
    """For each E: last-iterate NoisyCGD (both lambdas) vs GDP composition of NoisyCGD and of Poisson NoisySGD."""
    spec = MNIST
    length = spec["n"] // spec["batch_size"]
    mu0 = 2 * spec["clip"] / (spec["batch_size"] * spec["sigma"])
    sample_rate = spec["batch_size"] / spec["n"]
    rows = []
    for epochs in spec["epochs"]:
        row: dict[str, Any] = {"E": epochs, "mu0": mu0}
        composed = bounds.composition_mu(mu0, epochs)
        row["cgd_composition_mu"], row["cgd_composition_epsilon"] = composed, gdp_epsilon(composed, spec["delta"])
        if with_sgd:
            row["sgd_composition_clt_mu"] = clt_mu(sample_rate, epochs * length, mu0)
            row["sgd_composition_pld_epsilon"] = poisson_composition_epsilon(mu0, sample_rate, epochs * length,
                                                                             spec["delta"])
        for l2 in spec["l2"]:
            # Softmax smoothness R^2/2 on features clipped to norm 8: eta M = 1.6 < 2, so c = 1 - eta lambda.
            c = contraction_factor(l2, spec["feature_norm"] ** 2 / 2 + l2, spec["eta"])
            mu = bounds.noisy_cgd_mu(mu0, c, length, epochs)
            row[f"c_{l2}"] = c
            row[f"cgd_last_iterate_mu_{l2}"], row[f"cgd_last_iterate_epsilon_{l2}"] = mu, gdp_epsilon(mu, spec["delta"])
        rows.append(row)
    return rows
