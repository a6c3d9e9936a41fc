"""The closed-form last-iterate bounds: identities, exactness on a 1-D quadratic, and the note's regression tables."""

from __future__ import annotations

import numpy as np
import pytest

from vfm.errors import ConfigError
from vfm.theory.privacy import bounds
from vfm.theory.privacy.gdp import gdp_epsilon


def test_noisy_gd_identities():
    assert bounds.noisy_gd_mu(0.3, 0.9, 1) == pytest.approx(0.3)
    assert bounds.noisy_gd_mu(0.3, 1 - 1e-9, 50) == pytest.approx(0.3 * np.sqrt(50), rel=1e-6)
    assert bounds.noisy_gd_mu(0.3, 1.0, 50) == pytest.approx(0.3 * np.sqrt(50))
    curve = bounds.noisy_gd_mu(0.3, 0.9, np.arange(1, 400))
    assert np.all(np.diff(curve) >= 0) and np.all(np.diff(curve[:40]) > 0) and np.all(curve <= 0.3 * np.sqrt(np.arange(1, 400)) + 1e-12)
    assert curve[-1] == pytest.approx(bounds.noisy_gd_mu_limit(0.3, 0.9), rel=1e-12)
    assert bounds.noisy_gd_mu_limit(0.3, 0.9) == pytest.approx(0.3 * np.sqrt(1.9 / 0.1))


def test_noisy_gd_is_attained_by_a_one_dimensional_quadratic():
    """f(x; z) = (a/2)(x - z)^2 on n records, one replaced: the two last iterates are Gaussians whose
    mean gap / std must equal the bound (analytic recursion and a Monte Carlo run of noisy GD itself)."""
    n, a, eta, sigma, steps = 10, 2.0, 0.1, 0.5, 30
    data, neighbour = np.linspace(-1, 1, n), np.linspace(-1, 1, n)
    neighbour[0] = 3.0
    c = 1 - eta * a
    mu0 = a * abs(data[0] - neighbour[0]) / n / sigma  # sensitivity of the mean gradient over sigma
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((steps, 100_000))
    finals = []
    for records in (data, neighbour):
        x = np.zeros(noise.shape[1])
        for k in range(steps):  # the same noise for both: only the means differ, the variances are equal
            x = x - eta * (a * (x - records.mean()) + sigma * noise[k])
        finals.append(x)
    gap = abs(finals[0].mean() - finals[1].mean())
    analytic_std = eta * sigma * np.sqrt(np.sum(c ** (2 * np.arange(steps))))
    analytic_gap = eta * mu0 * sigma * np.sum(c ** np.arange(steps))
    expected = bounds.noisy_gd_mu(mu0, c, steps)
    assert analytic_gap / analytic_std == pytest.approx(expected, rel=1e-12)
    assert gap / finals[0].std() == pytest.approx(expected, rel=1e-2)


def test_figure_1_toy_values():
    mu = bounds.noisy_gd_mu(0.1, 0.95, [10, 20, 40, 80, 160])
    np.testing.assert_allclose(mu, [0.3129, 0.4291, 0.5488, 0.6143, 0.6243], atol=5e-5)
    assert bounds.noisy_gd_mu_limit(0.1, 0.95) == pytest.approx(0.6245, abs=5e-5)
    np.testing.assert_allclose(gdp_epsilon(mu, 1e-5), [1.185, 1.681, 2.212, 2.510, 2.557], atol=5e-4)
    composition = gdp_epsilon(bounds.composition_mu(0.1, [10, 20, 40, 80, 160]), 1e-5)
    np.testing.assert_allclose(composition, [1.199, 1.760, 2.594, 3.849, 5.759], atol=5e-4)


def test_noisy_gd_table():
    expected = {10: [0.308, 0.314, 0.316, 0.316, 0.316, 0.316], 100: [0.490, 0.688, 0.871, 0.961, 0.990, 1.000],
                1000: [0.490, 0.700, 0.995, 1.411, 1.984, 3.162]}
    for steps, row in expected.items():
        found = [bounds.noisy_gd_mu(0.1, c, steps) for c in (0.92, 0.96, 0.98, 0.99, 0.995)]
        np.testing.assert_allclose([*found, bounds.composition_mu(0.1, steps)], row, atol=5e-4)


def test_constrained_gd_table_and_plateau():
    expected = {0.25: [(80, 0.280), (160, 0.395), (320, 0.559)], 0.5: [(40, 0.395), (80, 0.559), (160, 0.791)],
                1.0: [(20, 0.559), (40, 0.791), (80, 1.118)]}
    for s, row in expected.items():
        for eta, (threshold, plateau) in zip((0.2, 0.1, 0.05), row, strict=True):
            assert bounds.convex_gd_threshold(s, 8.0, eta) == threshold
            assert bounds.convex_gd_plateau(s, 8.0, eta) == pytest.approx(plateau, abs=5e-4)
            curve = bounds.convex_gd_mu(s, 8.0, eta, [threshold - 1, threshold, 10 * threshold])
            assert curve[0] < plateau - 1e-4 and curve[2] == pytest.approx(curve[1])


def test_constrained_bounds_scale_with_the_diameter():
    """Rescaling the iterates by 1/D maps (s, sigma, D) to (s/D, sigma/D, 1): the same GDP."""
    assert bounds.convex_gd_plateau(0.5, 8.0, 0.1, diameter=3.0) == pytest.approx(bounds.convex_gd_plateau(0.5 / 3, 8.0 / 3, 0.1))
    assert bounds.convex_cgd_plateau(0.5, 3.0, 0.02, 20, diameter=2.0) == pytest.approx(
        bounds.convex_cgd_plateau(0.25, 1.5, 0.02, 20))


def test_noisy_cgd_table_and_identities():
    rows = {5: [0.229, 0.233, 0.235, 0.211, 0.215, 0.217, 0.202, 0.205, 0.208, 0.447],
            50: [0.270, 0.334, 0.410, 0.216, 0.237, 0.275, 0.203, 0.208, 0.219, 1.414],
            500: [0.270, 0.336, 0.439, 0.216, 0.237, 0.276, 0.203, 0.208, 0.219, 4.472]}
    for epochs, row in rows.items():
        found = [bounds.noisy_cgd_mu(0.2, c, length, epochs) for length in (10, 20, 40) for c in (0.98, 0.99, 0.995)]
        np.testing.assert_allclose([*found, bounds.composition_mu(0.2, epochs)], row, atol=5e-4)
    assert bounds.noisy_cgd_mu(0.2, 0.9, 10, 1) == pytest.approx(0.2)
    assert bounds.noisy_cgd_mu(0.2, 1 - 1e-9, 10, 31) == pytest.approx(0.2 * np.sqrt(1 + 30 / 10), rel=1e-5)
    grid = [(c, length, e) for c in (0.5, 0.9, 0.99, 0.9999) for length in (1, 4, 40) for e in (1, 2, 7, 300)]
    for c, length, epochs in grid:  # the bound is never below the Gaussian instance it must cover
        assert bounds.noisy_cgd_mu(0.3, c, length, epochs) >= bounds.noisy_cgd_instance_mu(0.3, c, length, epochs) - 1e-12


def test_constrained_cgd_threshold_typo_of_the_published_code():
    assert bounds.convex_cgd_threshold(0.5, 0.02, 20) == 21
    assert bounds.convex_cgd_threshold(0.5, 0.02, 20, authors_typo=True) == 17
    plateau = bounds.convex_cgd_plateau(0.5, 3.0, 0.02, 20)
    assert 0.5 * np.sqrt(20) / 3.0 < plateau <= 0.5 * np.sqrt(21) / 3.0  # flat from E* = 21, not 17
    assert bounds.convex_cgd_mu(0.5, 3.0, 0.02, 20, 17) < plateau


def test_guards_refuse_unsound_inputs():
    with pytest.raises(ConfigError, match="c: got 1.01 > 1"):
        bounds.noisy_gd_mu(0.1, 1.01, 10)
    with pytest.raises(ConfigError, match="mu0"):
        bounds.noisy_gd_mu(0.0, 0.9, 10)
    with pytest.raises(ConfigError, match="sigma"):
        bounds.convex_gd_mu(0.1, -1.0, 0.1, 10)
    with pytest.raises(ConfigError, match="steps"):
        bounds.noisy_gd_mu(0.1, 0.9, 2.5)
