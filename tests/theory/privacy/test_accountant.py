"""LastIterateAccountant: schedules, the noise search, checkpointed state; composition and Poisson baselines."""

from __future__ import annotations

import numpy as np
import pytest

from vfm.errors import CheckpointError, ConfigError
from vfm.theory.privacy import bounds
from vfm.theory.privacy.accountant import LastIterateAccountant, noise_for_epsilon
from vfm.theory.privacy.composition import gaussian_composition_epsilons, poisson_composition_epsilon
from vfm.theory.privacy.gdp import gdp_epsilon
from vfm.theory.privacy.poisson import clt_mu, poisson_sgd_last_iterate


def test_full_batch_curve_plateaus_while_composition_grows():
    accountant = LastIterateAccountant("full", c=0.95, gradient_sensitivity=0.2, sigma=2.0)  # mu0 = 0.1
    curve = accountant.curve([10, 20, 40, 80, 160], 1e-5)
    np.testing.assert_allclose(curve.mu_last_iterate, [0.3129, 0.4291, 0.5488, 0.6143, 0.6243], atol=5e-5)
    np.testing.assert_allclose(curve.epsilon_composition, [1.199, 1.760, 2.594, 3.849, 5.759], atol=5e-4)
    assert not curve.last_iterate_approximate
    report = accountant.report(1e-5, 160, composition_methods=("gdp", "pld", "rdp"))
    assert report["last_iterate"]["label"] == "last-iterate" and report["all_iterates"]["label"] == "all-iterates"
    assert report["all_iterates"]["pld"] == pytest.approx(report["all_iterates"]["gdp"], abs=1e-3)
    assert report["all_iterates"]["rdp"] > report["all_iterates"]["gdp"]  # RDP conversion is lossy


def test_cyclic_counts_epochs_and_is_only_composition_mid_epoch():
    accountant = LastIterateAccountant("cyclic", c=0.98, mu0=0.2, batches_per_epoch=10)
    assert accountant.mu(50 * 10) == pytest.approx(bounds.noisy_cgd_mu(0.2, 0.98, 10, 50))
    assert accountant.mu(10) == pytest.approx(0.2)  # E = 1
    assert accountant.mu(55) == pytest.approx(0.2 * np.sqrt(6))  # 5.5 epochs: a record may have been seen 6 times
    assert accountant.compositions(55) == 6


def test_convex_full_batch_uses_the_diameter_bound():
    accountant = LastIterateAccountant("full", c=1.0, gradient_sensitivity=0.25, sigma=8.0, eta=0.2, diameter=1.0)
    assert accountant.mu(1000) == pytest.approx(bounds.convex_gd_plateau(0.25, 8.0, 0.2))
    assert accountant.mu(10) == pytest.approx(0.25 * np.sqrt(10) / 8.0)
    without = LastIterateAccountant("full", c=1.0, gradient_sensitivity=0.25, sigma=8.0)
    assert without.mu(1000) == pytest.approx(without.composition_mu(1000))  # no diameter, no amplification


def test_noise_for_a_target_epsilon_reaches_it():
    def build(sigma: float) -> LastIterateAccountant:
        return LastIterateAccountant("cyclic", c=0.9999, gradient_sensitivity=10 / 1500, sigma=sigma, batches_per_epoch=40)

    sigma = noise_for_epsilon(2.0, 1e-5, 40 * 100, build)
    assert build(sigma).epsilon(1e-5, 4000) == pytest.approx(2.0, abs=1e-4)
    composed = noise_for_epsilon(2.0, 1e-5, 4000, build, accounting="composition")
    assert composed > sigma  # composition needs more noise for the same budget
    assert build(composed).composition_epsilon(1e-5, 4000) == pytest.approx(2.0, abs=1e-4)


def test_state_round_trip_and_mismatched_constants_refused():
    accountant = LastIterateAccountant("full", c=0.9, mu0=0.3)
    accountant.step(7)
    other = LastIterateAccountant("full", c=0.9, mu0=0.3)
    other.load_state_dict(accountant.state_dict())
    assert other.steps == 7 and other.epsilon(1e-5) == accountant.epsilon(1e-5, 7)
    with pytest.raises(CheckpointError, match="mu0"):
        LastIterateAccountant("full", c=0.9, mu0=0.4).load_state_dict(accountant.state_dict())


def test_bad_accountant_inputs():
    with pytest.raises(ConfigError, match="sigma"):
        LastIterateAccountant("full", c=0.9, gradient_sensitivity=0.1, sigma=0.0)
    with pytest.raises(ConfigError, match="schedule"):
        LastIterateAccountant("shuffled", c=0.9, mu0=0.1)
    with pytest.raises(ConfigError, match="sample_rate"):
        LastIterateAccountant("poisson", c=0.9, mu0=0.1)
    with pytest.raises(ConfigError, match="c: got 1.2"):
        LastIterateAccountant("full", c=1.2, mu0=0.1)


def test_gaussian_composition_accountants_agree_with_gdp():
    found = gaussian_composition_epsilons(0.1, 160, 1e-5, methods=("gdp", "pld", "prv"))
    assert found["gdp"] == pytest.approx(gdp_epsilon(0.1 * np.sqrt(160), 1e-5))
    assert found["pld"] == pytest.approx(found["gdp"], abs=1e-3)
    assert found["prv"] == pytest.approx(found["gdp"], abs=5e-3)


def test_poisson_is_labelled_approximate_and_its_parts_check_out():
    from opacus.accountants.analysis.gdp import compute_mu_uniform

    # The CLT helper is Opacus's (add-or-remove, noise multiplier 1/mu) formula.
    assert clt_mu(0.01, 1000, 1.0) == pytest.approx(compute_mu_uniform(steps=1000, noise_multiplier=1.0, sample_rate=0.01))
    # Sampling everything is the Gaussian mechanism: the replace-one PLD must agree with GDP composition.
    assert poisson_composition_epsilon(2 / 3, 1.0, 10, 1e-5) == pytest.approx(gdp_epsilon(2 / 3 * np.sqrt(10), 1e-5), abs=1e-3)
    found = poisson_sgd_last_iterate(0.5, 0.05, 400, 0.9, 1e-5)
    assert found.approximate and "approximation" in found.label and found.method == "clt"
    assert found.epsilon < poisson_sgd_last_iterate(0.5, 0.05, 400, 0.999, 1e-5).epsilon  # contraction helps
    accountant = LastIterateAccountant("poisson", c=0.9, mu0=0.5, sample_rate=0.05)
    assert accountant.approximate and accountant.batches_per_epoch == 20
    assert accountant.report(1e-5, 400)["last_iterate"]["label"] == "last-iterate (approximation)"
    pld = poisson_sgd_last_iterate(0.5, 0.05, 200, 0.9, 1e-5, method="pld", splits=4)
    assert pld.approximate and pld.mu is None
    assert pld.epsilon <= poisson_composition_epsilon(0.5, 0.05, 200, 1e-5) + 2e-3  # the split nu = T is composition
