"""GDP conversions: closed forms against each other and against dp-accounting's PLD of a Gaussian mechanism."""

from __future__ import annotations

import numpy as np
import pytest

from vfm.errors import ConfigError
from vfm.theory.privacy.gdp import gdp_delta, gdp_epsilon, gdp_mu, gdp_tradeoff


def test_epsilon_inverts_delta_to_float_precision_on_arrays():
    mu = np.array([0.05, 0.3, 1.0, 3.0, 8.0])
    epsilon = gdp_epsilon(mu, 1e-5)
    assert isinstance(epsilon, np.ndarray) and epsilon.shape == mu.shape
    np.testing.assert_allclose(gdp_delta(mu, epsilon), 1e-5, rtol=1e-9)
    assert np.all(np.diff(epsilon) > 0)  # more distinguishable, more epsilon
    np.testing.assert_allclose(gdp_mu(epsilon, 1e-5), mu, rtol=1e-9)


def test_delta_closed_form_and_tradeoff_at_known_points():
    # mu-GDP at epsilon = 0 is delta = Phi(mu/2) - Phi(-mu/2) (total variation of N(0,1) and N(mu,1)).
    from scipy.stats import norm

    assert gdp_delta(1.0, 0.0) == pytest.approx(norm.cdf(0.5) - norm.cdf(-0.5), rel=1e-12)
    assert gdp_tradeoff(0.0, 0.3) == pytest.approx(0.7)  # mu = 0: a coin flip
    assert gdp_tradeoff(1.0, 0.05) == pytest.approx(norm.cdf(norm.ppf(0.95) - 1.0), rel=1e-12)
    assert gdp_epsilon(0.001, 1e-5) == 0.0 or gdp_delta(0.001, 0.0) > 1e-5  # tiny mu: no epsilon at all if delta covers it


@pytest.mark.parametrize("mu", [0.2, 0.6245, 1.5, 4.0])
def test_epsilon_matches_dp_accounting_pld_of_a_gaussian_with_std_one_over_mu(mu):
    import dp_accounting
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    accountant = PLDAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(1.0 / mu))
    assert gdp_epsilon(mu, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), abs=1e-3)


def test_bad_inputs_name_the_culprit():
    with pytest.raises(ConfigError, match="delta"):
        gdp_epsilon(1.0, 0.0)
    with pytest.raises(ConfigError, match="mu"):
        gdp_epsilon(-1.0, 1e-5)
    with pytest.raises(ConfigError, match="alpha"):
        gdp_tradeoff(1.0, 1.5)
